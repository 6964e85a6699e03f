//! Read leases (issue 25): the vote a replica holds back after a restart, and the standing a
//! leader's lease is taken at.

use super::GEN;
use raft::prelude::{HardState, Message, MessageType};

use crate::{Frame, GroupStore, MemGroupStore, RaftMsg, RangeId, ReplicaConfig, Replicas, Role};

const RANGE: RangeId = RangeId {
    first: b'a',
    last: b'z',
};
const ME: u64 = 1;
const CANDIDATE: u64 = 2;
const VOTERS: [u64; 3] = [1, 2, 3];

/// A replica of `RANGE` whose store holds the bootstrap and a term of `term`, started now.
fn started_at_term(term: u64) -> Replicas<MemGroupStore> {
    started_with(ReplicaConfig::new(ME, 7, 1), term)
}

/// The same with `config`.
fn started_with(config: ReplicaConfig, term: u64) -> Replicas<MemGroupStore> {
    let mut store = MemGroupStore::bootstrap(&VOTERS);
    let mut hs = HardState::default();
    (hs.term, hs.commit) = (term, 1);
    store.persist(None, &[], Some(&hs)).unwrap();
    let mut r = Replicas::new(config);
    r.add_group(RANGE, GEN, store, &VOTERS).unwrap();
    r
}

/// A vote request from `CANDIDATE` for `term`, its log as long as the bootstrap's.
fn vote_request(kind: MessageType, term: u64) -> Frame {
    let mut m = Message::default();
    m.set_msg_type(kind);
    (m.from, m.to, m.term, m.log_term, m.index) = (CANDIDATE, ME, term, 1, 1);
    Frame {
        msgs: vec![(RANGE, GEN, RaftMsg::from_raft(&m))],
        probes: vec![],
        removed: vec![],
    }
}

/// The vote answers of the rounds left to run.
fn answers(r: &mut Replicas<MemGroupStore>) -> Vec<Message> {
    let mut sent = super::messages_sent(r);
    sent.retain(|m| {
        matches!(
            m.get_msg_type(),
            MessageType::MsgRequestVoteResponse | MessageType::MsgRequestPreVoteResponse
        )
    });
    sent
}

#[test]
fn a_replica_that_answered_leaders_gives_no_vote_until_any_lease_on_it_is_over() {
    let config = ReplicaConfig::new(ME, 7, 1);
    let held = config.lease() + 2;
    assert!(
        config.lease() > 0 && held < config.election_tick,
        "the default takes leases"
    );
    let mut r = started_at_term(4);
    for tick in 0..held {
        for kind in [MessageType::MsgRequestPreVote, MessageType::MsgRequestVote] {
            assert_eq!(
                r.handle_frame(CANDIDATE, vote_request(kind, 5)),
                1,
                "tick {tick}: dropped"
            );
        }
        assert!(answers(&mut r).is_empty(), "tick {tick}: no answer");
        r.handle_tick();
    }
    assert_eq!(
        r.handle_frame(CANDIDATE, vote_request(MessageType::MsgRequestVote, 5)),
        0
    );
    let sent = answers(&mut r);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(!sent[0].reject, "the vote is given once the hold is over");
}

#[test]
fn a_replica_still_at_its_bootstrap_term_votes_at_once() {
    // It never answered a leader: no lease stands on it, and a new cluster elects in one
    // round trip.
    let mut r = started_at_term(1);
    assert_eq!(
        r.handle_frame(CANDIDATE, vote_request(MessageType::MsgRequestVote, 2)),
        0
    );
    let sent = answers(&mut r);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(!sent[0].reject);
}

#[test]
fn no_leases_no_hold() {
    let mut config = ReplicaConfig::new(ME, 7, 1);
    config.lease_ticks = 0;
    let mut r = started_with(config, 4);
    assert_eq!(
        r.handle_frame(CANDIDATE, vote_request(MessageType::MsgRequestVote, 5)),
        0
    );
    assert!(r.lease_standing(RANGE).is_none(), "not a leader");
}

