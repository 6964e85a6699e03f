//! How a new table becomes moves (issue 26, `docs/design/moves.md`): what `route --set` asks
//! is compared with the table held, range by range; a range whose nodes change keeps its
//! entry (where the data is) and gains a move, and the move's nodes become the entry's only
//! when the range's group has moved ([`RoutingTable::finish_move`]).
//!
//! Pure table logic: the coordinator (`Node::set_table`) calls it under the table's lock.

use kvnode_replica::Generation;

use super::{Entry, RoutingTable};
use crate::names::NodeName;

/// A table change's entries and moves, as the coordinator publishes them, and the table to
/// plan once those moves are done (empty: none; see [`RoutingTable::then`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub entries: Vec<Entry>,
    pub moves: Vec<Entry>,
    pub then: Vec<Entry>,
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
    /// - A change of a replicated range's bounds (a split, a merge), or a merge of bytes
    ///   different nodes hold, cannot be made in one step (a group is its range): the bytes
    ///   are first moved onto one node that holds them ([`RoutingTable::gathered`]), and
    ///   `wanted` becomes the plan's `then`, planned again by the coordinator once the moves
    ///   are done (re-cut there, the pieces moved to their nodes).
    /// - Refused, saying why and what to do: a change of a moving range's bounds; dropping a
    ///   replicated range's bytes (no entry covers them); moving a range onto a node `live`
    ///   says is down; a split or merge with `force`; another table while a split or merge
    ///   is under way (a `then` not yet taken), unless `call_off` (which replaces it).
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
        if !self.then.is_empty() && !call_off {
            if same_entries(&self.then, wanted) {
                // Asked again before its second step is taken: no change (the coordinator
                // takes it, `Node::follow_then`).
                return Ok(Planned {
                    entries: self.entries.clone(),
                    moves: self.moves.clone(),
                    then: self.then.clone(),
                });
            }
            return Err(format!(
                "a split or merge is under way: its ranges move onto one node, then the table becomes {} (see `kvnode route --status`); wait until it is done, or call it off: set the table `kvnode route --table` shows now, with --call-off",
                self.then.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(",")
            ));
        }
        self.plan_fresh(wanted, force, call_off, &live)
    }

    /// The plan of the table's `then`, once its moves are done (`Node::follow_then`): as
    /// [`RoutingTable::plan_change`] would plan it were no split or merge under way.
    pub fn plan_then(&self, live: impl Fn(&NodeName) -> bool) -> Result<Planned, String> {
        self.plan_fresh(&self.then, false, false, &live)
    }

    /// [`RoutingTable::plan_change`] past the split or merge under way.
    fn plan_fresh(
        &self,
        wanted: &[Entry],
        force: bool,
        call_off: bool,
        live: &impl Fn(&NodeName) -> bool,
    ) -> Result<Planned, String> {
        match self.gathered(wanted, force, live)? {
            None => self.plan_direct(wanted, force, call_off, live),
            Some(_) if force => Err(
                "the table splits or merges a replicated range, which --force cannot do (its group holds the bytes): leave --force out, and the bytes move onto one node, are re-cut there, and the pieces move to their nodes".to_string(),
            ),
            Some(first) => {
                let mut planned = self.plan_direct(&first, force, call_off, live)?;
                planned.then = wanted.to_vec();
                Ok(planned)
            }
        }
    }

    /// The first step towards `wanted` when it re-cuts bytes that no one node holds alone
    /// (`None` when there are none): `wanted` with each such group of overlapping ranges
    /// (entries held and wanted, overlapping one another) replaced by the held entries, each
    /// moved onto one node: the live node that holds the most of them, then the one
    /// `wanted` names most, then the one named first most (their groups' likely leader),
    /// then the first by name.
    fn gathered(
        &self,
        wanted: &[Entry],
        force: bool,
        live: &impl Fn(&NodeName) -> bool,
    ) -> Result<Option<Vec<Entry>>, String> {
        let held = &self.entries;
        for h in held.iter().filter(|h| h.is_replicated()) {
            let covered = (h.first..=h.last).all(|b| wanted.iter().any(|e| e.first <= b && b <= e.last));
            if !covered && !wanted.iter().any(|e| (e.first, e.last) == (h.first, h.last)) {
                return Err(format!(
                    "the table would drop bytes of the replicated range {h} (no entry covers them all); its group holds them: keep an entry for {}, or cover its bytes with other ranges (that splits or merges it)",
                    h.range()
                ));
            }
        }
        // The groups of overlapping ranges, held and wanted: in order of their first bytes,
        // an entry joins the group before it when it starts within that group's bytes.
        let mut all: Vec<(bool, &Entry)> = held
            .iter()
            .map(|h| (true, h))
            .chain(wanted.iter().map(|w| (false, w)))
            .collect();
        all.sort_by_key(|(_, e)| e.first);
        let mut groups: Vec<(u8, Vec<&Entry>, Vec<&Entry>)> = Vec::new();
        for (is_held, e) in all {
            match groups.last_mut() {
                Some((last, ..)) if e.first <= *last => *last = (*last).max(e.last),
                _ => groups.push((e.last, vec![], vec![])),
            }
            if let Some((_, hs, ws)) = groups.last_mut() {
                if is_held { hs.push(e) } else { ws.push(e) }
            }
        }
        let mut first = Vec::new();
        let mut any = false;
        for (_, hs, ws) in groups {
            let recut = ws
                .iter()
                .any(|e| !hs.iter().any(|h| (h.first, h.last) == (e.first, e.last)));
            let mut owners: Vec<&NodeName> = hs.iter().map(|h| h.preferred_leader()).collect();
            owners.sort();
            owners.dedup();
            let needs = recut && (hs.iter().any(|h| h.is_replicated()) || (owners.len() > 1 && !force));
            if !needs {
                first.extend(ws.into_iter().cloned());
                continue;
            }
            any = true;
            if let Some(h) = hs.iter().find(|h| self.move_of(h.first, h.last).is_some()) {
                return Err(format!(
                    "the table would change the bounds of range {}, which is moving (see `kvnode route --status`); wait until it has moved",
                    h.range()
                ));
            }
            if let Some(down) = ws.iter().flat_map(|e| e.replicas()).find(|n| !live(n)) {
                return Err(format!(
                    "the table names {down} for bytes it re-cuts, and {down} is not a live member of the cluster; start it and let it join, then set the table again"
                ));
            }
            let mut candidates: Vec<&NodeName> = hs.iter().flat_map(|h| h.replicas()).filter(|n| live(n)).collect();
            candidates.sort();
            candidates.dedup();
            let count = |node: &NodeName, of: &[&Entry]| of.iter().filter(|e| e.replicas().contains(node)).count();
            let Some(gatherer) = candidates.into_iter().max_by_key(|node| {
                let leads = hs.iter().filter(|h| h.preferred_leader() == *node).count();
                (count(node, &hs), count(node, &ws), leads, std::cmp::Reverse(*node))
            }) else {
                return Err(format!(
                    "no node that holds {} is live, and the table re-cuts it; start one of them, then set the table again",
                    hs.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", ")
                ));
            };
            first.extend(hs.iter().map(|h| Entry::single(h.first, h.last, gatherer.clone())));
        }
        if !any {
            return Ok(None);
        }
        first.sort_by_key(|e| e.first);
        Ok(Some(first))
    }

    /// [`RoutingTable::plan_change`] when no bytes need gathering first.
    fn plan_direct(
        &self,
        wanted: &[Entry],
        force: bool,
        call_off: bool,
        live: &impl Fn(&NodeName) -> bool,
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
                        "entry {e} would change the bounds of the replicated range {h} in one step (its group is the range); its bytes are moved onto one node first, and this table is not that step",
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
        Ok(Planned {
            entries,
            moves,
            then: Vec::new(),
        })
    }

    /// The entries and moves once the move of `done`'s range to `done`'s nodes has taken
    /// effect in its group: the move's nodes become the entry's. `Ok(None)`: nothing to do
    /// (finished already); `Err` when the table holds no such move (another table replaced it).
    ///
    /// A move into one node ends the range's group (that node's data carries the range on,
    /// and the group's history joins `ended`), so it is taken only with `ended`, the
    /// history its only voter sealed (`store::ended`): a sealed group never changes its
    /// configuration again, so no other node can hold writes of it that this one lacks. With
    /// `ended`, the range's entry becomes `done` whatever move the table holds of it, as long
    /// as the table runs that history: a table of another coordinator (a partition) may have
    /// re-aimed the move after the group was sealed, and only the group knows where its data is.
    ///
    /// `under`: the version and setter of the table the move was finished by. A table older
    /// than that refuses (asked again once gossip brought the newer one): the move's history
    /// may not be in it (a coordinator one table behind), and a table it finished would win
    /// over the sender's by setter, undoing what the tables between did.
    pub fn finish_move(
        &self,
        done: &Entry,
        ended: Option<Generation>,
        under: (u64, &str),
    ) -> Result<Option<Planned>, String> {
        if (self.version, self.setter.as_str()) < under {
            return Err(format!(
                "this table (version {}, set by {}) is older than the one the move of {} was finished by (version {}, set by {}); asked again once gossip has brought it",
                self.version,
                self.setter,
                done.range(),
                under.0,
                under.1
            ));
        }
        let entry = self
            .entries
            .iter()
            .find(|e| (e.first, e.last) == (done.first, done.last));
        let generation = self.generation_of(done.first, done.last);
        let runs = entry.is_some_and(|e| self.group_of(e).is_some());
        let finished = |m: &Entry| Planned {
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
            moves: self
                .moves
                .iter()
                .filter(|o| (o.first, o.last) != (m.first, m.last))
                .cloned()
                .collect(),
            then: self.then.clone(),
        };
        let no_move = || {
            format!(
                "the table (version {}) holds no move of {} to {}",
                self.version,
                done.range(),
                nodes_of(done)
            )
        };
        match (entry, self.move_of(done.first, done.last), ended) {
            (Some(e), _, _) if !runs && e.same_nodes(done) => Ok(None),
            (Some(_), _, Some(sealed)) if !done.is_replicated() && runs && sealed == generation => {
                Ok(Some(finished(done)))
            }
            (Some(_), _, Some(sealed)) => Err(format!(
                "the table (version {}) runs no group of history {sealed} for range {}, which ended onto {}",
                self.version,
                done.range(),
                nodes_of(done)
            )),
            (Some(_), Some(m), None) if m.same_nodes(done) && done.is_replicated() => Ok(Some(finished(m))),
            (Some(_), Some(m), None) if m.same_nodes(done) => Err(format!(
                "the move of {} to {} ends the range's group, and is finished only once its group is sealed there",
                done.range(),
                nodes_of(done)
            )),
            (Some(e), None, None) if e.same_nodes(done) => Ok(None),
            _ => Err(no_move()),
        }
    }
}

