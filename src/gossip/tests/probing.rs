//! SWIM probing, indirect probes, suspicion and refutation.

use std::time::{Duration, Instant};

use super::*;
use crate::State;

/// Fires `g`'s timers every millisecond until it sends something `want` accepts.
fn run_until_sent(
    g: &mut Gossip,
    mut now: Instant,
    want: impl Fn(&Transmit) -> bool,
) -> (Instant, Transmit, Vec<Transmit>) {
    for _ in 0..100_000 {
        now += Duration::from_millis(1);
        g.handle_timeout(now);
        let sent = drain(g);
        if let Some(t) = sent.iter().find(|t| want(t)).cloned() {
            return (now, t, sent);
        }
    }
    panic!("nothing matching was sent");
}

fn is_ping(t: &Transmit) -> bool {
    matches!(t.msg, Message::Ping { .. })
}

#[test]
fn probe_without_ack_asks_k_members_to_ping_indirectly() {
    let mut net = Net::converged(&["a", "b", "c", "d", "e"]);
    let start = net.now;
    let a = &mut net.nodes[0];
    let (sent_at, ping, _) = run_until_sent(a, start, is_ping);
    let Message::Ping {
        seq,
        target,
        reply_reliably: false,
        ..
    } = ping.msg
    else {
        panic!("{ping:?}")
    };
    assert!(!ping.reliable);
    assert_eq!(ping.to, target.addr);

    let config = GossipConfig::default();
    a.handle_timeout(sent_at + config.probe_timeout - Duration::from_millis(1));
    assert!(
        drain(a).iter().all(|t| !matches!(t.msg, Message::PingReq { .. })),
        "too early"
    );

    a.handle_timeout(sent_at + config.probe_timeout);
    let sent = drain(a);
    let reqs: Vec<_> = sent
        .iter()
        .filter(|t| matches!(t.msg, Message::PingReq { .. }))
        .collect();
    assert_eq!(reqs.len(), config.indirect_checks);
    let mut helpers: Vec<_> = reqs.iter().map(|t| t.to).collect();
    helpers.sort();
    helpers.dedup();
    assert_eq!(helpers.len(), config.indirect_checks, "distinct helpers");
    for req in &reqs {
        let Message::PingReq { seq: s, target: t, .. } = &req.msg else {
            unreachable!()
        };
        assert_eq!((*s, &t.name), (seq, &target.name));
        assert!(req.to != target.addr && req.to != addr(0));
    }
    // memberlist's TCP fallback: the same probe on a stream.
    assert!(sent.iter().any(|t| t.reliable
        && t.to == target.addr
        && matches!(t.msg, Message::Ping { reply_reliably: true, seq: s, .. } if s == seq)));

    // Nobody answered by the end of the probe interval: suspect.
    a.handle_timeout(sent_at + config.probe_interval);
    assert_eq!(a.member(target.name.as_str()).unwrap().state, State::Suspect);
    assert!(events(a).contains(&Event::MemberSuspect {
        name: target.name.clone(),
        addr: target.addr
    }));
}

#[test]
fn an_ack_relayed_by_a_helper_counts_as_a_successful_probe() {
    let mut net = Net::converged(&["a", "b", "c", "d", "e"]);
    let start = net.now;
    let (sent_at, ping, _) = run_until_sent(&mut net.nodes[0], start, is_ping);
    let Message::Ping { seq, target, .. } = ping.msg else {
        unreachable!()
    };
    let config = GossipConfig::default();
    net.nodes[0].handle_timeout(sent_at + config.probe_timeout);
    let helper = drain(&mut net.nodes[0])
        .into_iter()
        .find(|t| matches!(t.msg, Message::PingReq { .. }))
        .unwrap();
    let h = net.index(helper.to).unwrap();
    let helper_id = net.nodes[h].identity().clone();
    let relayed = Message::Ack {
        from: Sender {
            id: helper_id,
            incarnation: 0,
        },
        seq,
        piggyback: vec![],
    };
    net.nodes[0].handle_message(sent_at + config.probe_timeout, helper.to, relayed);
    net.nodes[0].handle_timeout(sent_at + config.probe_interval);
    assert_eq!(net.nodes[0].member(target.name.as_str()).unwrap().state, State::Alive);
}

#[test]
fn a_helper_relays_the_targets_ack_and_nacks_when_it_stays_silent() {
    let mut net = Net::converged(&["a", "b", "c"]);
    let now = net.now;
    let (a, c) = (net.nodes[0].identity().clone(), net.nodes[2].identity().clone());
    let b = &mut net.nodes[1];
    let req = |seq| Message::PingReq {
        from: Sender {
            id: a.clone(),
            incarnation: 0,
        },
        seq,
        target: c.clone(),
        piggyback: vec![],
    };
    b.handle_message(now, a.addr, req(77));
    let ping = drain(b).into_iter().find(is_ping).unwrap();
    assert_eq!(ping.to, c.addr);
    let Message::Ping { seq: ours, .. } = ping.msg else {
        unreachable!()
    };
    let ack = Message::Ack {
        from: Sender {
            id: c.clone(),
            incarnation: 0,
        },
        seq: ours,
        piggyback: vec![],
    };
    b.handle_message(now, c.addr, ack);
    let relayed = drain(b);
    assert!(
        relayed
            .iter()
            .any(|t| t.to == a.addr && matches!(t.msg, Message::Ack { seq: 77, .. }))
    );

    b.handle_message(now, a.addr, req(78));
    drain(b);
    b.handle_timeout(now + GossipConfig::default().probe_timeout);
    assert!(
        drain(b)
            .iter()
            .any(|t| t.to == a.addr && matches!(t.msg, Message::Nack { seq: 78, .. }))
    );
}

