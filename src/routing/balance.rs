//! `route --balance` (issue 26): a table that spreads ranges, and their first-named nodes
//! (the preferred leaders), evenly over the live members, moving as few replicas as it can.
//! Carried out like any `route --set` (the ranges whose nodes change move).

use std::collections::BTreeMap;

use super::{Entry, RoutingTable};
use crate::names::NodeName;

impl RoutingTable {
    /// The entries of a balanced table over `live` (the live members), each range held by
    /// `replicas` nodes (`None`: as many as it has now), at most as many as there are live
    /// members. The bounds stay; each range keeps the live nodes it has where it can, so
    /// only the replicas needed to even out the load move: every live member then holds
    /// the same number of ranges, give or take one, and is the first named of as many,
    /// give or take one.
    pub fn balanced(&self, live: &[NodeName], replicas: Option<usize>) -> Result<Vec<Entry>, String> {
        let mut live: Vec<NodeName> = live.to_vec();
        live.sort();
        live.dedup();
        if live.is_empty() {
            return Err("no live member to balance the table over".into());
        }
        if replicas == Some(0) {
            return Err("--replicas must be at least 1".into());
        }
        let mut load: BTreeMap<NodeName, usize> = live.iter().map(|n| (n.clone(), 0)).collect();
        // Each range keeps its live nodes, in order, up to its count.
        let mut sets: Vec<Vec<NodeName>> = self
            .entries
            .iter()
            .map(|e| {
                let want = replicas.unwrap_or(e.replicas().len()).min(live.len());
                let keep: Vec<NodeName> = e
                    .replicas()
                    .iter()
                    .filter(|n| load.contains_key(*n))
                    .take(want)
                    .cloned()
                    .collect();
                for n in &keep {
                    *load.entry(n.clone()).or_default() += 1;
                }
                keep
            })
            .collect();
        // Filled up to the count with the least loaded members (by name on a tie).
        for (e, set) in self.entries.iter().zip(sets.iter_mut()) {
            let want = replicas.unwrap_or(e.replicas().len()).min(live.len());
            while set.len() < want {
                let pick = least_loaded(&load, set).ok_or("fewer live members than replicas")?;
                *load.entry(pick.clone()).or_default() += 1;
                set.push(pick);
            }
        }
        // Evened out: a replica moves from the most loaded member to the least loaded, in a
        // range that does not hold the latter, until they differ by one at most.
        for _ in 0..self.entries.len() * live.len() {
            let (hi, hi_load) = load
                .iter()
                .max_by_key(|(n, l)| (**l, std::cmp::Reverse(*n)))
                .map(|(n, l)| (n.clone(), *l))
                .unwrap_or_else(|| unreachable!("live is not empty"));
            let (lo, lo_load) = load
                .iter()
                .min_by_key(|(n, l)| (**l, *n))
                .map(|(n, l)| (n.clone(), *l))
                .unwrap_or_else(|| unreachable!("live is not empty"));
            if hi_load <= lo_load + 1 {
                break;
            }
            // Prefer a range where `hi` is not the first named: its leader stays.
            let candidates = sets.iter_mut().filter(|s| s.contains(&hi) && !s.contains(&lo));
            let Some(set) = candidates.min_by_key(|s| s.first() == Some(&hi)) else {
                break;
            };
            let at = set.iter().position(|n| *n == hi).unwrap_or_default();
            set[at] = lo.clone();
            *load.entry(hi).or_default() -= 1;
            *load.entry(lo).or_default() += 1;
        }
        // The first named spread alike: each range's first is its member that is first in
        // the fewest ranges so far, the present first kept on a tie.
        let mut firsts: BTreeMap<NodeName, usize> = live.iter().map(|n| (n.clone(), 0)).collect();
        for set in &mut sets {
            let best = set
                .iter()
                .enumerate()
                .min_by_key(|(i, n)| (firsts.get(*n).copied().unwrap_or(0), *i))
                .map_or(0, |(i, _)| i);
            let first = set.remove(best);
            *firsts.entry(first.clone()).or_default() += 1;
            set.insert(0, first);
        }
        self.entries
            .iter()
            .zip(sets)
            .map(|(e, set)| Entry::new(e.first, e.last, set).map_err(|err| err.to_string()))
            .collect()
    }
}

/// The member of `load` with the fewest ranges that `set` does not hold yet.
fn least_loaded(load: &BTreeMap<NodeName, usize>, set: &[NodeName]) -> Option<NodeName> {
    load.iter()
        .filter(|(n, _)| !set.contains(n))
        .min_by_key(|(n, l)| (**l, *n))
        .map(|(n, _)| n.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<NodeName> {
        n.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn specs(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(Entry::to_string).collect()
    }

    fn loads(entries: &[Entry]) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
        let (mut held, mut first) = (BTreeMap::new(), BTreeMap::new());
        for e in entries {
            for n in e.replicas() {
                *held.entry(n.to_string()).or_default() += 1;
            }
            *first.entry(e.preferred_leader().to_string()).or_default() += 1;
        }
        (held, first)
    }

    #[test]
    fn a_new_member_takes_its_share_and_the_rest_stays() {
        let t = RoutingTable::parse(["a-f=n1,g-m=n1,n-s=n2,t-z=n2"], 1, "n1").unwrap();
        let b = t.balanced(&names(&["n1", "n2", "n3"]), None).unwrap();
        let (held, _) = loads(&b);
        assert!(held.values().all(|&l| (1..=2).contains(&l)), "{held:?}");
        // Two ranges kept where they were on each old node at most one moved.
        let moved = b.iter().zip(t.entries()).filter(|(a, o)| !a.same_nodes(o)).count();
        assert_eq!(moved, 1, "{:?}", specs(&b));
    }

    #[test]
    fn replicas_are_spread_and_so_are_first_names() {
        let t = RoutingTable::parse(["a-f=n1,g-m=n1,n-s=n1,t-z=n1"], 1, "n1").unwrap();
        let live = names(&["n1", "n2", "n3", "n4"]);
        let b = t.balanced(&live, Some(3)).unwrap();
        let (held, first) = loads(&b);
        assert_eq!(
            held.values().copied().collect::<Vec<_>>(),
            [3, 3, 3, 3],
            "{:?}",
            specs(&b)
        );
        assert_eq!(
            first.values().copied().collect::<Vec<_>>(),
            [1, 1, 1, 1],
            "{:?}",
            specs(&b)
        );
        // Balanced already: the same nodes again (no move).
        let again = RoutingTable::new(b.clone(), 2, "n1")
            .unwrap()
            .balanced(&live, Some(3))
            .unwrap();
        assert!(again.iter().zip(&b).all(|(a, o)| a.same_nodes(o)));
    }

    #[test]
    fn a_dead_member_is_replaced_and_too_few_members_cap_the_replicas() {
        let t = RoutingTable::parse(["a-m=n1+n2+n3,n-z=n2+n3+n1"], 1, "n1").unwrap();
        let b = t.balanced(&names(&["n1", "n2", "n4"]), None).unwrap();
        for e in &b {
            assert!(!e.replicas().contains(&"n3".parse().unwrap()), "{:?}", specs(&b));
            assert_eq!(e.replicas().len(), 3);
        }
        let two = t.balanced(&names(&["n1", "n2"]), None).unwrap();
        assert!(two.iter().all(|e| e.replicas().len() == 2), "{:?}", specs(&two));
        assert!(t.balanced(&[], None).is_err());
        assert!(t.balanced(&names(&["n1"]), Some(0)).is_err());
    }
}
