//! Precedence, generations, dissemination limits, tables and hostile input.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::*;
use crate::{MAX_DATAGRAM, MemberState, PushPull, SharedTable, State};

fn id(n: &str, i: usize, generation: u64) -> Ident {
    Ident::new(name(n), addr(i), generation)
}

fn update(state: State, id: &Ident, incarnation: u64, by: &Ident) -> Update {
    let (id, by) = (id.clone(), by.clone());
    match state {
        State::Alive => Update::Alive { id, incarnation },
        State::Suspect => Update::Suspect { id, incarnation, by },
        State::Dead => Update::Dead { id, incarnation, by },
        State::Left => Update::Left { id, incarnation },
    }
}

/// Tells `g` that `who` died, the usual way: suspected first, then declared dead by `via`.
fn announce_death(g: &mut Gossip, now: std::time::Instant, who: &Ident, via: &Ident) {
    let updates = vec![update(State::Suspect, who, 0, via), update(State::Dead, who, 0, via)];
    g.handle_message(now, via.addr, gossip_msg(via, updates));
}

#[test]
fn precedence_follows_swim_with_generation_first() {
    use State::*;
    // (old, new, wins?) at generation 1, incarnations as given.
    let cases = [
        ((Alive, 1), (Suspect, 1), true),
        ((Alive, 2), (Suspect, 1), false),
        ((Suspect, 1), (Alive, 1), false),
        ((Suspect, 1), (Alive, 2), true),
        ((Alive, 1), (Dead, 1), true),
        ((Suspect, 1), (Dead, 1), true),
        ((Dead, 1), (Alive, 1), false),
        ((Dead, 1), (Alive, 2), true),
        ((Alive, 3), (Dead, 2), false),
        ((Dead, 1), (Left, 1), true),
    ];
    let b0 = id("b", 1, 1);
    let c = id("c", 2, 1);
    for ((old, i), (new, j), wins) in cases {
        let now = t0();
        let mut a = gossip("a", 0, 1, now);
        a.handle_message(
            now,
            c.addr,
            gossip_msg(
                &c,
                vec![Update::Alive {
                    id: b0.clone(),
                    incarnation: 0,
                }],
            ),
        );
        if (old, i) != (Alive, 0) {
            // A death is announced by a suspicion first (an unannounced one is verified).
            let setup = if old == Dead {
                vec![update(Suspect, &b0, i, &c), update(Dead, &b0, i, &c)]
            } else {
                vec![update(old, &b0, i, &c)]
            };
            a.handle_message(now, c.addr, gossip_msg(&c, setup));
        }
        assert_eq!(a.member("b").unwrap().state, old, "setup {old:?}{i}");
        a.handle_message(now, c.addr, gossip_msg(&c, vec![update(new, &b0, j, &c)]));
        // An unannounced death is believed once b stays silent to a's ping for an interval.
        a.handle_timeout(now + GossipConfig::default().probe_interval);
        let expect = if wins { (new, j) } else { (old, i) };
        let got = a.member("b").unwrap();
        assert_eq!((got.state, got.incarnation), expect, "{old:?}{i} then {new:?}{j}");
    }
}

#[test]
fn older_generation_updates_are_ignored() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let c = id("c", 2, 1);
    let (old, new) = (id("b", 1, 1), id("b", 3, 2));
    a.handle_message(
        now,
        c.addr,
        gossip_msg(
            &c,
            vec![Update::Alive {
                id: new.clone(),
                incarnation: 0,
            }],
        ),
    );
    for u in [
        update(State::Dead, &old, 50, &c),
        update(State::Alive, &old, 99, &c),
        update(State::Left, &old, 7, &c),
    ] {
        a.handle_message(now, c.addr, gossip_msg(&c, vec![u]));
    }
    let b = a.member("b").unwrap();
    assert_eq!((b.state, b.generation, b.addr), (State::Alive, 2, new.addr));
}

