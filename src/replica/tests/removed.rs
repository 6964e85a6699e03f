//! A replica a move made a voter and removed again while it was down (the move called off or
//! re-aimed) learns that it was removed from the answer to its vote requests
//! (`Frame::removed`), and only when it holds nothing past the configuration that left it out.

use raft::prelude::{Entry, HardState, MessageType};

use super::GEN;
use crate::{Frame, Generation, GroupStore, MemGroupStore, Output, RangeId, ReplicaConfig, Replicas, Role};

const RANGE: RangeId = RangeId {
    first: b'a',
    last: b'm',
};
/// The removed replica, and the one it asks.
const X: u64 = 1;
const P: u64 = 2;

fn node(id: u64, voters: &[u64], extra_entries: u64) -> Replicas<MemGroupStore> {
    let mut store = MemGroupStore::bootstrap(voters);
    let entries: Vec<Entry> = (0..extra_entries)
        .map(|i| Entry {
            index: 2 + i,
            term: 1,
            ..Default::default()
        })
        .collect();
    let hs = HardState {
        term: 1,
        commit: 1,
        ..Default::default()
    };
    store.persist(None, &entries, Some(&hs)).unwrap();
    let mut r = Replicas::new(ReplicaConfig::new(id, 7, 1));
    r.add_group(RANGE, GEN, store, voters).unwrap();
    r
}

/// Runs `r`'s rounds: the frames it sends to `to`, and what the rounds released.
fn rounds(r: &mut Replicas<MemGroupStore>, to: u64) -> (Vec<Frame>, Output) {
    let (mut frames, mut all) = (vec![], Output::default());
    while let Some(p) = r.poll_round() {
        let out = r.handle_persisted(p.round).unwrap();
        for (dest, f) in p.send_early.into_iter().chain(out.frames) {
            if dest == to {
                frames.push(f);
            }
        }
        all.removed.extend(out.removed);
    }
    (frames, all)
}

/// X's vote requests to P, once its election timeout passed.
fn vote_requests(x: &mut Replicas<MemGroupStore>) -> Vec<Frame> {
    for _ in 0..40 {
        x.handle_tick();
        let (frames, _) = rounds(x, P);
        if !frames.is_empty() {
            assert!(matches!(x.role(RANGE), Some((Role::PreCandidate | Role::Candidate, _))));
            return frames;
        }
    }
    panic!("X never asked P for a vote");
}

/// What X learns from P's answers to its vote requests.
fn told(x: &mut Replicas<MemGroupStore>, p: &mut Replicas<MemGroupStore>) -> Vec<(RangeId, u64, u64)> {
    for f in vote_requests(x) {
        p.handle_frame(X, f);
    }
    let (answers, _) = rounds(p, X);
    for f in answers {
        x.handle_frame(P, f);
    }
    rounds(x, P).1.removed
}

#[test]
fn a_voter_that_left_a_replica_out_tells_it_and_it_may_drop_the_group() {
    // X still counts itself with P and 3; P's group went on to 3 and 4 without X.
    let (mut x, mut p) = (node(X, &[X, P, 3], 0), node(P, &[P, 3, 4], 0));
    // With the last index X's log held when it believed it: the bootstrap's.
    assert_eq!(told(&mut x, &mut p), vec![(RANGE, P, 1)]);
}

#[test]
fn a_replica_holding_entries_past_the_answer_keeps_its_group() {
    // X holds entry 2, past P's applied index 1: it may have acknowledged an entry of a
    // configuration that counts it again. Nothing is said to it.
    let (mut x, mut p) = (node(X, &[X, P, 3], 1), node(P, &[P, 3, 4], 0));
    assert_eq!(told(&mut x, &mut p), vec![]);
}

#[test]
fn a_voter_that_still_counts_the_replica_says_nothing() {
    let (mut x, mut p) = (node(X, &[X, P, 3], 0), node(P, &[X, P, 3], 0));
    assert_eq!(told(&mut x, &mut p), vec![]);
}

