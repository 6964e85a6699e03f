//! How a new table becomes moves (issue 26, `docs/design/moves.md`): what `route --set` asks
//! is compared with the table held, range by range; a range whose nodes change keeps its
//! entry (where the data is) and gains a move, and the move's nodes become the entry's only
//! when the range's group has moved ([`RoutingTable::finish_move`]).
//!
//! Pure table logic: the coordinator (`Node::set_table`) calls it under the table's lock.

use super::{Entry, RoutingTable};
use crate::names::NodeName;

/// A table change's entries and moves, as the coordinator publishes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub entries: Vec<Entry>,
    pub moves: Vec<Entry>,
}

impl RoutingTable {
    /// The entries and moves that take this table to `wanted`.
    ///
    /// - A range whose nodes stay (perhaps reordered) takes `wanted`'s entry.
    /// - A range whose nodes change keeps the held nodes and gains a move to `wanted`'s;
    ///   a range whose bounds change too is first re-cut under the nodes that hold its bytes
    ///   now (`a-z=foo` to `a-m=foo,n-z=bar`: `n-z=foo`, moving to `bar`), which copies
    ///   nothing, when one set of nodes holds them all.
    /// - A range that is moving keeps its entry, and its move is aimed at `wanted`'s nodes:
    ///   other nodes re-aim it; the held ones leave it going, or with `call_off` call it off
    ///   (the range goes back to them).
    /// - Refused, saying why and what to do: a change of a moving range's bounds; a change
    ///   of a replicated range's bounds, or dropping one (a group is its range); merging
    ///   bytes held by different nodes into one range while moving it; moving a range onto a
    ///   node `live` says is down.
    ///
    /// `force`: the table as given, moving nothing (the data of a range that changes nodes
    /// stays where it was, unreachable): only for single-owner ranges, as before issue 26.
    pub fn plan_change(
        &self,
        wanted: &[Entry],
        force: bool,
        call_off: bool,
        live: impl Fn(&NodeName) -> bool,
    ) -> Result<Planned, String> {
        let mut entries = Vec::with_capacity(wanted.len());
        let mut moves = Vec::new();
        let held_exact = |e: &Entry| self.entries.iter().find(|h| (h.first, h.last) == (e.first, e.last));
        for e in wanted {
            let holders: Vec<&Entry> = self
                .entries
                .iter()
                .filter(|h| h.first <= e.last && e.first <= h.last)
                .collect();
            if let Some(h) = held_exact(e) {
                if let Some(m) = self.move_of(h.first, h.last) {
                    // Asked again while under way, or the held nodes (as `route --table`
                    // shows a moving range) without `call_off`: no change. Other nodes: the
                    // move is re-aimed at them; the held nodes with `call_off`: it is called
                    // off (its group goes back to them). Either way the range's group goes
                    // where the move points, one configuration change at a time, and the data
                    // never leaves the group (never forced: the group holds the range).
                    entries.push(h.clone());
                    let unchanged = e.same_nodes(m) || (e.same_nodes(h) && !call_off);
                    moves.push(if unchanged { m.clone() } else { e.clone() });
                    continue;
                }
                if e.same_nodes(h) || (force && !h.is_replicated() && !e.is_replicated()) {
                    entries.push(e.clone());
                } else {
                    entries.push(h.clone());
                    moves.push(e.clone());
                }
                continue;
            }
            // New bounds: the bytes' present holders decide.
            for h in &holders {
                if self.move_of(h.first, h.last).is_some() {
                    return Err(format!(
                        "entry {e} would change the bounds of range {}, which is moving (see `kvnode route --status`); wait until it has moved",
                        h.range()
                    ));
                }
                if h.is_replicated() {
                    return Err(format!(
                        "entry {e} would change the bounds of the replicated range {h}; a replicated range's bounds cannot change yet (its group is the range): keep {} as a range of its own, or move it onto one node first (the table with {}={} in its place), re-cut it there, then give the pieces their replicas",
                        h.range(),
                        h.range(),
                        h.preferred_leader()
                    ));
                }
            }
            let mut owners: Vec<&NodeName> = holders.iter().map(|h| h.preferred_leader()).collect();
            owners.sort();
            owners.dedup();
            match owners.as_slice() {
                // Bytes no entry covered: nothing is there to move.
                [] => entries.push(e.clone()),
                [one] if e.same_nodes(&Entry::single(e.first, e.last, (*one).clone())) => entries.push(e.clone()),
                _ if force && !e.is_replicated() => entries.push(e.clone()),
                [one] => {
                    entries.push(Entry::single(e.first, e.last, (*one).clone()));
                    moves.push(e.clone());
                }
                _ => {
                    return Err(format!(
                        "entry {e} would merge bytes held by {} into one range while moving them; move them onto the same node first, then merge (or re-cut) the ranges",
                        owners.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(" and ")
                    ));
                }
            }
        }
        for h in self.entries.iter().filter(|h| h.is_replicated()) {
            if !wanted.iter().any(|e| (e.first, e.last) == (h.first, h.last)) {
                return Err(format!(
                    "the table would drop or re-cut the replicated range {h}; its group is the range: keep an entry for {} (its nodes may change: that moves it)",
                    h.range()
                ));
            }
        }
        for m in &self.moves {
            if !wanted.iter().any(|e| (e.first, e.last) == (m.first, m.last)) {
                return Err(format!(
                    "range {} is moving to {} (see `kvnode route --status`); the table must keep an entry for it until it has moved",
                    m.range(),
                    nodes_of(m)
                ));
            }
        }
        // A move already under way is not asked again (its node may have died since: a
        // table re-set unchanged, or one that calls the move off, must still be taken).
        for m in moves.iter().filter(|m| !self.moves.contains(m)) {
            if let Some(down) = m.replicas().iter().find(|n| !live(n)) {
                return Err(format!(
                    "range {} cannot move to {down}: it is not a live member of the cluster; start it and let it join, then set the table again",
                    m.range()
                ));
            }
        }
        Ok(Planned { entries, moves })
    }