#[test]
fn a_restarted_member_supersedes_its_old_self_at_once() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let c = id("c", 2, 1);
    let old = id("b", 1, 1);
    a.handle_message(
        now,
        c.addr,
        gossip_msg(
            &c,
            vec![Update::Alive {
                id: old.clone(),
                incarnation: 9,
            }],
        ),
    );
    a.handle_message(now, c.addr, gossip_msg(&c, vec![update(State::Dead, &old, 9, &c)]));
    events(&mut a);
    // The new process starts at incarnation 0, far below the old one's 9.
    let new = id("b", 1, 2);
    a.handle_message(now, new.addr, gossip_msg(&new, vec![]));
    let b = a.member("b").unwrap();
    assert_eq!((b.state, b.generation, b.incarnation), (State::Alive, 2, 0));
    assert!(events(&mut a).contains(&Event::MemberUp {
        name: name("b"),
        addr: new.addr
    }));
}

fn full_state_calling(subject: &Ident, incarnation: u64, state: State, from: &Ident) -> Message {
    Message::PushPull(Box::new(PushPull {
        from: Sender {
            id: from.clone(),
            incarnation: 0,
        },
        join: None,
        is_reply: true,
        members: vec![MemberState {
            id: subject.clone(),
            incarnation,
            state,
        }],
        table: SharedTable(std::sync::Arc::new(table("n0", 1))),
    }))
}

#[test]
fn a_full_states_dead_is_verified_by_a_ping_before_it_is_believed() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let (b, c) = (id("b", 1, 1), id("c", 2, 1));
    a.handle_message(now, b.addr, gossip_msg(&b, vec![]));
    a.handle_message(now, c.addr, gossip_msg(&c, vec![]));
    drain(&mut a);
    a.handle_message(now, c.addr, full_state_calling(&b, 0, State::Dead, &c));
    assert_eq!(a.member("b").unwrap().state, State::Alive, "not believed yet");
    let ping = drain(&mut a).into_iter().find(|t| t.to == b.addr).unwrap();
    let Message::Ping { seq, piggyback, .. } = &ping.msg else {
        panic!("{ping:?}")
    };
    assert!(
        matches!(&piggyback[..], [Update::Suspect { id, .. }] if id.name == b.name),
        "so b can refute"
    );
    // b answers: nothing happens. Asked again and silent: suspected after a probe interval.
    let ack = Message::Ack {
        from: Sender {
            id: b.clone(),
            incarnation: 0,
        },
        seq: *seq,
        piggyback: vec![],
    };
    a.handle_message(now, b.addr, ack);
    let interval = GossipConfig::default().probe_interval;
    a.handle_timeout(now + interval);
    assert_eq!(a.member("b").unwrap().state, State::Alive);
    a.handle_message(now + interval, c.addr, full_state_calling(&b, 0, State::Dead, &c));
    a.handle_timeout(now + interval * 2);
    assert_eq!(
        a.member("b").unwrap().state,
        State::Suspect,
        "a full state's dead is never more"
    );
}

#[test]
fn a_full_state_from_a_member_we_held_dead_cannot_make_us_suspect_others() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let (b, c) = (id("b", 1, 1), id("c", 2, 1));
    a.handle_message(now, b.addr, gossip_msg(&b, vec![]));
    a.handle_message(now, c.addr, gossip_msg(&c, vec![]));
    announce_death(&mut a, now, &c, &b);
    assert_eq!(a.member("c").unwrap().state, State::Dead);
    // c was cut off from us with b; b is alive to it, c is dead to us. c's view of b is stale.
    a.handle_message(now, c.addr, full_state_calling(&b, 0, State::Dead, &c));
    assert_eq!(a.member("b").unwrap().state, State::Alive);
    assert!(
        drain(&mut a)
            .iter()
            .all(|t| t.to != b.addr || !matches!(t.msg, Message::Ping { .. }))
    );
}