/// Whether two lists hold the same entries, in any order.
fn same_entries(a: &[Entry], b: &[Entry]) -> bool {
    let sorted = |l: &[Entry]| {
        let mut l = l.to_vec();
        l.sort();
        l
    };
    sorted(a) == sorted(b)
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
        let held = table("a-m=foo,n-z=bar", &[]);
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
        assert!(plan(&held, "n-z=foo").unwrap_err().contains("would drop bytes"));
        assert!(
            plan(&held, "a-f=foo+bar+baz,n-z=foo")
                .unwrap_err()
                .contains("would drop bytes")
        );
    }

    /// The whole plan: entries, moves, then.
    fn planned(held: &RoutingTable, spec: &str, live: impl Fn(&NodeName) -> bool) -> Result<[String; 3], String> {
        held.plan_change(&wanted(spec), false, false, live).map(|p| steps(&p))
    }

    /// A plan's entries, moves and then, each as a table is written.
    fn steps(p: &Planned) -> [String; 3] {
        let list = |l: &[Entry]| l.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(",");
        [list(&p.entries), list(&p.moves), list(&p.then)]
    }

    /// The table once `plan`'s moves are done.
    fn moved(held: &RoutingTable, plan: &[String; 3]) -> RoutingTable {
        let entries: Vec<Entry> = held
            .entries()
            .iter()
            .map(|e| {
                let to: Vec<Entry> = wanted(&plan[1]);
                to.into_iter()
                    .find(|m| (m.first, m.last) == (e.first, e.last))
                    .unwrap_or_else(|| e.clone())
            })
            .collect();
        RoutingTable::new(entries, held.version() + 2, "x")
            .unwrap()
            .with_then(wanted(&plan[2]))
            .unwrap()
    }

    #[test]
    fn a_replicated_range_is_split_and_merged_by_way_of_one_node() {
        let all = |_: &NodeName| true;
        // A split: the range moves onto the node that holds most of what is re-cut, then is
        // re-cut there and the halves move to their nodes.
        let held = table("a-m=bar+foo+baz,n-z=foo", &[]);
        let first = planned(&held, "a-f=foo+bar+baz,g-z=foo", all).unwrap();
        assert_eq!(
            first,
            [
                "a-m=bar+foo+baz,n-z=foo".to_string(),
                "a-m=foo".into(),
                "a-f=foo+bar+baz,g-z=foo".into()
            ]
        );
        let halfway = moved(&held, &first);
        assert_eq!(
            halfway.to_string(),
            "[a-m=foo, n-z=foo] then [a-f=foo+bar+baz, g-z=foo]"
        );
        assert_eq!(
            steps(&halfway.plan_then(all).unwrap()),
            ["a-f=foo,g-z=foo".to_string(), "a-f=foo+bar+baz".into(), String::new()]
        );
        // Asked again between the steps: no change (the coordinator takes the second).
        assert_eq!(
            planned(&halfway, "a-f=foo+bar+baz,g-z=foo", all).unwrap(),
            [
                "a-m=foo,n-z=foo".to_string(),
                String::new(),
                "a-f=foo+bar+baz,g-z=foo".into()
            ]
        );
        // Asked again while the first step is under way: no change.
        let under_way = held
            .clone()
            .with_moves(wanted(&first[1]))
            .unwrap()
            .with_then(wanted(&first[2]))
            .unwrap();
        assert_eq!(planned(&under_way, "g-z=foo,a-f=foo+bar+baz", all).unwrap(), first);
        // Another table meanwhile is refused, unless it calls the split off.
        let why = planned(&under_way, "a-m=bar+foo+baz,n-z=bar", all).unwrap_err();
        assert!(why.contains("a split or merge is under way"), "{why}");
        let off = under_way
            .plan_change(&wanted("a-m=bar+foo+baz,n-z=foo"), false, true, all)
            .unwrap();
        assert_eq!((off.moves, off.then), (wanted("a-m=bar+foo+baz"), vec![]));
        // --force never splits: it would hand bytes over without them.
        let why = held
            .plan_change(&wanted("a-f=foo+bar+baz,g-z=foo"), true, false, all)
            .unwrap_err();
        assert!(why.contains("--force cannot"), "{why}");
        // A merge of two groups with different nodes, and of two single owners' bytes:
        // gathered on a node that holds some (the most, then the first by name).
        let held = table("a-f=foo+bar+baz,g-m=qux+bar+quux,n-z=foo", &[]);
        assert_eq!(
            planned(&held, "a-m=foo+bar+baz,n-z=foo", all).unwrap(),
            [
                "a-f=foo+bar+baz,g-m=qux+bar+quux,n-z=foo".to_string(),
                "a-f=bar,g-m=bar".into(),
                "a-m=foo+bar+baz,n-z=foo".into()
            ]
        );
        let held = table("a-m=foo,n-z=bar", &[]);
        let first = planned(&held, "a-z=baz", all).unwrap();
        assert_eq!(
            first,
            ["a-m=foo,n-z=bar".to_string(), "a-m=bar".into(), "a-z=baz".into()]
        );
        assert_eq!(
            steps(&moved(&held, &first).plan_then(all).unwrap()),
            ["a-z=bar".to_string(), "a-z=baz".into(), String::new()]
        );
        // Ranges the re-cut does not touch change in the first step.
        let held = table("a-m=foo+bar+baz,n-z=foo", &[]);
        assert_eq!(
            planned(&held, "a-f=foo+bar+baz,g-m=foo+bar+baz,n-z=bar", all).unwrap(),
            [
                "a-m=foo+bar+baz,n-z=foo".to_string(),
                "a-m=foo,n-z=bar".into(),
                "a-f=foo+bar+baz,g-m=foo+bar+baz,n-z=bar".into()
            ]
        );
        // Refused: a node of the table to follow is down; no node holding the bytes is live;
        // a range under way.
        let qux_down = |n: &NodeName| n.as_str() != "qux";
        let why = planned(&held, "a-f=foo+bar+qux,g-z=foo", qux_down).unwrap_err();
        assert!(why.contains("names qux for bytes it re-cuts"), "{why}");
        let held = table("a-m=foo+bar,n-z=foo", &[]);
        let why = planned(&held, "a-z=baz", |n| n.as_str() == "baz").unwrap_err();
        assert!(why.contains("no node that holds"), "{why}");
        let held = table("a-m=foo+bar,n-z=foo", &["a-m=foo+baz"]);
        let why = planned(&held, "a-z=foo+bar", all).unwrap_err();
        assert!(why.contains("which is moving"), "{why}");
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
        let done = held
            .finish_move(&"a-m=qux+baz".parse().unwrap(), None, (0, ""))
            .unwrap()
            .unwrap();
        assert_eq!(done.entries, wanted("a-m=baz+qux,n-z=bar"));
        assert_eq!(done.moves, vec!["n-z=foo".parse().unwrap()]);
        let after = RoutingTable::new(done.entries, 4, "foo")
            .unwrap()
            .with_moves(done.moves)
            .unwrap();
        assert_eq!(
            after.finish_move(&"a-m=baz+qux".parse().unwrap(), None, (0, "")),
            Ok(None)
        );
        assert!(after.finish_move(&"a-m=foo".parse().unwrap(), None, (0, "")).is_err());
    }

    #[test]
    fn a_move_into_one_node_is_finished_only_by_the_history_sealed_there() {
        let held = table("a-m=foo+bar+baz,n-z=bar", &["a-m=qux"]);
        let history = held.generation_of(b'a', b'm');
        let qux: Entry = "a-m=qux".parse().unwrap();
        // Not sealed: the group could still change its configuration (another coordinator's
        // table), so its history is not over.
        let why = held.finish_move(&qux, None, (0, "")).unwrap_err();
        assert!(why.contains("sealed"), "{why}");
        // Sealed, but another history of the range (a stale request).
        let other = Generation(history.0 + 1);
        let why = held.finish_move(&qux, Some(other), (0, "")).unwrap_err();
        assert!(why.contains("runs no group of history"), "{why}");
        let done = held.finish_move(&qux, Some(history), (0, "")).unwrap().unwrap();
        assert_eq!(done.entries, wanted("a-m=qux,n-z=bar"));
        assert_eq!(done.moves, vec![]);
        let after = RoutingTable::new(done.entries, 4, "foo")
            .unwrap()
            .with_generations(Some(&held));
        assert!(after.has_ended(b'a', b'm', history));
        assert_eq!(after.finish_move(&qux, Some(history), (0, "")), Ok(None));
    }

    #[test]
    fn a_table_older_than_the_one_a_move_was_finished_by_takes_no_finish() {
        // A coordinator one table behind the sender (version 3 where the sender's is 4, or
        // the same version by a lower setter) may lack the move's history, and its finished
        // table would win over the sender's by setter.
        let held = table("a-m=foo+bar+baz,n-z=bar", &["a-m=qux"]);
        let history = held.generation_of(b'a', b'm');
        let qux: Entry = "a-m=qux".parse().unwrap();
        for under in [(4, "foo"), (3, "goo")] {
            let why = held.finish_move(&qux, Some(history), under).unwrap_err();
            assert!(why.contains("older than the one the move"), "{why}");
        }
        for under in [(3, "foo"), (3, "bar"), (2, "zed")] {
            assert!(held.finish_move(&qux, Some(history), under).unwrap().is_some());
        }
    }

    #[test]
    fn a_history_sealed_onto_one_node_finishes_whatever_move_the_table_holds() {
        // The other side of a partition re-aimed the move after the group was sealed onto
        // qux: the group, not the table, says where its data is.
        let held = table("a-m=foo+bar+baz,n-z=bar", &["a-m=bar+quux+zed"]);
        let history = held.generation_of(b'a', b'm');
        let qux: Entry = "a-m=qux".parse().unwrap();
        let done = held.finish_move(&qux, Some(history), (0, "")).unwrap().unwrap();
        assert_eq!(done.entries, wanted("a-m=qux,n-z=bar"));
        assert_eq!(done.moves, vec![]);
        // No move at all (a table from before the move): the same.
        let held = table("a-m=foo+bar+baz,n-z=bar", &[]);
        let done = held.finish_move(&qux, Some(history), (0, "")).unwrap().unwrap();
        assert_eq!(done.entries, wanted("a-m=qux,n-z=bar"));
        // A table that runs no group there (the range a single owner's) takes none.
        let held = table("a-m=foo,n-z=bar", &[]);
        assert!(held.finish_move(&qux, Some(history), (0, "")).is_err());
    }
}
