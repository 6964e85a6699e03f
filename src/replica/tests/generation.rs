//! Generations (issue 26): a range's group born again is another history, and a replica of
//! one never steps, answers for or takes the other's messages, probes or snapshots.

use raft::prelude::{HardState, Message, MessageType};

use super::GEN;
use crate::{Frame, Generation, GroupStore, LogState, MemGroupStore, Probe, RaftMsg, RangeId, ReplicaConfig, Replicas};

const RANGE: RangeId = RangeId {
    first: b'a',
    last: b'z',
};
const ME: u64 = 1;
const PEER: u64 = 2;
const VOTERS: [u64; 3] = [1, 2, 3];
const OTHER: Generation = Generation(GEN.0 + 1);

/// A replica of `RANGE` (history `GEN`) whose store holds the bootstrap and term 4.
fn held() -> Replicas<MemGroupStore> {
    let mut store = MemGroupStore::bootstrap(&VOTERS);
    let hs = HardState {
        term: 4,
        commit: 1,
        ..Default::default()
    };
    store.persist(None, &[], Some(&hs)).unwrap();
    let mut r = Replicas::new(ReplicaConfig::new(ME, 7, 1));
    r.add_group(RANGE, GEN, store, &VOTERS).unwrap();
    r
}

/// A leader's heartbeat from `PEER` at `term`, of history `generation`.
fn heartbeat(generation: Generation, term: u64) -> Frame {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    (m.from, m.to, m.term, m.commit) = (PEER, ME, term, 1);
    Frame {
        msgs: vec![(RANGE, generation, RaftMsg::from_raft(&m))],
        probes: vec![],
        removed: vec![],
    }
}

fn probe(generation: Generation, answer: Option<Option<LogState>>) -> Frame {
    Frame {
        msgs: vec![],
        probes: vec![Probe {
            range: RANGE,
            generation,
            answer,
        }],
        removed: vec![],
    }
}

/// Every probe the rounds left to run send.
fn probes_sent(r: &mut Replicas<MemGroupStore>) -> Vec<Probe> {
    super::frames_sent(r).into_iter().flat_map(|f| f.probes).collect()
}

#[test]
fn another_historys_messages_are_dropped_and_its_terms_never_reach_the_group() {
    let mut r = held();
    // A replica of an older history of the range, its term far ahead, cannot move this one.
    assert_eq!(r.handle_frame(PEER, heartbeat(OTHER, 50)), 1, "dropped");
    assert_eq!(r.role(RANGE).map(|(_, term)| term), Some(4));
    // The same message of the group's own history is stepped.
    assert_eq!(r.handle_frame(PEER, heartbeat(GEN, 5)), 0);
    assert_eq!(r.role(RANGE).map(|(_, term)| term), Some(5));
}

#[test]
fn a_probe_of_another_history_is_answered_with_nothing_held() {
    let mut r = held();
    r.handle_frame(PEER, probe(OTHER, None));
    let answers = probes_sent(&mut r);
    assert_eq!(
        answers,
        vec![Probe {
            range: RANGE,
            generation: OTHER,
            answer: Some(None)
        }]
    );
    r.handle_frame(PEER, probe(GEN, None));
    let answers = probes_sent(&mut r);
    assert!(
        matches!(answers.as_slice(), [Probe { generation: GEN, answer: Some(Some(s)), .. }] if s.term == 4),
        "{answers:?}"
    );
}

/// A history that ended while this node held it (its group dropped since) is not new: a
/// probe of it, asking whether the range is new, gets no answer from here, so replicas that
/// all dropped it never agree to bootstrap it over nothing. Any other history is answered.
#[test]
fn a_probe_of_a_history_that_ended_here_is_not_answered() {
    let mut r = held();
    r.remove_group(RANGE);
    r.note_ended(RANGE, Some(GEN));
    r.handle_frame(PEER, probe(GEN, None));
    assert_eq!(probes_sent(&mut r), vec![]);
    r.handle_frame(PEER, probe(OTHER, None));
    assert_eq!(
        probes_sent(&mut r),
        vec![Probe {
            range: RANGE,
            generation: OTHER,
            answer: Some(None)
        }]
    );
    // Started again empty, to take a live leader's snapshot only: still nothing to say.
    r.add_group(RANGE, GEN, MemGroupStore::uninitialised(), &[]).unwrap();
    r.handle_frame(PEER, probe(GEN, None));
    assert_eq!(probes_sent(&mut r), vec![]);
}

/// A range whose ended histories the caller cannot read (a damaged record): no probe of
/// any history of it is answered while this node holds nothing of it.
#[test]
fn a_probe_of_a_range_whose_ended_histories_are_unknown_is_not_answered() {
    let mut r = held();
    r.remove_group(RANGE);
    r.note_ended(RANGE, None);
    r.handle_frame(PEER, probe(OTHER, None));
    r.handle_frame(PEER, probe(GEN, None));
    assert_eq!(probes_sent(&mut r), vec![]);
}

#[test]
fn answers_about_another_history_do_not_count_towards_the_lost_state_rule() {
    // A replica without state asks the others; were answers about another history counted,
    // "nothing held" from nodes of an older one would let it bootstrap the range as new.
    let mut r = Replicas::new(ReplicaConfig::new(ME, 7, 1));
    r.add_group(RANGE, GEN, MemGroupStore::uninitialised(), &VOTERS)
        .unwrap();
    for from in [2, 3] {
        r.handle_frame(from, probe(OTHER, Some(None)));
    }
    probes_sent(&mut r);
    assert_eq!(
        r.initialised(RANGE),
        Some(false),
        "not bootstrapped on the other history's word"
    );
    for from in [2, 3] {
        r.handle_frame(from, probe(GEN, Some(None)));
    }
    probes_sent(&mut r);
    assert_eq!(r.initialised(RANGE), Some(true), "bootstrapped: the range is new");
}