#[test]
fn a_ping_for_another_name_is_not_acked() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let b = Ident::new(name("b"), addr(1), 1);
    let ghost = Ident::new(name("ghost"), addr(0), 1);
    let ping = |target: &Ident| Message::Ping {
        from: Sender {
            id: b.clone(),
            incarnation: 0,
        },
        seq: 5,
        target: target.clone(),
        reply_reliably: false,
        piggyback: vec![],
    };
    a.handle_message(now, b.addr, ping(&ghost));
    assert!(drain(&mut a).iter().all(|t| !matches!(t.msg, Message::Ack { .. })));
    a.handle_message(now, b.addr, ping(&a.identity().clone()));
    assert!(
        drain(&mut a)
            .iter()
            .any(|t| matches!(t.msg, Message::Ack { seq: 5, .. }))
    );
}

#[test]
fn suspected_member_refutes_by_raising_its_incarnation() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let me = a.identity().clone();
    let b = Ident::new(name("b"), addr(1), 1);
    let suspect = Update::Suspect {
        id: me.clone(),
        incarnation: 0,
        by: b.clone(),
    };
    a.handle_message(now, b.addr, gossip_msg(&b, vec![suspect]));
    assert_eq!(a.member("a").unwrap().incarnation, 1);
    assert_eq!(a.member("a").unwrap().state, State::Alive);
    // Said, so that the node's log has its side of the others' "member suspect".
    assert!(events(&mut a).contains(&Event::Refuted {
        said: State::Suspect,
        incarnation: 1
    }));
    // The refutation is gossiped at the next round.
    a.handle_timeout(now + Duration::from_secs(1));
    let sent = drain(&mut a);
    assert!(
        sent.iter().flat_map(|t| t.msg.piggyback()).any(|u| *u
            == Update::Alive {
                id: me.clone(),
                incarnation: 1
            }),
        "{sent:?}"
    );
    // A stale suspicion (older incarnation) needs no refutation.
    let stale = Update::Dead {
        id: me,
        incarnation: 0,
        by: b.clone(),
    };
    a.handle_message(now, b.addr, gossip_msg(&b, vec![stale]));
    assert_eq!(a.member("a").unwrap().incarnation, 1);
}

#[test]
fn a_suspect_hears_of_its_suspicion_in_the_probe_itself() {
    let mut net = Net::converged(&["a", "b"]);
    let now = net.now;
    let b = net.nodes[1].identity().clone();
    let a_id = net.nodes[0].identity().clone();
    let suspect = Update::Suspect {
        id: b.clone(),
        incarnation: 0,
        by: a_id.clone(),
    };
    // Someone else's suspicion reaches a; a's next probe of b carries it (Lifeguard's buddy).
    net.nodes[0].handle_message(
        now,
        a_id.addr,
        gossip_msg(&Ident::new(name("c"), addr(9), 1), vec![suspect]),
    );
    drain(&mut net.nodes[0]);
    let (_, ping, _) = run_until_sent(&mut net.nodes[0], now, |t| is_ping(t) && t.to == b.addr);
    assert!(matches!(ping.msg.piggyback().first(), Some(Update::Suspect { id, .. }) if id.name == b.name));
}

#[test]
fn a_killed_member_is_declared_dead_by_everyone_and_nobody_else_is() {
    let mut net = Net::converged(&["a", "b", "c", "d", "e", "f"]);
    net.down[3] = true;
    net.run(Duration::from_secs(40), Duration::from_millis(50));
    for i in [0, 1, 2, 4, 5] {
        let evs = net.events_of(i);
        assert!(
            evs.iter()
                .any(|e| matches!(e, Event::MemberDead { name, .. } if name.as_str() == "d")),
            "{i}: {evs:?}"
        );
        assert!(
            !evs.iter()
                .any(|e| matches!(e, Event::MemberDead { name, .. } if name.as_str() != "d")),
            "{i}: {evs:?}"
        );
        assert_eq!(net.nodes[i].member("d").unwrap().state, State::Dead);
    }
}

#[test]
fn independent_suspicions_declare_a_member_dead_sooner() {
    let config = GossipConfig::default();
    let names = ["a", "b", "c", "d", "e", "f"];
    let mut net = Net::converged(&names);
    let now = net.now;
    let ids: Vec<Ident> = net.nodes.iter().map(|g| g.identity().clone()).collect();
    let x = ids[4].clone();
    let suspect_by = |by: &Ident| Update::Suspect {
        id: x.clone(),
        incarnation: 0,
        by: by.clone(),
    };
    // Node a hears one suspicion; node b hears it confirmed by three other members.
    net.nodes[0].handle_message(now, ids[1].addr, gossip_msg(&ids[1], vec![suspect_by(&ids[1])]));
    for by in [&ids[0], &ids[2], &ids[3], &ids[5]] {
        net.nodes[1].handle_message(now, by.addr, gossip_msg(by, vec![suspect_by(by)]));
    }
    // Six members: min = suspicion_mult * probe_interval (log10(6) < 1), K = 3.
    let min = config.probe_interval * config.suspicion_mult;
    let at = now + min + Duration::from_millis(1);
    for i in 0..2 {
        net.nodes[i].handle_timeout(at);
    }
    assert_eq!(net.nodes[1].member("e").unwrap().state, State::Dead, "confirmed: min");
    assert_eq!(
        net.nodes[0].member("e").unwrap().state,
        State::Suspect,
        "unconfirmed: longer"
    );
    let max = min * config.suspicion_max_mult;
    net.nodes[0].handle_timeout(now + max + Duration::from_millis(1));
    assert_eq!(net.nodes[0].member("e").unwrap().state, State::Dead);
}
