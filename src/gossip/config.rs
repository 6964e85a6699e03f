//! Gossip intervals and other tunables: plain settings, filled in by the `[gossip]` keys of the
//! config file (`config::gossip`) or in code (the simulator). Knows no file format.

use std::time::Duration;

/// The protocol's tunables. Defaults start from HashiCorp memberlist's LAN profile and were
/// tuned with the simulator (see BENCHMARKS.md, "Gossip (simulated)").
#[derive(Clone, Debug, PartialEq)]
pub struct GossipConfig {
    /// How often a member probes one other member.
    pub probe_interval: Duration,
    /// How long a direct probe waits for its ack before asking others.
    pub probe_timeout: Duration,
    /// How many members are asked to probe indirectly (k).
    pub indirect_checks: usize,
    /// How often piggyback-only gossip is sent.
    pub gossip_interval: Duration,
    /// To how many members each gossip round goes.
    pub gossip_fanout: usize,
    /// How often a full-state exchange runs with one random member (scaled up beyond 32
    /// members like memberlist's pushPullScale).
    pub push_pull_interval: Duration,
    /// Suspicion lasts `suspicion_mult * max(1, log10(n)) * probe_interval` at least.
    pub suspicion_mult: u32,
    /// ... and at most `suspicion_max_mult` times that, shrinking with confirmations.
    pub suspicion_max_mult: u32,
    /// Each update is retransmitted `retransmit_mult * ceil(log10(n + 1))` times.
    pub retransmit_mult: u32,
    /// How often a dead member is contacted again, so healed partitions merge.
    pub reconnect_interval: Duration,
    /// How long dead and left members are remembered before being forgotten.
    pub dead_retention: Duration,
    /// How long a join attempt waits for the seed's answer before retrying.
    pub join_timeout: Duration,
    /// The longest wait between join attempts (the backoff doubles from 1 s up to this).
    pub join_retry_max: Duration,
    /// A node that adopts a new routing table forwards it at once to this many members
    /// ("hot rumor"); 0 waits for the next gossip round.
    pub hot_rumor_fanout: usize,
    /// Lifeguard's local health: probing slows down up to this factor while this node's own
    /// probes keep failing without nacks (1 disables it).
    pub awareness_max_multiplier: u32,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            // Tuned with the simulator from memberlist's LAN profile (1 s, 500 ms, mult 4); see
            // BENCHMARKS.md. Faster probes find a dead node sooner (every member within 5 s
            // at 50 nodes); 100 ms leaves 200 ms for the indirect and stream probes and for
            // the helpers' nacks to come back within the interval.
            probe_interval: Duration::from_millis(300),
            probe_timeout: Duration::from_millis(100),
            indirect_checks: 3,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            push_pull_interval: Duration::from_secs(30),
            // memberlist LAN: 4. Three keeps the minimum suspicion (reached only with K
            // independent confirmations) short; unconfirmed suspicions still last 6x longer.
            suspicion_mult: 3,
            suspicion_max_mult: 6,
            retransmit_mult: 4,
            reconnect_interval: Duration::from_secs(10),
            dead_retention: Duration::from_secs(3600),
            join_timeout: Duration::from_secs(3),
            join_retry_max: Duration::from_secs(10),
            hot_rumor_fanout: 3,
            awareness_max_multiplier: 8,
        }
    }
}

impl GossipConfig {
    /// The config the core runs with: a zero interval would make a timer fire in a loop, a
    /// zero multiplier would make suspicion or retransmission vanish, and an absurd one would
    /// overflow time arithmetic; all are clamped to sane bounds.
    pub fn sanitized(mut self) -> Self {
        const FLOOR: Duration = Duration::from_millis(1);
        // The longest a config file may give (`config::MAX_DURATION`, 30 days), for configs
        // made in code too.
        const CEILING: Duration = Duration::from_secs(30 * 24 * 3600);
        for d in [
            &mut self.probe_interval,
            &mut self.probe_timeout,
            &mut self.gossip_interval,
            &mut self.push_pull_interval,
            &mut self.reconnect_interval,
            &mut self.dead_retention,
            &mut self.join_timeout,
            &mut self.join_retry_max,
        ] {
            *d = (*d).clamp(FLOOR, CEILING);
        }
        for m in [
            &mut self.suspicion_mult,
            &mut self.suspicion_max_mult,
            &mut self.retransmit_mult,
            &mut self.awareness_max_multiplier,
        ] {
            *m = (*m).clamp(1, 1000);
        }
        self
    }
}