#[test]
fn a_full_states_failure_at_a_newer_incarnation_is_suspected_at_once() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let (b, c) = (id("b", 1, 1), id("c", 2, 1));
    a.handle_message(now, b.addr, gossip_msg(&b, vec![]));
    a.handle_message(now, c.addr, full_state_calling(&b, 3, State::Dead, &c));
    assert_eq!(a.member("b").unwrap().state, State::Suspect, "dead is only suspected");
}

#[test]
fn news_of_unknown_members_failing_is_ignored() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let c = id("c", 2, 1);
    let ghost = id("ghost", 9, 1);
    for s in [State::Suspect, State::Dead, State::Left] {
        a.handle_message(now, c.addr, gossip_msg(&c, vec![update(s, &ghost, 0, &c)]));
    }
    assert!(a.member("ghost").is_none());
}

#[test]
fn datagrams_never_exceed_1200_bytes_even_with_a_huge_backlog() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let c = id("c", 2, 1);
    a.handle_message(now, c.addr, gossip_msg(&c, vec![]));
    // 10,000 members with 64-byte names, incarnations of every size, all fresh news.
    let mut rng = SmallRng::seed_from_u64(7);
    for chunk in 0..100 {
        let updates: Vec<Update> = (0..100)
            .map(|i| {
                let n = format!("{:0>64}", chunk * 100 + i);
                let m = Ident::new(name(&n), SocketAddr::from(([10, 1, 2, 3], 65535)), u64::MAX);
                Update::Alive {
                    id: m,
                    incarnation: rng.random(),
                }
            })
            .collect();
        a.handle_message(now, c.addr, gossip_msg(&c, updates));
    }
    a.set_table(now, table("a", 5));
    let mut datagrams = 0;
    for ms in (0..20_000).step_by(7) {
        a.handle_timeout(now + Duration::from_millis(ms));
        for t in drain(&mut a).into_iter().filter(|t| !t.reliable) {
            let len = t.msg.encode().len();
            assert!(len <= MAX_DATAGRAM, "{len} bytes: {:?}", t.msg);
            assert_eq!(len, t.msg.encoded_len());
            datagrams += 1;
        }
    }
    assert!(datagrams > 100, "{datagrams}");
}

#[test]
fn a_new_table_is_sent_at_once_to_every_live_member_and_an_older_one_is_ignored() {
    let mut net = Net::converged(&["a", "b", "c", "d", "e"]);
    let now = net.now;
    net.nodes[0].set_table(now, table("a", 7));
    let pushed: Vec<_> = drain(&mut net.nodes[0])
        .into_iter()
        .filter(|t| {
            t.msg
                .piggyback()
                .iter()
                .any(|u| matches!(u, Update::Table(t) if t.0.version() == 7))
        })
        .collect();
    // Without waiting for a round, on streams (not lost), to each of the four others once.
    let mut to: Vec<_> = pushed.iter().map(|t| t.to).collect();
    to.sort();
    to.dedup();
    assert_eq!((pushed.len(), to.len()), (4, 4), "{pushed:?}");
    assert!(pushed.iter().all(|t| t.reliable));
    assert!(!to.contains(&net.nodes[0].identity().addr));
    net.nodes[0].set_table(now, table("z", 6));
    assert_eq!(net.nodes[0].table().version(), 7);
    assert!(drain(&mut net.nodes[0]).is_empty());
}

