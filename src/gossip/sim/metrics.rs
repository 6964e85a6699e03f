//! What the simulator measures, fed from the events every node emits, and the queries the
//! tests and the example ask.

use std::time::Duration;

use super::Event;
use super::{NodeId, Sim};
use crate::name::NodeName;
use crate::table::Table;

/// Who sees whom alive, as an n×n bit matrix, plus the count of (observer, subject) pairs of
/// live processes where the observer sees the subject alive: "one membership" is that count
/// reaching L×(L−1), checked in O(1) however large the cluster.
#[derive(Default)]
pub(super) struct Views {
    n: usize,
    bits: Vec<u64>,
    pub live: Vec<bool>,
    pub live_count: usize,
    pub good_pairs: u64,
}

impl Views {
    fn bit(&self, obs: NodeId, subj: NodeId) -> (usize, u64) {
        let i = obs * self.n + subj;
        (i / 64, 1 << (i % 64))
    }

    pub fn get(&self, obs: NodeId, subj: NodeId) -> bool {
        let (w, b) = self.bit(obs, subj);
        self.bits[w] & b != 0
    }

    /// Grows the matrix to `n` processes (rebuilding it; only done while spawning).
    pub fn resize(&mut self, n: usize) {
        if n <= self.n {
            return;
        }
        let old = std::mem::take(self);
        self.n = n;
        self.bits = vec![0; (n * n).div_ceil(64)];
        self.live = old.live.clone();
        self.live.resize(n, false);
        for obs in 0..old.n {
            for subj in 0..old.n {
                if old.get(obs, subj) {
                    let (w, b) = self.bit(obs, subj);
                    self.bits[w] |= b;
                }
            }
        }
        self.live_count = old.live_count;
        self.good_pairs = old.good_pairs;
    }

    /// Every live process sees every other alive (a converged start).
    pub fn set_all(&mut self) {
        self.bits.fill(!0);
        for p in 0..self.n {
            let (w, b) = self.bit(p, p);
            self.bits[w] &= !b;
        }
        self.recount();
    }

    pub fn set(&mut self, obs: NodeId, subj: NodeId, alive: bool) {
        if obs == subj || self.get(obs, subj) == alive {
            return;
        }
        let (w, b) = self.bit(obs, subj);
        self.bits[w] ^= b;
        if self.live[obs] && self.live[subj] {
            if alive {
                self.good_pairs += 1;
            } else {
                self.good_pairs -= 1;
            }
        }
    }

    /// Forgets what `p` saw (a restarted process knows nothing yet).
    pub fn clear_row(&mut self, p: NodeId) {
        for subj in 0..self.n {
            self.set(p, subj, false);
        }
    }

    pub fn set_live(&mut self, p: NodeId, live: bool) {
        if self.live[p] == live {
            return;
        }
        let pairs = (0..self.n)
            .filter(|&q| q != p && self.live[q])
            .map(|q| u64::from(self.get(p, q)) + u64::from(self.get(q, p)))
            .sum::<u64>();
        self.live[p] = live;
        if live {
            self.live_count += 1;
            self.good_pairs += pairs;
        } else {
            self.live_count -= 1;
            self.good_pairs -= pairs;
        }
    }

    fn recount(&mut self) {
        let mut good = 0;
        for obs in (0..self.n).filter(|&o| self.live[o]) {
            good += (0..self.n)
                .filter(|&s| s != obs && self.live[s] && self.get(obs, s))
                .count() as u64;
        }
        self.good_pairs = good;
    }

    pub fn one_membership(&self) -> bool {
        let l = self.live_count as u64;
        self.good_pairs == l * l.saturating_sub(1)
    }
}

/// A killed process and when each observer marked it dead.
pub(super) struct Detection {
    pub subject: NodeId,
    pub killed_at: u64,
    pub marked: Vec<Option<u64>>,
}

/// A "dead" verdict about a process that was alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FalseDeath {
    pub at: Duration,
    pub observer: NodeId,
    pub subject: NodeId,
}

/// Adoption of one tracked table version.
pub(super) struct TableTrack {
    pub version: u64,
    pub started: u64,
    pub adopted: Vec<Option<u64>>,
}

/// Message counts, for reports and for tests that must see traffic actually flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub datagrams: u64,
    pub streams: u64,
    pub lost: u64,
    pub cut_by_partition: u64,
    pub to_or_from_down: u64,
    /// Datagrams whose encoding exceeded `MAX_DATAGRAM` (checked when enabled; must stay 0).
    pub oversized_datagrams: u64,
    /// Wake-ups where the core asked to be woken again at once (a timer bug; must stay 0).
    pub stuck_timers: u64,
    /// "Suspect" verdicts about live processes, counted at every observer.
    pub false_suspicions: u64,
    /// Distinct false suspicions: (live process, incarnation) pairs ever suspected.
    pub false_suspicion_episodes: u64,
}

