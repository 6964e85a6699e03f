//! Streamed snapshots (issue 26, `core::install`): taken only when raft-rs would restore
//! them, the group held still while the data is written, then restored exactly once.

use super::GEN;
use raft::prelude::{Message, MessageType};

use crate::{Frame, INSTALLED, InstallRefused, MemGroupStore, RaftMsg, RangeId, ReplicaConfig, Replicas};

const RANGE: RangeId = RangeId {
    first: b'a',
    last: b'z',
};
const LEADER: u64 = 1;
const ME: u64 = 2;

/// A node whose group of the range is new to it (a node a move adds).
fn newcomer() -> Replicas<MemGroupStore> {
    let mut r = Replicas::new(ReplicaConfig::new(ME, 7, 1));
    r.add_group(RANGE, GEN, MemGroupStore::uninitialised(), &[]).unwrap();
    r
}

/// A leader's streamed snapshot at `index` of `term`, its configuration `voters` and
/// `learners`, with `data`.
fn snapshot(term: u64, index: u64, voters: &[u64], learners: &[u64], data: &[u8]) -> RaftMsg {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    (m.from, m.to, m.term) = (LEADER, ME, term);
    let snap = m.mut_snapshot();
    snap.set_data(data.to_vec().into());
    let meta = snap.mut_metadata();
    (meta.index, meta.term) = (index, term);
    meta.mut_conf_state().voters = voters.to_vec();
    meta.mut_conf_state().learners = learners.to_vec();
    RaftMsg::from_raft(&m)
}

fn heartbeat(term: u64) -> RaftMsg {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    (m.from, m.to, m.term) = (LEADER, ME, term);
    RaftMsg::from_raft(&m)
}

fn frame(msg: RaftMsg) -> Frame {
    Frame {
        msgs: vec![(RANGE, GEN, msg)],
        probes: vec![],
        removed: vec![],
    }
}

/// Runs rounds until none is left, as the driver does: the snapshots each one persisted (index
/// and data), and the messages released.
fn rounds(r: &mut Replicas<MemGroupStore>) -> (Vec<(u64, Vec<u8>)>, Vec<Message>) {
    let (mut snaps, mut sent) = (vec![], vec![]);
    while let Some(p) = r.poll_round() {
        for w in &p.groups {
            if let Some(s) = &w.snapshot {
                snaps.push((s.get_metadata().index, s.get_data().to_vec()));
            }
        }
        let out = r.handle_persisted(p.round).unwrap();
        let frames = p.send_early.into_iter().chain(out.frames);
        sent.extend(frames.flat_map(|(_, f)| f.msgs).map(|(_, _, m)| m.to_raft().unwrap()));
    }
    (snaps, sent)
}

#[test]
fn a_streamed_snapshot_or_one_said_installed_is_never_taken_from_a_frame() {
    let mut r = newcomer();
    assert_eq!(r.handle_frame(LEADER, frame(snapshot(3, 10, &[LEADER], &[ME], b""))), 1);
    assert_eq!(
        r.handle_frame(LEADER, frame(snapshot(3, 10, &[LEADER], &[ME], INSTALLED))),
        1
    );
    let (snaps, _) = rounds(&mut r);
    assert!(snaps.is_empty());
    assert_eq!(r.initialised(RANGE), Some(false));
}

#[test]
fn a_streamed_snapshot_holds_the_group_still_until_its_data_is_in_place_then_is_restored_once() {
    let mut r = newcomer();
    let msg = snapshot(3, 10, &[LEADER], &[ME], b"");
    // Another history's snapshot is never taken, whatever it holds.
    assert_eq!(
        r.begin_install(RANGE, crate::Generation(GEN.0 + 1), LEADER, &msg),
        Err(InstallRefused::OtherHistory(RANGE))
    );
    assert!(!r.installing(RANGE));
    r.begin_install(RANGE, GEN, LEADER, &msg).unwrap();
    assert!(r.installing(RANGE));
    assert_eq!(
        r.begin_install(RANGE, GEN, LEADER, &msg),
        Err(InstallRefused::Busy(RANGE))
    );
    // Held still: nothing stepped, no election however long it waits, no round.
    assert_eq!(r.handle_frame(LEADER, frame(heartbeat(3))), 1);
    for _ in 0..100 {
        r.handle_tick();
    }
    let (snaps, sent) = rounds(&mut r);
    assert!(snaps.is_empty() && sent.is_empty(), "{snaps:?} {sent:?}");
    assert!(r.end_install(RANGE, LEADER, &msg));
    assert!(!r.installing(RANGE));
    let (snaps, sent) = rounds(&mut r);
    assert_eq!(snaps, [(10, INSTALLED.to_vec())]);
    assert!(
        sent.iter()
            .any(|m| m.get_msg_type() == MessageType::MsgAppendResponse && m.to == LEADER && m.index == 10),
        "{sent:?}"
    );
    assert_eq!(r.initialised(RANGE), Some(true));
    // The same snapshot again, or an older one: the group holds it already.
    assert_eq!(
        r.begin_install(RANGE, GEN, LEADER, &msg),
        Err(InstallRefused::NotNeeded)
    );
    let older = snapshot(3, 8, &[LEADER], &[ME], b"");
    assert_eq!(
        r.begin_install(RANGE, GEN, LEADER, &older),
        Err(InstallRefused::NotNeeded)
    );
    // A newer one is taken.
    let newer = snapshot(4, 20, &[LEADER, ME], &[], b"");
    assert_eq!(r.begin_install(RANGE, GEN, LEADER, &newer), Ok(()));
    assert!(r.end_install(RANGE, LEADER, &newer));
    assert_eq!(rounds(&mut r).0, [(20, INSTALLED.to_vec())]);
}

#[test]
fn a_streamed_snapshot_not_for_this_replica_or_of_an_older_term_is_refused_before_any_data_is_written() {
    let mut r = newcomer();
    let not_named = snapshot(3, 10, &[LEADER], &[], b"");
    assert_eq!(
        r.begin_install(RANGE, GEN, LEADER, &not_named),
        Err(InstallRefused::NotNeeded)
    );
    let msg = snapshot(3, 10, &[LEADER], &[ME], b"");
    assert_eq!(r.begin_install(RANGE, GEN, 9, &msg), Err(InstallRefused::NotForMe));
    let with_data = snapshot(3, 10, &[LEADER], &[ME], b"\x00");
    assert_eq!(
        r.begin_install(RANGE, GEN, LEADER, &with_data),
        Err(InstallRefused::NotForMe)
    );
    let other = RangeId {
        first: b'0',
        last: b'9',
    };
    assert_eq!(
        r.begin_install(other, GEN, LEADER, &msg),
        Err(InstallRefused::NoGroup(other))
    );
    // A term seen, then a snapshot of an older one.
    assert_eq!(r.handle_frame(LEADER, frame(heartbeat(5))), 0);
    rounds(&mut r);
    assert_eq!(
        r.begin_install(RANGE, GEN, LEADER, &msg),
        Err(InstallRefused::NotNeeded)
    );
    assert!(!r.installing(RANGE));
    // Called off: the group goes on as it was.
    let current = snapshot(5, 10, &[LEADER], &[ME], b"");
    r.begin_install(RANGE, GEN, LEADER, &current).unwrap();
    r.abort_install(RANGE);
    assert!(!r.installing(RANGE));
    assert_eq!(r.handle_frame(LEADER, frame(heartbeat(5))), 0);
}
