//! A bucket request for a replicated range (issue 25, "A request's way" in
//! `docs/design/replication.md`), from `Node::bucket_now`: the replica that leads proposes a
//! write, or serves a read once read-index confirms it; a replica that does not lead sends it
//! to the leader it knows, or waits for one (within the request's deadline); a node that is
//! no replica sends it to the first named. SPEC §5's path, hop limit and deadline hold: each
//! forward adds this node to the path, and a request is never sent to a node on its path (a
//! replica waits for a newer leader instead). A write is never sent twice by a forwarder
//! (`Node::forward` repeats only reads).

use std::sync::Arc;

use kvnode_replica::{Command, Effect, RangeId};
use serde_bytes::ByteBuf;
use tokio::time::Instant;

use super::Node;
use super::ops::{self, Applied};
use super::replicas::{Finished, Refused};
use super::watch::Source;
use crate::names::NodeName;
use crate::rpc::Now;
use crate::wire::{BucketOp, BucketRequest, RemoteError, Reply, Request};

type Answer = Result<Reply, RemoteError>;

/// What a replicated range's request becomes at the leader.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Mapped {
    /// A write: this command, proposed; answered once applied, from what applying it did
    /// (a delete that must find its key, a put into a bucket that must exist, a put that
    /// says whether its key is new: decided where the entry applies, never by a read before
    /// proposing, which a concurrent write could make stale).
    Write(Command),
    /// A read (get, keys): after read-index, from the store.
    Read,
    /// A route query: answered by any replica from its table.
    Route,
    /// A watch: a long poll of the range's change feed at the leader.
    Watch,
}

/// The command a bucket operation proposes, or what else it is (see [`Mapped`]).
pub(super) fn map(bucket: &[u8], op: &BucketOp) -> Mapped {
    let bucket = bucket.to_vec();
    let (k, v) = (|k: &Vec<u8>| k.clone(), |v: &Vec<u8>| v.clone());
    Mapped::Write(match op {
        BucketOp::Put { key, value } => Command::Put {
            bucket,
            key: k(key),
            value: v(value),
        },
        BucketOp::PutExisting { key, value } => Command::PutExisting {
            bucket,
            key: k(key),
            value: v(value),
        },
        BucketOp::PutReporting { key, value } => Command::PutReporting {
            bucket,
            key: k(key),
            value: v(value),
        },
        BucketOp::Delete { key } => Command::Delete { bucket, key: k(key) },
        BucketOp::Create => Command::CreateBucket { bucket },
        BucketOp::Get { .. } | BucketOp::Keys { .. } => return Mapped::Read,
        BucketOp::Route => return Mapped::Route,
        BucketOp::Watch { .. } => return Mapped::Watch,
    })
}

/// The answer to a write, from what applying it did: the single-node path's answers.
fn answer_of(op: &BucketOp, bucket: &[u8], effect: Effect) -> Answer {
    let key = || match op {
        BucketOp::Delete { key } | BucketOp::PutExisting { key, .. } | BucketOp::PutReporting { key, .. } => {
            ByteBuf::from(key.clone())
        }
        _ => ByteBuf::new(),
    };
    match (op, effect) {
        (_, Effect::NoBucket) => Err(RemoteError::BucketNotFound {
            bucket: ByteBuf::from(bucket.to_vec()),
        }),
        (_, Effect::NoKey) => Err(RemoteError::KeyNotFound {
            bucket: ByteBuf::from(bucket.to_vec()),
            key: key(),
        }),
        (BucketOp::PutReporting { .. }, Effect::StoredNew) => Ok(Reply::Stored { new: true }),
        (BucketOp::PutReporting { .. }, _) => Ok(Reply::Stored { new: false }),
        _ => Ok(Reply::Done),
    }
}

