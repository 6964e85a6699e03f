//! Pre-votes between equal logs (`lost_state::outranks`): a replica leaves a lower-ranked
//! candidate's pre-vote unanswered only while it can be elected itself, and only a few times.

use super::GEN;
use raft::prelude::{Message, MessageType};

use crate::{Frame, MemGroupStore, RaftMsg, RangeId, ReplicaConfig, Replicas};

const RANGE: RangeId = RangeId {
    first: b'a',
    last: b'z',
};
/// First in the group's order: it outranks the candidate.
const ME: u64 = 1;
const CANDIDATE: u64 = 2;
const ORDER: [u64; 3] = [ME, CANDIDATE, 3];

/// A replica at its bootstrap (it holds back no vote after a restart at that term).
fn replica() -> Replicas<MemGroupStore> {
    let mut r = Replicas::new(ReplicaConfig::new(ME, 7, 1));
    r.add_group(RANGE, GEN, MemGroupStore::bootstrap(&ORDER), &ORDER)
        .unwrap();
    r
}

/// A pre-vote from `CANDIDATE` whose log is the bootstrap's, as this replica's is.
fn pre_vote() -> Frame {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgRequestPreVote);
    (m.from, m.to, m.term, m.log_term, m.index) = (CANDIDATE, ME, 2, 1, 1);
    Frame {
        msgs: vec![(RANGE, GEN, RaftMsg::from_raft(&m))],
        probes: vec![],
        removed: vec![],
    }
}

/// The pre-vote answers of the rounds left to run: whether each granted.
fn granted(r: &mut Replicas<MemGroupStore>) -> Vec<bool> {
    super::messages_sent(r)
        .into_iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgRequestPreVoteResponse)
        .map(|m| !m.reject)
        .collect()
}

#[test]
fn a_lower_ranked_candidate_with_an_equal_log_is_answered_after_two_pre_votes() {
    let mut r = replica();
    for asked in 1..=2 {
        assert_eq!(r.handle_frame(CANDIDATE, pre_vote()), 1, "pre-vote {asked}: held back");
        assert!(granted(&mut r).is_empty(), "pre-vote {asked}: no answer");
    }
    // This replica has had two of the candidate's election timeouts to be elected and was
    // not (say its campaign never reached the candidate): the candidate may go on.
    assert_eq!(r.handle_frame(CANDIDATE, pre_vote()), 0);
    assert_eq!(granted(&mut r), vec![true]);
}

#[test]
fn a_replica_that_cannot_lead_holds_no_pre_vote_back() {
    // Muted (it asks for pre-votes only, never for votes): it would never be elected, and a
    // candidate held back for it would leave the group without a leader.
    let mut r = replica();
    r.mute(RANGE);
    assert_eq!(r.handle_frame(CANDIDATE, pre_vote()), 0);
    assert_eq!(granted(&mut r), vec![true]);
}
