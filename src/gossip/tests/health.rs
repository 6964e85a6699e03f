//! Local health and verdicts (health.rs): in poor health no member is buried by this node's
//! own hand until Lifeguard's longest stretch of a timeout has passed.

use std::time::{Duration, Instant};

use super::*;
use crate::{State, Update};

/// The highest local-health score (Lifeguard's awareness).
const POOREST: u32 = 7; // awareness_max_multiplier (8) - 1, the default

fn id(n: &str, i: usize) -> Ident {
    Ident::new(name(n), addr(i), 1)
}

/// The longest suspicion in a cluster of `n` (no confirmations).
fn longest_suspicion(n: usize) -> Duration {
    let g = GossipConfig::default();
    g.probe_interval
        .mul_f64(f64::from(g.suspicion_mult) * (n as f64).log10().max(1.0))
        * g.suspicion_max_mult
}

/// `a`, knowing `others` alive (as their own messages said).
fn node_knowing(others: &[&Ident], now: Instant) -> Gossip {
    let mut a = gossip("a", 0, 1, now);
    for o in others {
        a.handle_message(now, o.addr, gossip_msg(o, vec![]));
    }
    drain(&mut a);
    events(&mut a);
    a
}

/// Runs `a`'s timers from `from` to `to` in 50 ms steps. `c` answers every ping sent to it
/// (it is on our side of the cut); nothing else answers, nobody nacks. `awareness`, if
/// given, holds the local-health score there: at its maximum as in a small group cut off
/// from a large cluster (whose probes and helpers are nearly all across the cut), at zero
/// as in a node whose helpers nack. Returns when `a` first marked `b` dead, if it did.
/// `a`, at local-health `awareness`, suspects b from `now`.
fn suspect_b(a: &mut Gossip, now: Instant, awareness: u32) {
    a.awareness = awareness;
    let slot = a.members.find("b").unwrap();
    a.suspect(now, slot);
}

fn run(a: &mut Gossip, c: &Ident, from: Instant, to: Instant, awareness: Option<u32>) -> Option<Instant> {
    let mut dead = None;
    let mut now = from;
    while now < to {
        now += Duration::from_millis(50);
        if let Some(score) = awareness {
            a.awareness = score;
        }
        a.handle_timeout(now);
        for t in drain(a) {
            if let (true, Message::Ping { seq, .. }) = (t.to == c.addr, &t.msg) {
                let from = Sender {
                    id: c.clone(),
                    incarnation: 0,
                };
                let ack = Message::Ack {
                    from,
                    seq: *seq,
                    piggyback: vec![],
                };
                a.handle_message(now, c.addr, ack);
            }
        }
        let died = events(a)
            .iter()
            .any(|e| matches!(e, Event::MemberDead { name, .. } if name.as_str() == "b"));
        if died && dead.is_none() {
            dead = Some(now);
        }
    }
    dead
}

#[test]
fn in_poor_health_a_suspicion_that_runs_out_unanswered_is_held_and_the_member_is_alive_once_heard() {
    let now = t0();
    let (b, c) = (id("b", 1), id("c", 2));
    let mut a = node_knowing(&[&b, &c], now);
    suspect_b(&mut a, now, POOREST);
    // Twice the longest suspicion: it ran out, its last check (a datagram and a stream)
    // went unanswered, and it started again. Before, b was dead 0.3 s after it ran out:
    // the check had been sent into a cut that healed a moment later.
    let end = now + 2 * longest_suspicion(3);
    assert_eq!(
        run(&mut a, &c, now, end, Some(POOREST)),
        None,
        "b was buried in poor health"
    );
    assert_eq!(a.member("b").unwrap().state, State::Suspect);
    assert_eq!(a.member("c").unwrap().state, State::Alive);
    // The cut heals: b's own message at the same incarnation makes it alive, no refutation.
    a.handle_message(end, b.addr, gossip_msg(&b, vec![]));
    assert_eq!(a.member("b").unwrap().state, State::Alive);
    assert_eq!(a.member("b").unwrap().incarnation, 0);
}

#[test]
fn in_poor_health_a_silent_member_is_buried_after_the_longest_stretch_of_its_suspicion() {
    let now = t0();
    let (b, c) = (id("b", 1), id("c", 2));
    let mut a = node_knowing(&[&b, &c], now);
    suspect_b(&mut a, now, POOREST);
    let longest = longest_suspicion(3);
    let stretch = longest * (GossipConfig::default().awareness_max_multiplier - 1);
    let dead = run(&mut a, &c, now, now + longest + stretch + 2 * longest, Some(POOREST));
    let after = dead.map(|t| t - now);
    // Held from the first time its suspicion ran out, for `stretch`; then one more
    // suspicion and its check at most.
    assert!(
        after.is_some_and(|t| t >= longest + stretch && t <= 2 * longest + stretch + Duration::from_secs(1)),
        "b was buried after {after:?} (longest suspicion {longest:?})"
    );
}

#[test]
fn in_good_health_a_silent_member_is_buried_when_its_suspicion_runs_out() {
    let now = t0();
    let (b, c) = (id("b", 1), id("c", 2));
    let mut a = node_knowing(&[&b, &c], now);
    suspect_b(&mut a, now, 0);
    let dead = run(&mut a, &c, now, now + 2 * longest_suspicion(3), Some(0)).map(|t| t - now);
    assert!(
        dead.is_some_and(|t| t <= longest_suspicion(3) + Duration::from_secs(1)),
        "{dead:?}"
    );
}