    /// The entries and moves once the move of `done`'s range to `done`'s nodes has taken
    /// effect in its group: the move's nodes become the entry's. `Ok(None)`: nothing to do
    /// (finished already); `Err` when the table holds no such move (another table replaced it).
    pub fn finish_move(&self, done: &Entry) -> Result<Option<Planned>, String> {
        let entry = self
            .entries
            .iter()
            .find(|e| (e.first, e.last) == (done.first, done.last));
        match (entry, self.move_of(done.first, done.last)) {
            (Some(_), Some(m)) if m.same_nodes(done) => Ok(Some(Planned {
                entries: self
                    .entries
                    .iter()
                    .map(|e| {
                        if (e.first, e.last) == (m.first, m.last) {
                            m.clone()
                        } else {
                            e.clone()
                        }
                    })
                    .collect(),
                moves: self.moves.iter().filter(|o| *o != m).cloned().collect(),
            })),
            (Some(e), None) if e.same_nodes(done) => Ok(None),
            _ => Err(format!(
                "the table (version {}) holds no move of {} to {}",
                self.version,
                done.range(),
                nodes_of(done)
            )),
        }
    }
}

/// `foo+bar`
fn nodes_of(e: &Entry) -> String {
    e.replicas().iter().map(NodeName::as_str).collect::<Vec<_>>().join("+")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(spec: &str, moves: &[&str]) -> RoutingTable {
        RoutingTable::parse([spec], 3, "foo")
            .unwrap()
            .with_moves(moves.iter().map(|m| m.parse().unwrap()).collect())
            .unwrap()
    }

    fn wanted(spec: &str) -> Vec<Entry> {
        RoutingTable::parse([spec], 0, "").unwrap().entries().to_vec()
    }

    fn plan(held: &RoutingTable, spec: &str) -> Result<(String, Vec<String>), String> {
        let p = held.plan_change(&wanted(spec), false, false, |_| true)?;
        let t = RoutingTable::new(p.entries, 1, "x").unwrap();
        Ok((
            t.entries().iter().map(|e| e.to_string()).collect::<Vec<_>>().join(","),
            p.moves.iter().map(|e| e.to_string()).collect(),
        ))
    }

    #[test]
    fn a_range_whose_nodes_change_keeps_them_and_gains_a_move() {
        let held = table("a-m=foo,n-z=bar", &[]);
        assert_eq!(
            plan(&held, "a-m=bar,n-z=bar"),
            Ok(("a-m=foo,n-z=bar".into(), vec!["a-m=bar".into()]))
        );
        // Reordering a replicated range's nodes moves nothing.
        let held = table("a-m=foo+bar+baz", &[]);
        assert_eq!(plan(&held, "a-m=baz+foo+bar"), Ok(("a-m=baz+foo+bar".into(), vec![])));
        assert_eq!(
            plan(&held, "a-m=bar+baz+qux"),
            Ok(("a-m=foo+bar+baz".into(), vec!["a-m=bar+baz+qux".into()]))
        );
    }

    #[test]
    fn new_bounds_are_cut_under_the_present_holder_first() {
        let held = table("a-z=foo", &[]);
        assert_eq!(
            plan(&held, "a-m=foo,n-z=bar"),
            Ok(("a-m=foo,n-z=foo".into(), vec!["n-z=bar".into()]))
        );
        // Bytes nobody held: nothing to move.
        assert_eq!(plan(&held, "0-9=bar,a-z=foo"), Ok(("0-9=bar,a-z=foo".into(), vec![])));
        // A merge of two owners' bytes while moving them: refused, saying what to do.
        let held = table("a-m=foo,n-z=bar", &[]);
        let why = plan(&held, "a-z=baz").unwrap_err();
        assert!(why.contains("merge bytes held by bar and foo"), "{why}");
        assert_eq!(
            plan(&held, "a-f=foo,g-m=foo,n-z=bar"),
            Ok(("a-f=foo,g-m=foo,n-z=bar".into(), vec![]))
        );
    }

    #[test]
    fn moving_and_replicated_ranges_refuse_what_would_strand_data() {
        let held = table("a-m=foo,n-z=bar", &["a-m=baz"]);
        // Setting the held nodes (as `route --table` shows them) leaves the move going...
        assert_eq!(
            plan(&held, "a-m=foo,n-z=bar"),
            Ok(("a-m=foo,n-z=bar".into(), vec!["a-m=baz".into()]))
        );
        // ... and with `call_off` calls it off: the move points back at them.
        let off = held
            .plan_change(&wanted("a-m=foo,n-z=bar"), false, true, |_| true)
            .unwrap();
        assert_eq!(off.moves, wanted("a-m=foo"));
        // Both are taken when the move's node has died since (only new moves are checked).
        let baz_down = |n: &NodeName| n.as_str() != "baz";
        assert!(
            held.plan_change(&wanted("a-m=foo,n-z=bar"), false, false, baz_down)
                .is_ok()
        );
        assert!(
            held.plan_change(&wanted("a-m=foo,n-z=bar"), false, true, baz_down)
                .is_ok()
        );
        assert!(
            held.plan_change(&wanted("a-m=baz,n-z=bar"), false, false, baz_down)
                .is_ok()
        );
        // Other nodes re-aim it.
        assert_eq!(
            plan(&held, "a-m=qux+baz,n-z=bar"),
            Ok(("a-m=foo,n-z=bar".into(), vec!["a-m=qux+baz".into()]))
        );
        assert!(
            plan(&held, "a-f=foo,g-m=foo,n-z=bar")
                .unwrap_err()
                .contains("which is moving")
        );
        // Asking the move again changes nothing; another range may change meanwhile.
        assert_eq!(
            plan(&held, "a-m=baz,n-z=foo"),
            Ok(("a-m=foo,n-z=bar".into(), vec!["a-m=baz".into(), "n-z=foo".into()]))
        );
        assert!(plan(&held, "n-z=bar").unwrap_err().contains("must keep an entry"));
        let held = table("a-m=foo+bar+baz,n-z=foo", &[]);
        assert!(
            plan(&held, "a-f=foo+bar+baz,g-z=foo")
                .unwrap_err()
                .contains("bounds cannot change")
        );
        assert!(plan(&held, "n-z=foo").unwrap_err().contains("drop or re-cut"));
    }

    #[test]
    fn a_move_onto_a_node_that_is_down_is_refused_and_force_moves_nothing() {
        let held = table("a-m=foo,n-z=bar", &[]);
        let down = held.plan_change(&wanted("a-m=qux,n-z=bar"), false, false, |n| n.as_str() != "qux");
        assert!(
            down.unwrap_err()
                .contains("cannot move to qux: it is not a live member")
        );
        let forced = held
            .plan_change(&wanted("a-m=qux,n-z=bar"), true, false, |_| false)
            .unwrap();
        assert_eq!(forced.moves, vec![]);
        assert_eq!(forced.entries, wanted("a-m=qux,n-z=bar"));
        // Force never applies to a replicated range.
        let forced = held
            .plan_change(&wanted("a-m=qux+foo,n-z=bar"), true, false, |_| true)
            .unwrap();
        assert_eq!(forced.moves.len(), 1);
    }

    #[test]
    fn a_finished_move_makes_its_nodes_the_entry() {
        let held = table("a-m=foo,n-z=bar", &["a-m=baz+qux", "n-z=foo"]);
        let done = held.finish_move(&"a-m=qux+baz".parse().unwrap()).unwrap().unwrap();
        assert_eq!(done.entries, wanted("a-m=baz+qux,n-z=bar"));
        assert_eq!(done.moves, vec!["n-z=foo".parse().unwrap()]);
        let after = RoutingTable::new(done.entries, 4, "foo")
            .unwrap()
            .with_moves(done.moves)
            .unwrap();
        assert_eq!(after.finish_move(&"a-m=baz+qux".parse().unwrap()), Ok(None));
        assert!(after.finish_move(&"a-m=foo".parse().unwrap()).is_err());
    }
}
