//! What a node knows of moves, for `kvnode route --status` (issue 26): the ranges streamed into
//! it (a move's new node, or a replica far behind) with their progress, and the moves it saw
//! finish in the table. Kept in memory, the newest [`KEEP`] of each.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use kvnode_replica::RangeId;

use crate::names::NodeName;
use crate::routing::RoutingTable;
use crate::wire::{InstallReport, InstallState, MoveDone, MovesReport};

/// How many installs and finished moves are kept.
const KEEP: usize = 16;

#[derive(Default)]
pub(super) struct MoveLog {
    next: Mutex<u64>,
    installs: Mutex<VecDeque<Install>>,
    done: Mutex<VecDeque<(MoveDone, Instant)>>,
}

struct Install {
    id: u64,
    range: RangeId,
    from: NodeName,
    keys: u64,
    bytes: u64,
    started: Instant,
    ended: Option<Instant>,
    state: InstallState,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn keep<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() >= KEEP {
        q.pop_front();
    }
    q.push_back(item);
}

impl MoveLog {
    /// A range began to stream in from `from`: its id for [`MoveLog::progress`] and
    /// [`MoveLog::end`].
    pub(super) fn begin(&self, range: RangeId, from: &NodeName) -> u64 {
        let id = {
            let mut next = lock(&self.next);
            *next += 1;
            *next
        };
        let install = Install {
            id,
            range,
            from: from.clone(),
            keys: 0,
            bytes: 0,
            started: Instant::now(),
            ended: None,
            state: InstallState::Receiving,
        };
        keep(&mut lock(&self.installs), install);
        id
    }

    /// A part of it was written: `keys` more keys in `bytes` more bytes.
    pub(super) fn progress(&self, id: u64, keys: u64, bytes: u64) {
        if let Some(i) = lock(&self.installs).iter_mut().find(|i| i.id == id) {
            i.keys += keys;
            i.bytes += bytes;
        }
    }

    /// It ended: written whole, or failed and why.
    pub(super) fn end(&self, id: u64, state: InstallState) {
        if let Some(i) = lock(&self.installs).iter_mut().find(|i| i.id == id) {
            i.ended = Some(Instant::now());
            i.state = state;
        }
    }

    /// The table changes from `old` to `new`: each move of `old` whose range `new` names by
    /// the move's nodes, and no longer moves, is done.
    pub(super) fn table_changed(&self, old: &RoutingTable, new: &RoutingTable) {
        let names = |e: &crate::routing::Entry| e.replicas().iter().map(|n| n.to_string()).collect::<Vec<_>>();
        for m in old.moves() {
            let finished = new.move_of(m.first, m.last).is_none()
                && new
                    .entries()
                    .iter()
                    .any(|e| (e.first, e.last) == (m.first, m.last) && e.same_nodes(m));
            let from = old.entries().iter().find(|e| (e.first, e.last) == (m.first, m.last));
            if let (true, Some(from)) = (finished, from) {
                let done = MoveDone {
                    range: m.range(),
                    from: names(from),
                    to: names(m),
                    version: new.version(),
                    ago_ms: 0,
                };
                keep(&mut lock(&self.done), (done, Instant::now()));
            }
        }
    }

    pub(super) fn report(&self) -> MovesReport {
        let now = Instant::now();
        let ms = |d: std::time::Duration| d.as_millis().try_into().unwrap_or(u64::MAX);
        let installs = lock(&self.installs)
            .iter()
            .map(|i| InstallReport {
                range: i.range.to_string(),
                from: i.from.to_string(),
                keys: i.keys,
                bytes: i.bytes,
                took_ms: ms(i.ended.unwrap_or(now) - i.started),
                ago_ms: i.ended.map_or(0, |e| ms(now - e)),
                state: i.state.clone(),
            })
            .collect();
        let done = lock(&self.done)
            .iter()
            .map(|(d, at)| MoveDone {
                ago_ms: ms(now - *at),
                ..d.clone()
            })
            .collect();
        MovesReport { installs, done }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(spec: &str, moves: &[&str], version: u64) -> RoutingTable {
        let entries = crate::config::TableSpec::parse([spec]).unwrap().0;
        let moves = moves
            .iter()
            .map(|m| crate::config::TableSpec::parse([*m]).unwrap().0.remove(0))
            .collect();
        RoutingTable::new(entries, version, "test")
            .unwrap()
            .with_moves(moves)
            .unwrap()
    }

    #[test]
    fn a_move_is_done_when_the_table_names_its_nodes_and_no_longer_moves_the_range() {
        let log = MoveLog::default();
        let moving = table("a-m=foo,n-z=bar", &["a-m=bar"], 2);
        log.table_changed(&table("a-m=foo,n-z=bar", &[], 1), &moving);
        assert!(log.report().done.is_empty(), "a move that starts is not done");
        log.table_changed(&moving, &table("a-m=bar,n-z=bar", &[], 3));
        let done = log.report().done;
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].range.as_str(), done[0].version), ("a-m", 3));
        assert_eq!(
            (done[0].from.clone(), done[0].to.clone()),
            (vec!["foo".to_string()], vec!["bar".to_string()])
        );
        // A table that drops the move without naming its nodes (the other side's): not done.
        log.table_changed(&moving, &table("a-m=foo,n-z=bar", &[], 4));
        assert_eq!(log.report().done.len(), 1);
    }

    #[test]
    fn an_install_reports_its_progress_and_how_it_ended_and_only_the_newest_are_kept() {
        let log = MoveLog::default();
        let range = RangeId {
            first: b'a',
            last: b'm',
        };
        let from: NodeName = "foo".parse().unwrap();
        let id = log.begin(range, &from);
        log.progress(id, 10, 1000);
        log.progress(id, 5, 500);
        let r = &log.report().installs[0];
        assert_eq!(
            (r.keys, r.bytes, r.state.as_str(), r.ago_ms),
            (15, 1500, "receiving", 0)
        );
        log.end(id, InstallState::Written);
        assert_eq!(log.report().installs[0].state, InstallState::Written);
        for _ in 0..KEEP {
            log.begin(range, &from);
        }
        let installs = log.report().installs;
        assert_eq!(installs.len(), KEEP);
        assert!(installs.iter().all(|i| i.state == InstallState::Receiving));
    }
}