/// In a cluster of two, the other's death and our own isolation look the same, and our
/// probes have no helpers to nack: the survivor must still bury the dead one promptly.
#[test]
fn a_node_that_holds_no_one_else_alive_buries_a_silent_member_as_before() {
    let now = t0();
    let b = id("b", 1);
    let mut a = node_knowing(&[&b], now);
    let nobody = id("nobody", 9);
    let dead = run(&mut a, &nobody, now, now + Duration::from_secs(10), None).map(|t| t - now);
    assert!(a.awareness > 0, "its probes failed without helpers");
    assert!(dead.is_some_and(|t| t <= Duration::from_secs(3)), "{dead:?}");
}

#[test]
fn in_poor_health_a_death_heard_from_another_and_unconfirmed_is_only_a_suspicion() {
    let now = t0();
    let (b, c) = (id("b", 1), id("c", 2));
    let mut a = node_knowing(&[&b, &c], now);
    a.awareness = POOREST;
    let dead = Update::Dead {
        id: b.clone(),
        incarnation: 0,
        by: c.clone(),
    };
    a.handle_message(now, c.addr, gossip_msg(&c, vec![dead]));
    assert_eq!(a.member("b").unwrap().state, State::Alive, "checked first");
    drain(&mut a);
    a.handle_timeout(now + GossipConfig::default().probe_interval);
    assert_eq!(a.member("b").unwrap().state, State::Suspect);
    assert!(!events(&mut a).iter().any(|e| matches!(e, Event::MemberDead { .. })));
}

/// A cut-off node may hear of its suspicion, refute it and never hear of its death: its
/// tentative verdicts are withdrawn all the same. In good health nothing is withdrawn.
#[test]
fn told_of_its_own_suspicion_in_poor_health_a_node_withdraws_its_tentative_verdicts() {
    for poor in [true, false] {
        let now = t0();
        let (b, c) = (id("b", 1), id("c", 2));
        let mut a = node_knowing(&[&b, &c], now);
        suspect_b(&mut a, now, POOREST);
        assert_eq!(a.member("b").unwrap().state, State::Suspect);
        if !poor {
            a.awareness = 0;
        }
        let me = a.identity().clone();
        let suspicion = Update::Suspect {
            id: me,
            incarnation: 0,
            by: c.clone(),
        };
        a.handle_message(now, c.addr, gossip_msg(&c, vec![suspicion]));
        let ev = events(&mut a);
        assert!(ev.iter().any(|e| matches!(e, Event::Refuted { .. })), "{ev:?}");
        let expect = if poor { State::Alive } else { State::Suspect };
        assert_eq!(a.member("b").unwrap().state, expect, "in poor health: {poor}");
    }
}

/// A cut-off node that refuted a suspicion on its side of the cut comes back at a higher
/// incarnation, which overrides the majority's "dead" without a word: the majority member
/// it talks to tells it all the same, and it withdraws its tentative verdicts on hearing it.
#[test]
fn a_member_held_dead_that_comes_back_at_a_higher_incarnation_is_told_it_was_dead() {
    let now = t0();
    let (x, c) = (id("x", 1), id("c", 2));
    let mut z = node_knowing(&[&x, &c], now);
    let dead = Update::Dead {
        id: x.clone(),
        incarnation: 0,
        by: c.clone(),
    };
    z.handle_message(now, c.addr, gossip_msg(&c, vec![dead]));
    let later = now + GossipConfig::default().probe_interval;
    z.handle_timeout(later);
    assert_eq!(z.member("x").unwrap().state, State::Dead);
    drain(&mut z);
    let back = Message::Gossip {
        from: Sender {
            id: x.clone(),
            incarnation: 1,
        },
        piggyback: vec![],
    };
    z.handle_message(later, x.addr, back);
    assert_eq!(z.member("x").unwrap().state, State::Alive);
    let told = drain(&mut z).into_iter().any(|t| {
        t.to == x.addr
            && matches!(&t.msg, Message::Gossip { piggyback, .. }
                if matches!(&piggyback[..], [Update::Dead { incarnation: 0, .. }]))
    });
    assert!(told, "x was not told it had been declared dead");
}

#[test]
fn declared_dead_at_an_incarnation_it_left_behind_a_node_in_poor_health_withdraws_its_tentative_verdicts() {
    for poor in [true, false] {
        let now = t0();
        let (b, c) = (id("b", 1), id("c", 2));
        let mut a = node_knowing(&[&b, &c], now);
        let me = a.identity().clone();
        // A suspicion on its own side of the cut, refuted: incarnation 1.
        let suspicion = Update::Suspect {
            id: me.clone(),
            incarnation: 0,
            by: c.clone(),
        };
        a.handle_message(now, c.addr, gossip_msg(&c, vec![suspicion]));
        assert_eq!(a.member("a").unwrap().incarnation, 1);
        suspect_b(&mut a, now, POOREST);
        if !poor {
            a.awareness = 0;
        }
        let dead = Update::Dead {
            id: me,
            incarnation: 0,
            by: c.clone(),
        };
        a.handle_message(now, c.addr, gossip_msg(&c, vec![dead]));
        let expect = if poor { State::Alive } else { State::Suspect };
        assert_eq!(a.member("b").unwrap().state, expect, "in poor health: {poor}");
    }
}