/// Where a request for a replicated range goes from this node.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// This node leads the range: propose or read here.
    Lead,
    /// Send it on to this node.
    Forward(NodeName),
    /// A replica that knows no leader it may send to: wait for a (newer) one.
    Wait,
    /// A node that is no replica, with every replica already on the path.
    Loop,
}

/// The forwarding decision: `leader` is the leader this node knows of the range (a replica's
/// own view; `None` on a node that is no replica). The first `holders` of `replicas` are the
/// entry's nodes; the others, a move's new ones.
pub(super) fn decide(
    me: &NodeName,
    replicas: &[NodeName],
    holders: usize,
    leader: Option<&NodeName>,
    path: &[NodeName],
) -> Decision {
    if let Some(at) = replicas.iter().position(|r| r == me) {
        return match leader {
            Some(l) if l == me => Decision::Lead,
            Some(l) if !path.contains(l) => Decision::Forward(l.clone()),
            // A node a move is adding, that knows no leader yet (it is being sent the range,
            // and hears of the leader once it has installed it, which takes seconds for a
            // large range): the nodes that hold the range know; waiting would pause the
            // range's requests sent here for the whole install.
            None if at >= holders => match replicas[..holders.min(replicas.len())]
                .iter()
                .find(|r| !path.contains(r))
            {
                Some(r) => Decision::Forward(r.clone()),
                None => Decision::Wait,
            },
            _ => Decision::Wait,
        };
    }
    // Not a replica: the first named is the likeliest leader (the preferred one), then the
    // others in the table's order; never one already on the path.
    match replicas.iter().find(|r| !path.contains(r)) {
        Some(r) => Decision::Forward(r.clone()),
        None => Decision::Loop,
    }
}

