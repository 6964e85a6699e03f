//! Random, structurally valid but semantically arbitrary input: no panic, timers keep moving.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::*;
use crate::{MAX_DATAGRAM, MemberState, PushPull, SharedTable, State};

fn pick<T: Clone>(rng: &mut SmallRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())].clone()
}

fn random_message(rng: &mut SmallRng, ids: &[Ident]) -> Message {
    let incarnations = [0, 1, 2, 7, u64::MAX / 2 - 1, u64::MAX / 2, u64::MAX];
    let from = Sender {
        id: pick(rng, ids),
        incarnation: pick(rng, &incarnations),
    };
    let seq = if rng.random_bool(0.5) {
        rng.random_range(0..8)
    } else {
        rng.random()
    };
    let states = [State::Alive, State::Suspect, State::Dead, State::Left];
    let update = |rng: &mut SmallRng| {
        let (id, incarnation, by) = (pick(rng, ids), pick(rng, &incarnations), pick(rng, ids));
        match rng.random_range(0..5) {
            0 => Update::Alive { id, incarnation },
            1 => Update::Suspect { id, incarnation, by },
            2 => Update::Dead { id, incarnation, by },
            3 => Update::Left { id, incarnation },
            _ => Update::Table(SharedTable(Arc::new(table("n0", rng.random_range(0..4))))),
        }
    };
    let piggyback: Vec<Update> = (0..rng.random_range(0..30)).map(|_| update(rng)).collect();
    match rng.random_range(0..8) {
        0 => Message::Ping {
            from,
            seq,
            target: pick(rng, ids),
            reply_reliably: rng.random(),
            piggyback,
        },
        1 => Message::Ack { from, seq, piggyback },
        2 => Message::Nack { from, seq, piggyback },
        3 => Message::PingReq {
            from,
            seq,
            target: pick(rng, ids),
            piggyback,
        },
        4 => Message::Gossip { from, piggyback },
        5 => Message::PushPull(Box::new(PushPull {
            from,
            join: rng.random_bool(0.3).then_some(seq),
            is_reply: rng.random(),
            members: (0..rng.random_range(0..20))
                .map(|_| MemberState {
                    id: pick(rng, ids),
                    incarnation: pick(rng, &incarnations),
                    state: pick(rng, &states),
                })
                .collect(),
            table: SharedTable(Arc::new(table("n0", rng.random_range(0..4)))),
        })),
        6 => Message::JoinRefused {
            from,
            token: seq,
            reason: "no".into(),
        },
        _ => Message::Leave { from, seq },
    }
}

#[test]
fn random_input_never_panics_and_timers_always_advance() {
    for seed in 0..8 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut now = t0();
        let mut a = gossip("a", 0, 5, now);
        // Names include ours (older, same and newer generations) and a few others.
        let mut ids = vec![a.identity().clone()];
        for g in [4, 5, 6] {
            ids.push(Ident::new(name("a"), addr(9), g));
        }
        for (i, n) in ["b", "c", "d", "e"].iter().enumerate() {
            for g in [1, 2] {
                ids.push(Ident::new(name(n), addr(i + 1), g));
            }
        }
        if seed % 2 == 0 {
            a.join(now, addr(1));
        }
        for step in 0..3_000 {
            let msg = random_message(&mut rng, &ids);
            a.handle_message(now, addr(1), msg);
            if step % 5 == 0 {
                now += Duration::from_millis(rng.random_range(0..400));
                a.handle_timeout(now);
                assert!(a.poll_timeout().is_some_and(|t| t > now), "seed {seed} step {step}");
            }
            if step == 2_000 && seed % 3 == 0 {
                a.leave(now);
            }
            for t in drain(&mut a) {
                assert!(t.reliable || t.msg.encoded_len() <= MAX_DATAGRAM);
            }
            events(&mut a);
        }
        let me = a.member("a").unwrap();
        assert_eq!(me.generation, 5, "nobody can take our record over");
        assert!(
            me.incarnation <= u64::MAX / 2,
            "refutation stops at the implausible bound"
        );
    }
}
