//! `auto_balance` (issue 26): the cluster spreads its ranges over the live members by itself,
//! as `kvnode route --balance` would, once a member has joined or a member the table names has
//! been dead for `balance_after`, at most `max_moves` ranges at a time.
//!
//! One coordinator at a time: only the node that decides every table change (the live member
//! with the lowest name, `Node::table_coordinator`) plans, and it sets the table as any
//! `route --set` is set, compare-and-set on the version it planned from. Two nodes that both
//! believe they coordinate (membership still settling, a partition) cannot lose data this
//! way: each plan is a table change like any other, a range moves only through a majority of
//! its group, and a range already moving is left alone.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Node;
use crate::names::NodeName;
use crate::routing::Entry;

/// How often the coordinator looks.
const EVERY: Duration = Duration::from_secs(1);

impl Node {
    /// Runs for the node's life beside the replica driver; with `auto_balance` off, waits
    /// forever.
    pub(super) async fn auto_balance(self: Arc<Self>) -> Infallible {
        let config = self.config.balance;
        if !config.auto {
            return std::future::pending().await;
        }
        let mut down_since: BTreeMap<NodeName, Instant> = BTreeMap::new();
        // Set by a join or a long death, cleared once the table is balanced: balancing goes
        // on, `max_moves` ranges at a time, until then.
        let mut balancing = false;
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let table = self.table();
            let mut live: Vec<NodeName> = self
                .gossip
                .members()
                .iter()
                .filter(|m| m.state.is_live())
                .map(|m| m.name.clone())
                .collect();
            live.push(self.name.clone());
            live.sort();
            live.dedup();
            let now = Instant::now();
            let named = table.nodes();
            down_since.retain(|n, _| !live.contains(n) && named.contains(&n));
            for &n in &named {
                if !live.contains(n) {
                    down_since.entry(n.clone()).or_insert(now);
                }
            }
            if self.table_coordinator() != self.name
                || !table.moves().is_empty()
                || !table.then().is_empty()
                || table.setter().is_empty()
            {
                continue;
            }
            let joined = live.iter().any(|n| !named.contains(&n));
            let long_dead = down_since
                .values()
                .any(|since| now.duration_since(*since) >= config.after);
            balancing |= joined || long_dead;
            if !balancing {
                continue;
            }
            // Dead members are planned out only once dead for `balance_after`.
            let planned_over: Vec<NodeName> = live
                .iter()
                .cloned()
                .chain(
                    down_since
                        .iter()
                        .filter(|(_, since)| now.duration_since(**since) < config.after)
                        .map(|(n, _)| n.clone()),
                )
                .collect();
            let Ok(wanted) = table.balanced(&planned_over, None) else {
                continue;
            };
            let (entries, moving) = limit(table.entries(), wanted, &live, config.max_moves);
            if moving == 0 {
                balancing = false;
                continue;
            }
            tracing::info!(moving, table = %table, "auto_balance: moving {moving} range(s) to spread them over the live members");
            let deadline = Instant::now() + Duration::from_secs(5);
            if let Err(e) = self
                .set_table(entries, Some(table.version()), true, false, false, deadline)
                .await
            {
                tracing::info!(error = %e, "auto_balance: the table could not be set; planning again");
            }
        }
    }
}

/// `wanted` with at most `max_moves` ranges changing nodes (the first ones), and none whose
/// live nodes are not a majority of it (its group could not carry the move out); changes of
/// order only (the preferred leader) are kept. The entries, and how many ranges move.
fn limit(held: &[Entry], wanted: Vec<Entry>, live: &[NodeName], max_moves: usize) -> (Vec<Entry>, usize) {
    let mut moving = 0;
    let entries = held
        .iter()
        .zip(wanted)
        .map(|(old, new)| {
            if old.same_nodes(&new) {
                return new;
            }
            let up = old.replicas().iter().filter(|n| live.contains(n)).count();
            if moving >= max_moves || up * 2 <= old.replicas().len() {
                return old.clone();
            }
            moving += 1;
            new
        })
        .collect();
    (entries, moving)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(spec: &str) -> Vec<Entry> {
        crate::routing::RoutingTable::parse([spec], 1, "t")
            .unwrap()
            .entries()
            .to_vec()
    }

    fn names(n: &[&str]) -> Vec<NodeName> {
        n.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn at_most_max_moves_ranges_move_and_none_whose_majority_is_down() {
        let held = entries("a-f=n1,g-m=n1,n-s=n1,t-z=n1");
        let wanted = entries("a-f=n1,g-m=n2,n-s=n3,t-z=n4");
        let live = names(&["n1", "n2", "n3", "n4"]);
        let (out, moving) = limit(&held, wanted.clone(), &live, 2);
        assert_eq!((out, moving), (entries("a-f=n1,g-m=n2,n-s=n3,t-z=n1"), 2));
        // n1 down: its ranges cannot move (a group of one whose one node is down).
        let (out, moving) = limit(&held, wanted, &names(&["n2", "n3", "n4"]), 2);
        assert_eq!((out, moving), (held, 0));
        // A replicated range with one of three down still moves; a reorder is free.
        let held = entries("a-m=n1+n2+n3,n-z=n1+n2+n3");
        let wanted = entries("a-m=n1+n2+n4,n-z=n2+n1+n3");
        let (out, moving) = limit(&held, wanted.clone(), &names(&["n1", "n2", "n4"]), 1);
        assert_eq!((out, moving), (wanted, 1));
    }
}