impl Node {
    /// Serves or forwards `req`, for the replicated range of `entry`, by `deadline`.
    /// `replicas`: the range group's nodes, the entry's first, then a move's new ones.
    pub(super) async fn replicated(
        self: Arc<Self>,
        mut req: BucketRequest,
        range: RangeId,
        replicas: Vec<NodeName>,
        holders: usize,
        deadline: Instant,
    ) -> Answer {
        let replicas = replicas.as_slice();
        let is_replica = replicas.contains(&self.name);
        let mut leaders = self.replicas.leaders();
        let start = Instant::now();
        loop {
            // A write raft-rs did not take (a leadership hand-over under way) or at whose index
            // a new leader committed another entry: it did not take effect, so it is proposed again, soon,
            // within the deadline, rather than failed to the client.
            let mut again_soon = false;
            let leader = leaders.borrow_and_update().get(&range).and_then(|v| v.leader.clone());
            // A replica answers a route query with the leader it knows (or waits for one).
            if is_replica && matches!(req.op, BucketOp::Route) {
                if let Some(leader) = leader {
                    req.path.push(self.name.clone());
                    return Ok(Reply::Owner {
                        node: leader,
                        path: req.path,
                        replicas: replicas.to_vec(),
                    });
                }
            } else {
                match decide(&self.name, replicas, holders, leader.as_ref(), &req.path) {
                    Decision::Lead => match self.lead(&req, range, replicas, deadline).await {
                        // Deposed meanwhile: look again (the leaders' view has changed).
                        Err(Refused::NotLeader { .. }) => {}
                        Err(Refused::Dropped(_)) => again_soon = true,
                        Err(e) => return Err(self.refusal(e)),
                        Ok(answer) => return answer,
                    },
                    Decision::Forward(to) => {
                        let mut onward = req.clone();
                        onward.path.push(self.name.clone());
                        match self.forward(&to, Request::Bucket(onward), deadline).await {
                            // Not applied there: the leadership moved (to this node, perhaps)
                            // while it was on its way. Decided again, soon.
                            Err(RemoteError::LeaderMoved { .. }) => again_soon = true,
                            answer => return answer,
                        }
                    }
                    Decision::Loop => {
                        let mut path: Vec<String> = req.path.iter().map(|n| n.to_string()).collect();
                        path.push(self.name.to_string());
                        return Err(RemoteError::RoutingLoop { path });
                    }
                    // The leader this replica knows is one the request crossed: waiting here
                    // would hold it to its deadline (it is never sent back along its path),
                    // so the node before is told, and asks again.
                    Decision::Wait if let Some(l) = leader.as_ref().filter(|l| req.path.contains(l)) => {
                        return Err(RemoteError::LeaderMoved {
                            node: self.name.to_string(),
                            range: range.to_string(),
                            leader: l.to_string(),
                        });
                    }
                    Decision::Wait => {}
                }
            }
            // Woken by the next leader change (or, for a write to propose again, after a
            // tick at most), or answered at the deadline.
            let until = match again_soon {
                true => deadline.min(Instant::now() + super::replicas::TICK),
                false => deadline,
            };
            if tokio::time::timeout_at(until, leaders.changed()).await.is_err() && until == deadline {
                return Err(RemoteError::DeadlineExceeded {
                    node: self.name.to_string(),
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
        }
    }

    /// Runs for the node's life beside the replica driver: each move the driver reports done
    /// (this node leads the range's group, which now holds the move's nodes) is finished in
    /// the table through the coordinator, asked again every half second until the table
    /// this node holds shows it. At the coordinator, a table to follow once the moves are
    /// done is planned here too ([`Node::follow_then`]).
    pub(super) async fn finish_moves(self: Arc<Self>) -> std::convert::Infallible {
        let mut finished = self.replicas.finished();
        let mut refused = None;
        loop {
            let done = finished.borrow_and_update().clone();
            for Finished { entry, ended } in done {
                let table = self.table();
                let wanted = match ended {
                    // The table still runs the history sealed onto this node.
                    Some(history) => {
                        table
                            .entry_for(entry.first, entry.last)
                            .is_some_and(|e| table.group_of(e).is_some())
                            && table.generation_of(entry.first, entry.last) == history
                    }
                    None => table
                        .move_of(entry.first, entry.last)
                        .is_some_and(|m| m.same_nodes(&entry)),
                };
                if !wanted {
                    continue;
                }
                let deadline = Instant::now() + std::time::Duration::from_secs(2);
                let under = (table.version(), table.setter().to_string());
                match self.finish_move(entry.clone(), ended, under, false, deadline).await {
                    Ok(_) => tracing::debug!(range = %entry.range(), "move finished in the table"),
                    Err(e) => {
                        tracing::info!(range = %entry.range(), error = %e, "the move is done but the table could not say so yet; asking again")
                    }
                }
            }
            match self.follow_then().await {
                Ok(()) => refused = None,
                Err(why) if refused.as_ref() != Some(&why) => {
                    tracing::warn!("{why}; tried again every half second");
                    refused = Some(why);
                }
                Err(_) => {}
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), finished.changed()).await;
        }
    }

    /// The request at the range's leader. `Err(NotLeader)` when it no longer leads.
    async fn lead(
        self: &Arc<Self>,
        req: &BucketRequest,
        range: RangeId,
        replicas: &[NodeName],
        deadline: Instant,
    ) -> Result<Answer, Refused> {
        match map(&req.bucket, &req.op) {
            // Applied entries only, which are committed: no read-index needed. A leader
            // deposed during the wait serves what it applied; the watch's next poll goes to
            // the new leader, from the log index it saw.
            Mapped::Watch => {
                let feed = self.store.range_feed(range).ok_or(Refused::NoGroup(range))?;
                let timeout = deadline.saturating_duration_since(Instant::now());
                Ok(
                    match self.watch_here(req.clone(), timeout, Source::Range(range, feed)) {
                        Now::Answer(answer) => answer,
                        Now::Waiting(answer) => answer.await,
                        // `watch_here` answers or waits; it never defers or places a request.
                        Now::Later(_) | Now::First(_) => Err(RemoteError::Internal {
                            node: self.name.to_string(),
                            reason: "a watch's poll was not answered".into(),
                        }),
                    },
                )
            }
            // (A replica answers a route query before deciding; here for completeness.)
            Mapped::Route => Ok(ops::route(&self.name, req.path.clone(), replicas.to_vec())),
            Mapped::Write(command) => {
                let effect = self.replicas.propose(range, command).await?;
                Ok(answer_of(&req.op, &req.bucket, effect))
            }
            // (A read under the leader's lease was answered where it was routed,
            // `Node::bucket_routed`; here a read-index round, which renews the lease.)
            Mapped::Read => {
                self.replicas.read(range).await?;
                Ok(self.here(req.clone()).await)
            }
        }
    }

    /// Whether a replica group runs on this node over `bucket`'s first byte, or one on its
    /// disk with entries it has not applied may yet run (the driver has not followed a table
    /// since it started). Asked of a bucket the table gives this node alone (no group): such
    /// a group ended here and may still apply its log (`replicas::Driver::settle`,
    /// `overlapped`, `retire`, `replay_alone`).
    pub(super) fn ending_here(&self, bucket: &[u8]) -> bool {
        bucket.first().is_some_and(|&first| self.replicas.covers(first))
    }

    /// Waits until no group here covers `bucket` ([`Node::ending_here`]): each applies what
    /// it committed, then goes. `Err` past `deadline`.
    pub(super) async fn until_ended(&self, bucket: &[u8], deadline: Instant) -> Result<(), RemoteError> {
        let mut leaders = self.replicas.leaders();
        let start = Instant::now();
        while self.ending_here(bucket) {
            if tokio::time::timeout_at(deadline, leaders.changed()).await.is_err() {
                return Err(RemoteError::DeadlineExceeded {
                    node: format!(
                        "{} (a replica group of this node that covers the bucket has not ended: it is applying the last of its log)",
                        self.name
                    ),
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
        }
        Ok(())
    }

    /// Applies a read to this node's store (where the range's applied data lives).
    async fn here(&self, req: BucketRequest) -> Answer {
        match ops::apply(req, &self.store, &self.name) {
            Applied::Now(answer) => answer,
            Applied::Later(answer) => answer.await,
        }
    }

    fn refusal(&self, e: Refused) -> RemoteError {
        let reason = e.to_string();
        match e {
            Refused::Unknown(_) | Refused::Stopped => RemoteError::Internal {
                node: self.name.to_string(),
                reason,
            },
            _ => RemoteError::Overloaded {
                node: self.name.to_string(),
                reason,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<NodeName> {
        n.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn each_operation_maps_to_its_command() {
        let (k, v) = (b"k".to_vec(), b"v".to_vec());
        let b = || b"b".to_vec();
        let put = |op: fn(Vec<u8>, Vec<u8>) -> BucketOp| map(b"b", &op(k.clone(), v.clone()));
        assert_eq!(
            put(|key, value| BucketOp::Put { key, value }),
            Mapped::Write(Command::Put {
                bucket: b(),
                key: k.clone(),
                value: v.clone()
            })
        );
        assert_eq!(
            put(|key, value| BucketOp::PutExisting { key, value }),
            Mapped::Write(Command::PutExisting {
                bucket: b(),
                key: k.clone(),
                value: v.clone()
            })
        );
        assert_eq!(
            put(|key, value| BucketOp::PutReporting { key, value }),
            Mapped::Write(Command::PutReporting {
                bucket: b(),
                key: k.clone(),
                value: v.clone()
            })
        );
        assert_eq!(
            map(b"b", &BucketOp::Delete { key: k.clone() }),
            Mapped::Write(Command::Delete {
                bucket: b(),
                key: k.clone()
            })
        );
        assert_eq!(
            map(b"b", &BucketOp::Create),
            Mapped::Write(Command::CreateBucket { bucket: b() })
        );
        assert_eq!(map(b"b", &BucketOp::Get { key: k }), Mapped::Read);
        assert_eq!(map(b"b", &BucketOp::Keys { after: None }), Mapped::Read);
        assert_eq!(map(b"b", &BucketOp::Route), Mapped::Route);
    }

    #[test]
    fn a_write_is_answered_from_what_applying_it_did() {
        let key = b"k".to_vec();
        let delete = BucketOp::Delete { key: key.clone() };
        let reporting = BucketOp::PutReporting {
            key: key.clone(),
            value: b"v".to_vec(),
        };
        let existing = BucketOp::PutExisting {
            key: key.clone(),
            value: b"v".to_vec(),
        };
        assert_eq!(answer_of(&delete, b"b", Effect::Deleted), Ok(Reply::Done));
        assert!(matches!(
            answer_of(&delete, b"b", Effect::NoKey),
            Err(RemoteError::KeyNotFound { key: k, .. }) if k.as_ref() == b"k"
        ));
        assert!(matches!(
            answer_of(&delete, b"b", Effect::NoBucket),
            Err(RemoteError::BucketNotFound { .. })
        ));
        assert_eq!(
            answer_of(&reporting, b"b", Effect::StoredNew),
            Ok(Reply::Stored { new: true })
        );
        assert_eq!(
            answer_of(&reporting, b"b", Effect::Stored),
            Ok(Reply::Stored { new: false })
        );
        assert_eq!(answer_of(&existing, b"b", Effect::Stored), Ok(Reply::Done));
        assert!(matches!(
            answer_of(&existing, b"b", Effect::NoBucket),
            Err(RemoteError::BucketNotFound { .. })
        ));
        assert_eq!(
            answer_of(&BucketOp::Create, b"b", Effect::Created(false)),
            Ok(Reply::Done)
        );
    }

    #[test]
    fn a_replica_leads_forwards_to_its_leader_or_waits() {
        let r = names(&["n1", "n2", "n3"]);
        let [n1, n2, n3] = [&r[0], &r[1], &r[2]];
        assert_eq!(decide(n2, &r, r.len(), Some(n2), &[]), Decision::Lead);
        assert_eq!(decide(n2, &r, r.len(), Some(n3), &[]), Decision::Forward(n3.clone()));
        // No leader known: wait for one.
        assert_eq!(decide(n2, &r, r.len(), None, &[]), Decision::Wait);
        // The leader it knows already had the request (a stale view): wait for a newer one.
        assert_eq!(
            decide(n2, &r, r.len(), Some(n3), std::slice::from_ref(n3)),
            Decision::Wait
        );
        assert_eq!(
            decide(n1, &r, r.len(), Some(n1), std::slice::from_ref(n3)),
            Decision::Lead
        );
        // n3 is being added by a move to n1+n2's range and knows no leader yet: the holders
        // know, so it sends the request to the first of them not on the path.
        assert_eq!(decide(n3, &r, 2, None, &[]), Decision::Forward(n1.clone()));
        assert_eq!(
            decide(n3, &r, 2, None, std::slice::from_ref(n1)),
            Decision::Forward(n2.clone())
        );
        assert_eq!(decide(n3, &r, 2, None, &r[..2]), Decision::Wait);
        // A holder that knows no leader still waits (an election is under way).
        assert_eq!(decide(n2, &r, 2, None, &[]), Decision::Wait);
    }

    #[test]
    fn a_node_that_is_no_replica_sends_to_the_first_named_not_on_the_path() {
        let r = names(&["n1", "n2", "n3"]);
        let other: NodeName = "qux".parse().unwrap();
        assert_eq!(decide(&other, &r, r.len(), None, &[]), Decision::Forward(r[0].clone()));
        assert_eq!(
            decide(&other, &r, r.len(), None, std::slice::from_ref(&r[0])),
            Decision::Forward(r[1].clone())
        );
        assert_eq!(decide(&other, &r, r.len(), None, &r), Decision::Loop);
    }
}
