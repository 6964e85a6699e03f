//! Joining (with the unique-name check), retries and leaving.

use std::time::Duration;

use super::*;
use crate::State;

#[test]
fn a_join_through_a_seed_spreads_to_every_member() {
    let mut net = Net::converged(&["a", "b", "c"]);
    net.nodes.push(gossip("d", 3, 1, net.now));
    net.down.push(false);
    let now = net.now;
    net.nodes[3].join(now, addr(0));
    net.pump();
    assert!(net.events_of(3).contains(&&Event::Joined {
        seed: addr(0),
        members: 4
    }));
    assert!(net.events_of(0).contains(&&Event::MemberUp {
        name: name("d"),
        addr: addr(3)
    }));
    net.run(Duration::from_secs(3), Duration::from_millis(50));
    for g in &net.nodes {
        assert_eq!(
            g.members().filter(|m| m.state == State::Alive).count(),
            4,
            "{:?}",
            g.identity()
        );
    }
}

/// Seed `a` knows `x` at address 1; a new `x` (generation 2) joins from address 2 through `a`.
fn impostor_joins(old_alive: bool) -> Net {
    let mut net = Net::converged(&["a", "x"]);
    net.nodes.push(gossip("x", 2, 2, net.now));
    net.down.push(false);
    net.down[1] = !old_alive;
    let now = net.now;
    net.nodes[2].join(now, addr(0));
    net.pump();
    net.run(GossipConfig::default().probe_interval * 2, Duration::from_millis(10));
    net
}

#[test]
fn join_with_a_name_alive_elsewhere_is_refused() {
    let net = impostor_joins(true);
    assert!(
        net.events_of(2)
            .iter()
            .any(|e| matches!(e, Event::JoinRefused { seed, reason } if *seed == addr(0) && reason.contains("taken"))),
        "{:?}",
        net.events_of(2)
    );
    assert!(
        net.events_of(0)
            .iter()
            .any(|e| matches!(e, Event::RefusedJoin { name, addr: a, .. } if name.as_str() == "x" && *a == addr(2)))
    );
    let x = net.nodes[0].member("x").unwrap();
    assert_eq!(
        (x.addr, x.generation, x.state),
        (addr(1), 1, State::Alive),
        "the live one keeps its name"
    );
}

#[test]
fn restart_with_a_new_generation_is_accepted_when_the_old_one_is_silent() {
    let net = impostor_joins(false);
    assert!(net.events_of(2).contains(&&Event::Joined {
        seed: addr(0),
        members: 2
    }));
    let x = net.nodes[0].member("x").unwrap();
    assert_eq!((x.addr, x.generation, x.state), (addr(2), 2, State::Alive));
}

#[test]
fn the_seed_checks_a_name_holder_on_a_stream_too_so_one_lost_datagram_cannot_hand_its_name_away() {
    let mut net = Net::converged(&["a", "x"]);
    net.nodes.push(gossip("x", 2, 2, net.now));
    net.down.push(false);
    let now = net.now;
    net.nodes[2].join(now, addr(0));
    let join = drain(&mut net.nodes[2]).pop().unwrap();
    net.nodes[0].handle_message(now, addr(2), join.msg);
    let checks = drain(&mut net.nodes[0]);
    assert!(
        checks
            .iter()
            .all(|t| t.to == addr(1) && matches!(t.msg, Message::Ping { .. }))
    );
    assert_eq!(checks.iter().filter(|t| t.reliable).count(), 1, "{checks:?}");
    // The datagram is lost; only the stream ping reaches the holder, which answers on a stream.
    let stream = checks.into_iter().find(|t| t.reliable).unwrap();
    net.nodes[1].handle_message(now, addr(0), stream.msg);
    let ack = drain(&mut net.nodes[1]).pop().unwrap();
    assert!(ack.reliable);
    net.nodes[0].handle_message(now, addr(1), ack.msg);
    let refusal = drain(&mut net.nodes[0]).pop().unwrap();
    assert!(matches!(refusal.msg, Message::JoinRefused { .. }) && refusal.to == addr(2));
}

#[test]
fn joining_with_the_seeds_own_name_is_refused() {
    let mut net = Net::new(&["a"]);
    net.nodes.push(gossip("a", 1, 2, net.now));
    net.down.push(false);
    let now = net.now;
    net.nodes[1].join(now, addr(0));
    net.pump();
    assert!(net.events_of(1).iter().any(|e| matches!(e, Event::JoinRefused { .. })));
    assert!(net.events_of(0).iter().any(|e| matches!(e, Event::RefusedJoin { .. })));
}