#[test]
fn in_a_large_cluster_a_new_table_is_sent_directly_to_table_push_members() {
    use crate::spread::TABLE_PUSH;
    let names: Vec<String> = (0..TABLE_PUSH + 10).map(|i| format!("n{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut net = Net::converged(&names);
    let now = net.now;
    net.nodes[0].set_table(now, table("a", 7));
    let direct = drain(&mut net.nodes[0])
        .into_iter()
        .filter(|t| t.reliable && t.msg.piggyback().iter().any(|u| matches!(u, Update::Table(_))))
        .count();
    assert_eq!(direct, TABLE_PUSH);
}

#[test]
fn a_node_adopting_a_new_table_forwards_it_at_once_unless_hot_rumor_is_off() {
    for fanout in [3, 0] {
        let now = t0();
        let config = GossipConfig {
            hot_rumor_fanout: fanout,
            ..GossipConfig::default()
        };
        let mut nodes: Vec<Gossip> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, n)| Gossip::new(name(n), addr(i), 1, table("n0", 1), config.clone(), i as u64, now))
            .collect();
        let roster = Roster::new(nodes.iter().map(|g| g.identity().clone()));
        for g in &mut nodes {
            g.adopt_roster(now, &roster);
        }
        let e = nodes[4].identity().clone();
        let news = Update::Table(SharedTable(std::sync::Arc::new(table("e", 9))));
        nodes[0].handle_message(now, e.addr, gossip_msg(&e, vec![news]));
        assert_eq!(nodes[0].table().version(), 9);
        assert!(
            events(&mut nodes[0])
                .iter()
                .any(|e| matches!(e, Event::TableChanged(t) if t.version() == 9))
        );
        assert_eq!(drain(&mut nodes[0]).len(), fanout, "hot_rumor_fanout = {fanout}");
    }
}

#[test]
fn a_table_too_big_for_a_datagram_goes_on_a_stream() {
    let mut net = Net::converged(&["a", "b", "c"]);
    let now = net.now;
    // 200 entries naming 64-byte nodes: far beyond 1200 bytes.
    let entries = (0..200u8).map(|b| (b, b, format!("{:0>64}", b))).collect();
    let big = SimTable::new(3, "a", entries).unwrap();
    net.nodes[0].set_table(now, big);
    net.pump();
    for i in 1..3 {
        assert_eq!(net.nodes[i].table().version(), 3);
    }
    assert!(
        net.sent
            .iter()
            .all(|(_, t)| t.reliable || t.msg.encoded_len() <= MAX_DATAGRAM)
    );
}

#[test]
fn dead_members_are_forgotten_after_retention() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let (b, c) = (id("b", 1, 1), id("c", 2, 1));
    a.handle_message(now, b.addr, gossip_msg(&b, vec![]));
    announce_death(&mut a, now, &b, &c);
    let retention = GossipConfig::default().dead_retention;
    a.handle_timeout(now + retention - Duration::from_secs(1));
    assert!(a.member("b").is_some());
    a.handle_timeout(now + retention);
    assert!(a.member("b").is_none());
    assert_eq!(a.members().count(), 2, "a and c");
}

#[test]
fn name_conflict_is_reported_when_a_live_process_claims_our_name() {
    let now = t0();
    let mut a = gossip("a", 0, 5, now);
    let twin = id("a", 7, 9);
    a.handle_message(now, twin.addr, gossip_msg(&twin, vec![]));
    a.handle_message(now, twin.addr, gossip_msg(&twin, vec![]));
    let evs = events(&mut a);
    assert_eq!(
        evs,
        vec![Event::NameConflict {
            name: name("a"),
            other: twin.addr,
            newer: true,
        }],
        "reported once, and the newer start wins"
    );
    // An older process still claiming our name: it is the one to stop.
    let stale = id("a", 8, 2);
    a.handle_message(now, stale.addr, gossip_msg(&stale, vec![]));
    assert_eq!(
        events(&mut a),
        vec![Event::NameConflict {
            name: name("a"),
            other: stale.addr,
            newer: false,
        }]
    );
    // Our previous life gossiped by others is no conflict.
    let c = id("c", 2, 1);
    let old_me = id("a", 0, 4);
    a.handle_message(now, c.addr, gossip_msg(&c, vec![update(State::Alive, &old_me, 3, &c)]));
    assert!(!events(&mut a).iter().any(|e| matches!(e, Event::NameConflict { .. })));
    assert_eq!(a.member("a").unwrap().generation, 5);
}

