//! The fault test's nemesis: a schedule of faults drawn from a seed (printed, so a run
//! replays), applied to a [`Cluster`] while clients run, each fault healed after its hold.
//!
//! Included by `tests/faults.rs` only: `#[path = "common/nemesis.rs"] mod nemesis;`.

#![allow(dead_code)] // each test uses its part

use std::fmt;
use std::time::{Duration, Instant};

use crate::history::History;
use crate::workload::{Cluster, Nodes, Rng, Shape};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then a restart on the same address and data directory.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// The node's link down (network namespaces, root only), then up.
    Partition,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Kill => "kill -9 and restart",
            Fault::Pause => "SIGSTOP and SIGCONT",
            Fault::Partition => "partition and heal",
        })
    }
}

/// Whom a strike hits: the node serving the range when it strikes, or a given node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Victim {
    Serving,
    Node(usize),
}

impl fmt::Display for Victim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Victim::Serving => f.write_str("the range's leader (today its owner)"),
            Victim::Node(i) => write!(f, "{}", Shape::name_of(*i)),
        }
    }
}

/// One fault: when it strikes (from the start of the run), what, whom, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Strike {
    pub at: Duration,
    pub fault: Fault,
    pub victim: Victim,
    pub hold: Duration,
}

impl fmt::Display for Strike {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at {:>6.2}s {} of {} for {:.2}s",
            self.at.as_secs_f64(),
            self.fault,
            self.victim,
            self.hold.as_secs_f64()
        )
    }
}

/// A seeded schedule and how long the clients run around it.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub strikes: Vec<Strike>,
    /// The run's length: at least the duration asked for, longer if the kills asked for need it.
    pub duration: Duration,
}

impl Schedule {
    /// Strikes one after another (never two faults at once: with a single-owner range the
    /// test is about what one fault does), a quiet second at the end. `kills`: at least that
    /// many kills of the range's leader, the first strikes, even if the run must grow to fit them.
    pub fn draw(
        rng: &mut Rng,
        duration: Duration,
        kills: usize,
        victims: Nodes,
        nodes: usize,
        faults: &[Fault],
    ) -> Self {
        let mut strikes = Vec::new();
        let mut at = rng.millis(500, 1500);
        let end_by = duration.saturating_sub(Duration::from_secs(1));
        loop {
            let gap = rng.millis(200, 1200);
            let hold = rng.millis(300, 1500);
            let killed = strikes.iter().filter(|s: &&Strike| s.fault == Fault::Kill).count();
            if killed >= kills && at + gap + hold > end_by {
                break;
            }
            // The kills asked for strike the range's leader: they are what failover is timed on.
            let (fault, victim) = if killed < kills {
                (Fault::Kill, Victim::Serving)
            } else {
                let fault = faults[rng.below(faults.len() as u64) as usize];
                let victim = match victims {
                    Nodes::Owner => Victim::Serving,
                    Nodes::Any => Victim::Node(rng.below(nodes as u64) as usize),
                };
                (fault, victim)
            };
            strikes.push(Strike {
                at: at + gap,
                fault,
                victim,
                hold,
            });
            at += gap + hold;
        }
        Schedule {
            strikes,
            duration: duration.max(at + Duration::from_secs(1)),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} faults over {:.1}s:",
            self.strikes.len(),
            self.duration.as_secs_f64()
        )?;
        for s in &self.strikes {
            writeln!(f, "  {s}")?;
        }
        Ok(())
    }
}

/// A fault as it happened, on the history's clock.
#[derive(Clone, Debug)]
pub struct Struck {
    /// Nanoseconds since the history began.
    pub at: u64,
    pub fault: Fault,
    pub node: usize,
    /// Whether the node served the keys' range when struck.
    pub serving: bool,
}

/// Applies `schedule` to `cluster`, from `start`; returns the faults as they happened.
/// A strike whose victim cannot be found (no node answers `route`) is skipped, and said.
pub fn run(cluster: &mut Cluster, schedule: &Schedule, start: Instant, history: &History) -> Vec<Struck> {
    let mut struck = Vec::new();
    for strike in &schedule.strikes {
        let when = start + strike.at;
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
        let serving = cluster.serving();
        let node = match strike.victim {
            Victim::Node(i) => i,
            Victim::Serving => match serving {
                Some(i) => i,
                None => {
                    println!("nemesis: no node named the range's leader; {strike} skipped");
                    continue;
                }
            },
        };
        let at = history.now();
        match strike.fault {
            Fault::Kill => cluster.kill(node),
            Fault::Pause => cluster.pause(node),
            Fault::Partition => cluster.partition(node),
        }
        struck.push(Struck {
            at,
            fault: strike.fault,
            node,
            serving: serving == Some(node),
        });
        std::thread::sleep(strike.hold);
        match strike.fault {
            Fault::Kill => cluster.restart(node),
            Fault::Pause => cluster.resume(node),
            Fault::Partition => cluster.unpartition(node),
        }
    }
    struck
}
