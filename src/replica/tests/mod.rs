mod change;
mod faults;
mod generation;
mod ids;
mod install;
mod lease;
mod moves;
mod rank;
mod removed;
mod scenarios;
mod sim;
mod wire;

/// The generation the tests give their groups.
pub(crate) const GEN: crate::ids::Generation = crate::ids::Generation(7);

/// Every frame the rounds left to run send (each round made durable at once), in order.
pub(crate) fn frames_sent(r: &mut crate::Replicas<crate::MemGroupStore>) -> Vec<crate::Frame> {
    let mut sent = vec![];
    while let Some(p) = r.poll_round() {
        let out = r.handle_persisted(p.round).unwrap();
        sent.extend(p.send_early.into_iter().chain(out.frames).map(|(_, f)| f));
    }
    sent
}

/// Every raft message the rounds left to run send.
pub(crate) fn messages_sent(r: &mut crate::Replicas<crate::MemGroupStore>) -> Vec<raft::prelude::Message> {
    let frames = frames_sent(r).into_iter();
    frames
        .flat_map(|f| f.msgs)
        .map(|(_, _, m)| m.to_raft().unwrap())
        .collect()
}