#[test]
fn an_earlier_process_of_a_replaced_name_is_told_of_the_newer_at_once() {
    let now = t0();
    let mut c = gossip("c", 0, 1, now);
    // b was cut off long enough to be replaced: c knows the new b (generation 5, at 2).
    let (newer, earlier) = (id("b", 2, 5), id("b", 1, 3));
    c.handle_message(now, newer.addr, gossip_msg(&newer, vec![]));
    drain(&mut c);
    // The earlier b comes back and talks to c: c tells it, and only it, of the newer b.
    c.handle_message(now, earlier.addr, gossip_msg(&earlier, vec![]));
    let told: Vec<Transmit> = drain(&mut c).into_iter().filter(|t| t.to == earlier.addr).collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(
        told[0]
            .msg
            .piggyback()
            .iter()
            .any(|u| *u == update(State::Alive, &newer, 0, &newer)),
        "{told:?}"
    );
    assert_eq!(
        c.member("b").unwrap().generation,
        5,
        "the earlier process does not revive"
    );
    // Once in a probe interval, however often it talks.
    c.handle_message(now, earlier.addr, gossip_msg(&earlier, vec![]));
    assert!(drain(&mut c).iter().all(|t| t.to != earlier.addr));
    // The earlier b, hearing it, learns it lost the name: the driver stops it.
    let mut b = gossip("b", 1, 3, now);
    b.handle_message(now, addr(0), told[0].msg.clone());
    assert!(events(&mut b).contains(&Event::NameConflict {
        name: name("b"),
        other: newer.addr,
        newer: true,
    }));
}

#[test]
fn hostile_input_never_panics() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let me = a.identity().clone();
    let x = id("x", 3, u64::MAX);
    let from = Sender {
        id: x.clone(),
        incarnation: u64::MAX,
    };
    let absurd = vec![
        update(State::Suspect, &me, u64::MAX, &x),
        update(State::Dead, &me, u64::MAX - 1, &x),
        update(State::Alive, &x, u64::MAX, &x),
        update(State::Dead, &x, u64::MAX, &x),
    ];
    a.handle_message(now, x.addr, gossip_msg(&x, absurd));
    assert_eq!(
        a.member("a").unwrap().state,
        State::Alive,
        "implausible claims about us are ignored"
    );
    assert!(a.member("a").unwrap().incarnation < u64::MAX / 2);
    for seq in [0, 1, u32::MAX] {
        a.handle_message(
            now,
            x.addr,
            Message::Ack {
                from: from.clone(),
                seq,
                piggyback: vec![],
            },
        );
        a.handle_message(
            now,
            x.addr,
            Message::Nack {
                from: from.clone(),
                seq,
                piggyback: vec![],
            },
        );
        let refused = Message::JoinRefused {
            from: from.clone(),
            token: seq,
            reason: "x".repeat(10_000),
        };
        a.handle_message(now, x.addr, refused);
        a.handle_message(
            now,
            x.addr,
            Message::Leave {
                from: from.clone(),
                seq,
            },
        );
    }
    for seq in 0..5_000 {
        let req = Message::PingReq {
            from: from.clone(),
            seq,
            target: x.clone(),
            piggyback: vec![],
        };
        a.handle_message(now, x.addr, req);
    }
    a.handle_timeout(now + Duration::from_secs(5));
    drain(&mut a);
    // Messages from senders we never heard of are fine too.
    let stranger = id("stranger", 8, 1);
    a.handle_message(now, stranger.addr, gossip_msg(&stranger, vec![]));
    assert_eq!(a.member("stranger").unwrap().state, State::Alive);
}

