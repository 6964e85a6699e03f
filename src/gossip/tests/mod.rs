//! Unit tests of the core, named as sentences (foca's style), each with a seeded RNG.
//!
//! `Net` moves messages between a few `Gossip`s instantly at one virtual instant, so a test
//! can step time and look at exactly what each node sent and emitted.

mod fuzz;
mod health;
mod joining;
mod membership;
mod probing;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{GossipConfig, Ident, Roster, Sender};
use crate::name::NodeName;
use crate::sim::SimTable;
use crate::table::Table;

/// The core and its types as the tests run them: spreading a [`SimTable`].
type Gossip = crate::Gossip<SimTable>;
type Event = crate::Event<SimTable>;
type Message = crate::Message<SimTable>;
type Transmit = crate::Transmit<SimTable>;
type Update = crate::Update<SimTable>;

/// The one clock reading the tests take: every time after it is this plus a Duration, and
/// nothing depends on its value.
fn t0() -> Instant {
    Instant::now()
}

fn name(n: &str) -> NodeName {
    NodeName::new(n).unwrap()
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000 + i as u16))
}

fn table(owner: &str, version: u64) -> SimTable {
    SimTable::owned_by(owner, version)
}

fn gossip(n: &str, i: usize, generation: u64, now: Instant) -> Gossip {
    Gossip::new(
        name(n),
        addr(i),
        generation,
        table("n0", 1),
        GossipConfig::default(),
        42 + i as u64,
        now,
    )
}

/// A message from `id` at incarnation 0 carrying `updates`.
fn gossip_msg(id: &Ident, updates: Vec<Update>) -> Message {
    Message::Gossip {
        from: Sender {
            id: id.clone(),
            incarnation: 0,
        },
        piggyback: updates,
    }
}

fn drain(g: &mut Gossip) -> Vec<Transmit> {
    std::iter::from_fn(|| g.poll_transmit()).collect()
}

fn events(g: &mut Gossip) -> Vec<Event> {
    std::iter::from_fn(|| g.poll_event()).collect()
}

struct Net {
    nodes: Vec<Gossip>,
    down: Vec<bool>,
    now: Instant,
    events: Vec<(usize, Event)>,
    sent: Vec<(usize, Transmit)>,
}

impl Net {
    /// Nodes that know only themselves.
    fn new(names: &[&str]) -> Self {
        let now = t0();
        let nodes: Vec<Gossip> = names.iter().enumerate().map(|(i, n)| gossip(n, i, 1, now)).collect();
        Net {
            down: vec![false; nodes.len()],
            nodes,
            now,
            events: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// Nodes that already know each other.
    fn converged(names: &[&str]) -> Self {
        let mut net = Self::new(names);
        let roster = Roster::new(net.nodes.iter().map(|g| g.identity().clone()));
        for g in &mut net.nodes {
            g.adopt_roster(net.now, &roster);
        }
        net
    }

    fn index(&self, to: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|g| g.identity().addr == to)
    }

    /// Delivers everything in flight, instantly, until nothing more is sent.
    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(ev) = self.nodes[i].poll_event() {
                    self.events.push((i, ev));
                }
                while let Some(t) = self.nodes[i].poll_transmit() {
                    moved = true;
                    self.sent.push((i, t.clone()));
                    if let Some(j) = self.index(t.to).filter(|&j| !self.down[j] && !self.down[i]) {
                        let from = self.nodes[i].identity().addr;
                        self.nodes[j].handle_message(self.now, from, t.msg);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("messages still flowing after 1000 rounds");
    }

    /// Advances time in `step`s for `total`, firing timers and delivering messages.
    fn run(&mut self, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.now += step;
            for i in 0..self.nodes.len() {
                if !self.down[i] {
                    self.nodes[i].handle_timeout(self.now);
                    assert!(
                        self.nodes[i].poll_timeout().is_some_and(|t| t > self.now),
                        "timer did not advance"
                    );
                }
            }
            self.pump();
        }
    }

    fn events_of(&self, i: usize) -> Vec<&Event> {
        self.events.iter().filter(|(n, _)| *n == i).map(|(_, e)| e).collect()
    }
}