/// A group of one, led here once its first entry of the term is committed.
fn sole_leader() -> Replicas<MemGroupStore> {
    let mut r = Replicas::new(ReplicaConfig::new(ME, 7, 1));
    r.add_group(RANGE, GEN, MemGroupStore::bootstrap(&[ME]), &[ME]).unwrap();
    r.campaign(RANGE).unwrap();
    while r.poll_round().is_some_and(|p| r.handle_persisted(p.round).is_ok()) {}
    assert_eq!(r.role(RANGE).map(|(role, _)| role), Some(Role::Leader));
    r
}

#[test]
fn a_lease_stands_while_the_leader_keeps_its_term_and_hands_off_nothing() {
    let mut r = sole_leader();
    let standing = r
        .lease_standing(RANGE)
        .expect("a leader with its term's entry committed");
    r.handle_tick();
    assert_eq!(r.lease_standing(RANGE), Some(standing), "ticks change nothing");
    // Asking for a transfer ends it for the rest of the term (the target's campaign passes
    // the voters' lease, whenever its message reaches it), even once raft-rs gave it up.
    let _ = r.transfer_leader(RANGE, 3);
    assert_eq!(r.lease_standing(RANGE), None);
    for _ in 0..40 {
        r.handle_tick();
        while r.poll_round().is_some_and(|p| r.handle_persisted(p.round).is_ok()) {}
    }
    assert_eq!(r.role(RANGE), Some((Role::Leader, standing.term)));
    assert_eq!(r.lease_standing(RANGE), None);
}

/// A heartbeat carrying a read-index round's context, from `CANDIDATE` as leader of `term`.
fn heartbeat_with_context(term: u64) -> Frame {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    (m.from, m.to, m.term) = (CANDIDATE, ME, term);
    m.context = b"read-round-7".to_vec().into();
    Frame {
        msgs: vec![(RANGE, GEN, RaftMsg::from_raft(&m))],
        probes: vec![],
        removed: vec![],
    }
}

/// The contexts of the heartbeat answers the rounds left to run send.
fn answered_contexts(r: &mut Replicas<MemGroupStore>) -> Vec<Vec<u8>> {
    super::messages_sent(r)
        .iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgHeartbeatResponse)
        .map(|m| m.context.to_vec())
        .collect()
}

#[test]
fn a_replica_without_state_backs_no_read_round_but_one_with_state_does() {
    // Without state, the lost-state rule may yet start it afresh (no leader heard of, votes
    // at once): its answer must not count towards a leader's read-index round (a lease).
    let mut empty = Replicas::new(ReplicaConfig::new(ME, 7, 1));
    empty
        .add_group(RANGE, GEN, MemGroupStore::uninitialised(), &VOTERS)
        .unwrap();
    empty.handle_frame(CANDIDATE, heartbeat_with_context(3));
    assert_eq!(answered_contexts(&mut empty), vec![Vec::<u8>::new()]);
    let mut held = started_at_term(2);
    held.handle_frame(CANDIDATE, heartbeat_with_context(3));
    assert_eq!(answered_contexts(&mut held), vec![b"read-round-7".to_vec()]);
}

#[test]
fn a_peer_cannot_ask_for_a_leadership_transfer() {
    // Only this node's driver asks for one, and a transfer ends the lease for the term.
    let mut r = sole_leader();
    let standing = r.lease_standing(RANGE);
    assert!(standing.is_some());
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgTransferLeader);
    (m.from, m.to, m.term) = (CANDIDATE, ME, 0);
    let frame = Frame {
        msgs: vec![(RANGE, GEN, RaftMsg::from_raft(&m))],
        probes: vec![],
        removed: vec![],
    };
    assert_eq!(r.handle_frame(CANDIDATE, frame), 1, "dropped");
    assert_eq!(r.lease_standing(RANGE), standing);
}