impl Sim {
    pub(super) fn observe(&mut self, obs: NodeId, ev: &Event) {
        let subject = |sim: &Sim, name: &NodeName| sim.owners.get(name).copied();
        match ev {
            Event::MemberUp { name, .. } => {
                if let Some(s) = subject(self, name) {
                    self.views.set(obs, s, true);
                }
            }
            Event::MemberSuspect { name, .. } | Event::MemberLeft { name, .. } => {
                if let Some(s) = subject(self, name) {
                    self.views.set(obs, s, false);
                    if matches!(ev, Event::MemberSuspect { .. }) && self.live(s) {
                        self.stats.false_suspicions += 1;
                        let incarnation = self.nodes[obs]
                            .gossip
                            .member(name.as_str())
                            .map_or(0, |m| m.incarnation);
                        if self.suspected.insert((s, incarnation)) {
                            self.stats.false_suspicion_episodes += 1;
                        }
                    }
                }
            }
            Event::MemberDead { name, .. } => {
                let Some(s) = subject(self, name) else { return };
                self.views.set(obs, s, false);
                if self.live(s) {
                    self.false_deaths.push(FalseDeath {
                        at: self.now(),
                        observer: obs,
                        subject: s,
                    });
                } else if let Some(d) = self.detections.iter_mut().rev().find(|d| d.subject == s)
                    && let Some(m) = d.marked.get_mut(obs)
                {
                    m.get_or_insert(self.now);
                }
            }
            Event::TableChanged(t) => {
                if let Some(track) = self.table.as_mut()
                    && t.version() >= track.version
                    && let Some(a) = track.adopted.get_mut(obs)
                {
                    a.get_or_insert(self.now);
                }
            }
            _ => {}
        }
    }

    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    pub fn false_deaths(&self) -> &[FalseDeath] {
        &self.false_deaths
    }

    /// Whether every live process sees every other live process alive.
    pub fn one_membership(&self) -> bool {
        self.views.one_membership()
    }

    /// How many live processes `id` sees alive (itself excluded).
    pub fn alive_seen_by(&self, id: NodeId) -> usize {
        (0..self.nodes.len())
            .filter(|&s| s != id && self.live(s) && self.views.get(id, s))
            .count()
    }

    /// For the tracked table: when each live process adopted it, relative to `set_table`,
    /// sorted; processes that have not adopted it are missing.
    pub fn table_adoption_times(&self) -> Vec<Duration> {
        let Some(track) = &self.table else {
            return Vec::new();
        };
        let mut times: Vec<Duration> = (0..self.nodes.len())
            .filter(|&i| self.live(i))
            .filter_map(|i| track.adopted.get(i).copied().flatten())
            .map(|t| Duration::from_nanos(t - track.started))
            .collect();
        times.sort();
        times
    }

    /// The fraction of live processes holding the tracked table.
    pub fn table_fraction(&self) -> f64 {
        let live = (0..self.nodes.len()).filter(|&i| self.live(i)).count();
        self.table_adoption_times().len() as f64 / live.max(1) as f64
    }

    /// When `fraction` of live processes held the tracked table (after `set_table`).
    pub fn table_time_to(&self, fraction: f64) -> Option<Duration> {
        let live = (0..self.nodes.len()).filter(|&i| self.live(i)).count();
        let times = self.table_adoption_times();
        let need = ((fraction * live as f64).ceil() as usize).max(1);
        times.get(need - 1).copied()
    }

    /// How long after `subject` was killed every live process had marked it dead.
    pub fn detection_time(&self, subject: NodeId) -> Option<Duration> {
        let d = self.detections.iter().rev().find(|d| d.subject == subject)?;
        let mut last = d.killed_at;
        for obs in (0..self.nodes.len()).filter(|&o| self.live(o)) {
            last = last.max(d.marked.get(obs).copied().flatten()?);
        }
        Some(Duration::from_nanos(last - d.killed_at))
    }

    /// How many live processes have marked the killed `subject` dead.
    pub fn marked_dead_by(&self, subject: NodeId) -> usize {
        self.detections
            .iter()
            .rev()
            .find(|d| d.subject == subject)
            .map_or(0, |d| {
                (0..self.nodes.len())
                    .filter(|&o| self.live(o) && d.marked.get(o).copied().flatten().is_some())
                    .count()
            })
    }
}