#[test]
fn only_a_voter_of_the_replicas_own_configuration_is_believed() {
    // An answer from a node X does not count as a voter is not taken.
    let mut x = node(X, &[X, 3, 4], 0);
    let removed = |generation| Frame {
        removed: vec![crate::Removed {
            range: RANGE,
            generation,
            applied: 100,
        }],
        ..Frame::default()
    };
    x.handle_frame(P, removed(GEN));
    assert_eq!(rounds(&mut x, P).1.removed, vec![]);
    // Nor from a voter's id speaking for another history of the range.
    x.handle_frame(3, removed(Generation(GEN.0 + 1)));
    assert_eq!(rounds(&mut x, P).1.removed, vec![]);
    x.handle_frame(3, removed(GEN));
    assert_eq!(rounds(&mut x, P).1.removed, vec![(RANGE, 3, 1)]);
}

#[test]
fn a_replica_of_another_history_asking_for_votes_is_not_told_anything() {
    // P's group of this history leaves X out, but X's vote requests are of another history
    // of the range: they are dropped, unanswered, and X holds on to what it has.
    let (mut x, mut p) = (node(X, &[X, P, 3], 0), node(P, &[P, 3, 4], 0));
    for f in vote_requests(&mut x) {
        let f = Frame {
            msgs: f
                .msgs
                .into_iter()
                .map(|(r, _, m)| (r, Generation(GEN.0 + 1), m))
                .collect(),
            ..f
        };
        p.handle_frame(X, f);
    }
    let (answers, _) = rounds(&mut p, X);
    assert!(answers.iter().all(|f| f.removed.is_empty()), "{answers:?}");
}

#[test]
fn a_muted_replica_asks_for_pre_votes_only_is_still_told_and_never_asks_for_a_vote() {
    let (mut x, mut p) = (node(X, &[X, P, 3], 0), node(P, &[P, 3, 4], 0));
    x.mute(RANGE);
    let asked = vote_requests(&mut x);
    let types: Vec<MessageType> = asked
        .iter()
        .flat_map(|f| &f.msgs)
        .map(|(_, _, m)| m.to_raft().unwrap().get_msg_type())
        .collect();
    assert_eq!(types, vec![MessageType::MsgRequestPreVote]);
    // Told, from the answer to its pre-vote request.
    for f in asked {
        p.handle_frame(X, f);
    }
    let (answers, _) = rounds(&mut p, X);
    for f in answers {
        x.handle_frame(P, f);
    }
    assert_eq!(rounds(&mut x, P).1.removed, vec![(RANGE, P, 1)]);
    // Granted its pre-votes, it becomes a candidate, but no vote request leaves it.
    let mut y = node(X, &[X, P, 3], 0);
    y.mute(RANGE);
    let term = match vote_requests(&mut y).first().map(|f| f.msgs[0].2.to_raft().unwrap()) {
        Some(m) => m.term,
        None => unreachable!("asked"),
    };
    for from in [P, 3] {
        let mut grant = raft::prelude::Message::default();
        grant.set_msg_type(MessageType::MsgRequestPreVoteResponse);
        (grant.from, grant.to, grant.term) = (from, X, term);
        let frame = Frame {
            msgs: vec![(RANGE, GEN, crate::RaftMsg::from_raft(&grant))],
            ..Frame::default()
        };
        y.handle_frame(from, frame);
    }
    let (sent, _) = rounds(&mut y, P);
    assert!(
        matches!(y.role(RANGE), Some((Role::Candidate, _))),
        "{:?}",
        y.role(RANGE)
    );
    assert!(
        sent.iter()
            .flat_map(|f| &f.msgs)
            .all(|(_, _, m)| m.to_raft().unwrap().get_msg_type() != MessageType::MsgRequestVote),
        "a vote request left a muted replica"
    );
}