#[test]
fn a_member_we_hold_dead_is_told_when_it_talks_to_us() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let (b, c) = (id("b", 1, 1), id("c", 2, 1));
    a.handle_message(now, b.addr, gossip_msg(&b, vec![]));
    announce_death(&mut a, now, &b, &c);
    drain(&mut a);
    // b does not know: it gossips as if nothing happened.
    a.handle_message(now, b.addr, gossip_msg(&b, vec![]));
    let told = drain(&mut a);
    assert!(
        told.iter()
            .any(|t| t.to == b.addr && matches!(t.msg.piggyback(), [Update::Dead { id, .. }] if id.name == b.name)),
        "{told:?}"
    );
    a.handle_message(now, b.addr, gossip_msg(&b, vec![]));
    assert!(drain(&mut a).iter().all(|t| t.to != b.addr), "once per probe interval");
}

#[test]
fn whoever_passes_on_a_stale_failure_is_corrected() {
    let now = t0();
    let mut a = gossip("a", 0, 1, now);
    let (b, c) = (id("b", 1, 1), id("c", 2, 1));
    a.handle_message(
        now,
        c.addr,
        Message::Gossip {
            from: Sender {
                id: c.clone(),
                incarnation: 2,
            },
            piggyback: vec![],
        },
    );
    drain(&mut a);
    // b missed c's refutation to incarnation 2 and passes on a suspicion at 1.
    a.handle_message(now, b.addr, gossip_msg(&b, vec![update(State::Suspect, &c, 1, &b)]));
    assert_eq!(a.member("c").unwrap().state, State::Alive);
    let sent = drain(&mut a);
    assert!(
        sent.iter().any(|t| t.to == b.addr
            && t.msg.piggyback()
                == [Update::Alive {
                    id: c.clone(),
                    incarnation: 2
                }]),
        "{sent:?}"
    );
}

#[test]
fn a_member_wrongly_held_dead_comes_back_through_reconnect_pings() {
    let mut net = Net::converged(&["a", "b", "c"]);
    let now = net.now;
    let (b, c) = (net.nodes[1].identity().clone(), net.nodes[2].identity().clone());
    // Only a believes b dead (say it missed b's refutation); b and c see everyone alive.
    announce_death(&mut net.nodes[0], now, &b, &c);
    assert_eq!(net.nodes[0].member("b").unwrap().state, State::Dead);
    net.run(
        GossipConfig::default().reconnect_interval * 2,
        Duration::from_millis(50),
    );
    let seen = net.nodes[0].member("b").unwrap();
    assert_eq!(seen.state, State::Alive);
    assert!(seen.incarnation >= 1, "b refuted");
}

#[test]
fn a_death_we_never_saw_suspected_is_verified_before_it_is_believed() {
    for b_answers in [true, false] {
        let now = t0();
        let mut a = gossip("a", 0, 1, now);
        let (b, c) = (id("b", 1, 1), id("c", 2, 1));
        a.handle_message(now, b.addr, gossip_msg(&b, vec![]));
        drain(&mut a);
        // Say c was on the other side of a partition and declared b dead there.
        a.handle_message(now, c.addr, gossip_msg(&c, vec![update(State::Dead, &b, 0, &c)]));
        assert_eq!(a.member("b").unwrap().state, State::Alive);
        let ping = drain(&mut a).into_iter().find(|t| t.to == b.addr).unwrap();
        let Message::Ping { seq, piggyback, .. } = ping.msg else {
            panic!()
        };
        assert!(
            matches!(&piggyback[..], [Update::Suspect { .. }]),
            "b learns of it and can refute"
        );
        if b_answers {
            let ack = Message::Ack {
                from: Sender {
                    id: b.clone(),
                    incarnation: 1,
                },
                seq,
                piggyback: vec![],
            };
            a.handle_message(now, b.addr, ack);
        }
        a.handle_timeout(now + GossipConfig::default().probe_interval);
        let expect = if b_answers { State::Alive } else { State::Dead };
        assert_eq!(a.member("b").unwrap().state, expect, "b answers: {b_answers}");
    }
}