#[test]
fn join_is_retried_with_backoff_until_the_seed_answers() {
    let mut net = Net::new(&["a", "b"]);
    net.down[0] = true;
    let now = net.now;
    net.nodes[1].join(now, addr(0));
    net.run(Duration::from_secs(20), Duration::from_millis(100));
    let failures = net
        .events_of(1)
        .iter()
        .filter(|e| matches!(e, Event::JoinFailed { .. }))
        .count();
    // join_timeout 3 s, then backoff 1, 2, 4 s: attempts at 0, 4, 9 and 16 s fail at 3, 7, 12, 19 s.
    assert_eq!(failures, 4, "{:?}", net.events_of(1));
    net.down[0] = false;
    net.run(Duration::from_secs(15), Duration::from_millis(100));
    assert!(net.events_of(1).contains(&&Event::Joined {
        seed: addr(0),
        members: 2
    }));
    assert_eq!(net.nodes[0].member("b").unwrap().state, State::Alive);
}

/// The token of the join request `g` just sent to `seed`.
fn join_token(g: &mut Gossip, seed: SocketAddr) -> u32 {
    drain(g)
        .into_iter()
        .find_map(|t| match t.msg {
            Message::PushPull(pp) if t.to == seed && !pp.is_reply => pp.join,
            _ => None,
        })
        .expect("a join request")
}

#[test]
fn a_join_the_driver_could_not_send_fails_at_once_with_its_reason_and_is_retried() {
    let now = t0();
    let mut b = gossip("b", 1, 1, now);
    b.join(now, addr(0));
    let first = join_token(&mut b, addr(0));
    b.join_unanswerable(now, first, "the secrets differ".into());
    let failed = Event::JoinFailed {
        seed: addr(0),
        reason: "the secrets differ".into(),
    };
    assert_eq!(events(&mut b), vec![failed]);
    // In its backoff, not waiting: a second report of the same send changes nothing.
    b.join_unanswerable(now, first, "again".into());
    assert!(events(&mut b).is_empty());
    // Retried after the first backoff (1 s), not at the join timeout (3 s), as a new request.
    b.handle_timeout(now + Duration::from_secs(1));
    let second = join_token(&mut b, addr(0));
    assert_ne!(first, second);
    // A late report about the first request (its connect outlived it) is not the second's.
    b.join_unanswerable(now + Duration::from_secs(2), first, "stale".into());
    assert!(events(&mut b).is_empty());
    // Nor does an unknown token touch anything.
    b.join_unanswerable(now, 999_999, "who".into());
    assert!(events(&mut b).is_empty());
    b.join_unanswerable(now + Duration::from_secs(2), second, "now".into());
    assert_eq!(events(&mut b).len(), 1);
}

#[test]
fn once_joined_the_other_seeds_are_no_longer_tried() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.down[1] = true;
    let now = net.now;
    net.nodes[2].join(now, addr(1));
    net.nodes[2].join(now, addr(0));
    net.pump();
    assert!(net.events_of(2).contains(&&Event::Joined {
        seed: addr(0),
        members: 2
    }));
    net.run(Duration::from_secs(30), Duration::from_millis(100));
    let failed: Vec<_> = net
        .events_of(2)
        .into_iter()
        .filter(|e| matches!(e, Event::JoinFailed { .. }))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}

#[test]
fn leave_is_acknowledged() {
    let mut net = Net::converged(&["a", "b", "c"]);
    let now = net.now;
    net.nodes[0].leave(now);
    net.pump();
    assert!(net.events_of(0).contains(&&Event::LeaveAcknowledged));
    for i in 1..3 {
        assert_eq!(net.nodes[i].member("a").unwrap().state, State::Left);
        assert!(net.events_of(i).contains(&&Event::MemberLeft {
            name: name("a"),
            addr: addr(0)
        }));
    }
}

#[test]
fn leave_waits_for_acks_and_asks_others_when_some_are_down() {
    let mut net = Net::converged(&["a", "b", "c", "d", "e"]);
    net.down[1] = true;
    net.down[2] = true;
    let now = net.now;
    net.nodes[0].leave(now);
    net.run(Duration::from_secs(5), Duration::from_millis(100));
    let acked = net
        .events_of(0)
        .iter()
        .filter(|e| matches!(e, Event::LeaveAcknowledged))
        .count();
    assert_eq!(acked, 1, "{:?}", net.events_of(0));
    assert_eq!(net.nodes[3].member("a").unwrap().state, State::Left);
}

#[test]
fn a_lone_node_acknowledges_its_leave_at_once() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    a.leave(now);
    assert_eq!(events(&mut a), vec![Event::LeaveAcknowledged]);
    assert_eq!(a.member("a").unwrap().state, State::Left);
}
