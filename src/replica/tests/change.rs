//! The steps of a move, from a configuration to a target set of replicas.

use raft::prelude::ConfState;

use crate::change::{ChangeKind, ReplicaChange, Step, next_step};

fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
    let mut cs = ConfState::default();
    cs.set_voters(voters.to_vec());
    cs.set_learners(learners.to_vec());
    cs
}

fn change(changes: &[(ChangeKind, u64)]) -> Step {
    Step::Change(ReplicaChange {
        changes: changes.to_vec(),
    })
}

use ChangeKind::{AddLearner, AddVoter, Remove};

#[test]
fn a_move_adds_learners_one_at_a_time_then_swaps_in_one_joint_change() {
    let all = |_| true;
    // {1,2,3} -> {1,2,4}, led by 1.
    assert_eq!(
        next_step(&conf(&[1, 2, 3], &[]), &[1, 2, 4], 1, all),
        change(&[(AddLearner, 4)])
    );
    // 4 not caught up yet: wait.
    assert_eq!(
        next_step(&conf(&[1, 2, 3], &[4]), &[1, 2, 4], 1, |id| id != 4),
        Step::Wait
    );
    assert_eq!(
        next_step(&conf(&[1, 2, 3], &[4]), &[1, 2, 4], 1, all),
        change(&[(AddVoter, 4), (Remove, 3)])
    );
    assert_eq!(next_step(&conf(&[1, 2, 4], &[]), &[1, 2, 4], 1, all), Step::Done);
    // Two new ones: each a learner in turn, then both promoted at once.
    assert_eq!(
        next_step(&conf(&[1, 2, 3], &[4]), &[1, 4, 5], 1, all),
        change(&[(AddLearner, 5)])
    );
    assert_eq!(
        next_step(&conf(&[1, 2, 3], &[4, 5]), &[1, 4, 5], 1, all),
        change(&[(AddVoter, 4), (AddVoter, 5), (Remove, 2), (Remove, 3)])
    );
}

#[test]
fn a_leader_outside_the_target_is_removed_only_after_handing_over() {
    let all = |_| true;
    // {1,2,3} -> {4,5,6}, led by 1: everyone else goes in the joint change, 1 stays.
    assert_eq!(
        next_step(&conf(&[1, 2, 3], &[4, 5, 6]), &[4, 5, 6], 1, all),
        change(&[(AddVoter, 4), (AddVoter, 5), (AddVoter, 6), (Remove, 2), (Remove, 3)])
    );
    // Then 1 hands over to a caught-up target voter...
    assert_eq!(
        next_step(&conf(&[1, 4, 5, 6], &[]), &[4, 5, 6], 1, |id| id == 5),
        Step::Transfer(5)
    );
    assert_eq!(
        next_step(&conf(&[1, 4, 5, 6], &[]), &[4, 5, 6], 1, |_| false),
        Step::Wait
    );
    // ...which removes it.
    assert_eq!(
        next_step(&conf(&[1, 4, 5, 6], &[]), &[4, 5, 6], 5, all),
        change(&[(Remove, 1)])
    );
}

#[test]
fn a_joint_configuration_is_left_and_a_stray_learner_removed_first() {
    let mut joint = conf(&[1, 2, 4], &[]);
    joint.set_voters_outgoing(vec![1, 2, 3]);
    assert_eq!(next_step(&joint, &[1, 2, 4], 1, |_| true), change(&[]));
    // A learner of an abandoned move (the target went back to {1,2,3}).
    assert_eq!(
        next_step(&conf(&[1, 2, 3], &[4]), &[1, 2, 3], 1, |_| true),
        change(&[(Remove, 4)])
    );
}

#[test]
fn a_change_travels_in_an_entry_context_and_garbage_is_no_change() {
    let c = ReplicaChange {
        changes: vec![(AddVoter, 4), (Remove, 3)],
    };
    assert_eq!(ReplicaChange::decode(&c.encode()), Some(c.clone()));
    assert_eq!(ReplicaChange::decode(&[]), Some(ReplicaChange { changes: vec![] }));
    assert_eq!(ReplicaChange::decode(&[9, 9, 9]), None);
    let mut trailing = c.encode();
    trailing.push(0);
    assert_eq!(ReplicaChange::decode(&trailing), None);
    assert_eq!(c.to_raft().get_changes().len(), 2);
}
