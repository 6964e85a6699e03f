//! Gossip intervals and their `[gossip]` config keys.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{AtLeastOne, ConfigDuration};

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

/// `[gossip]` in a config file; every key optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipFile {
    pub probe_interval: Option<ConfigDuration>,
    pub probe_timeout: Option<ConfigDuration>,
    pub indirect_checks: Option<usize>,
    pub gossip_interval: Option<ConfigDuration>,
    pub gossip_fanout: Option<AtLeastOne<usize>>,
    pub push_pull_interval: Option<ConfigDuration>,
    pub suspicion_mult: Option<AtLeastOne<u32>>,
    pub suspicion_max_mult: Option<AtLeastOne<u32>>,
    pub retransmit_mult: Option<AtLeastOne<u32>>,
    pub reconnect_interval: Option<ConfigDuration>,
    pub dead_retention: Option<ConfigDuration>,
    pub join_timeout: Option<ConfigDuration>,
    pub join_retry_max: Option<ConfigDuration>,
    pub hot_rumor_fanout: Option<usize>,
    pub awareness_max_multiplier: Option<AtLeastOne<u32>>,
}

impl GossipConfig {
    pub fn from_file(f: &GossipFile) -> Self {
        let d = Self::default();
        let dur = |v: Option<ConfigDuration>, default| v.map_or(default, |v| v.0);
        Self {
            probe_interval: dur(f.probe_interval, d.probe_interval),
            probe_timeout: dur(f.probe_timeout, d.probe_timeout),
            indirect_checks: f.indirect_checks.unwrap_or(d.indirect_checks),
            gossip_interval: dur(f.gossip_interval, d.gossip_interval),
            gossip_fanout: f.gossip_fanout.map_or(d.gossip_fanout, |v| v.0),
            push_pull_interval: dur(f.push_pull_interval, d.push_pull_interval),
            suspicion_mult: f.suspicion_mult.map_or(d.suspicion_mult, |v| v.0),
            suspicion_max_mult: f.suspicion_max_mult.map_or(d.suspicion_max_mult, |v| v.0),
            retransmit_mult: f.retransmit_mult.map_or(d.retransmit_mult, |v| v.0),
            reconnect_interval: dur(f.reconnect_interval, d.reconnect_interval),
            dead_retention: dur(f.dead_retention, d.dead_retention),
            join_timeout: dur(f.join_timeout, d.join_timeout),
            join_retry_max: dur(f.join_retry_max, d.join_retry_max),
            hot_rumor_fanout: f.hot_rumor_fanout.unwrap_or(d.hot_rumor_fanout),
            awareness_max_multiplier: f.awareness_max_multiplier.map_or(d.awareness_max_multiplier, |v| v.0),
        }
    }

    /// The config the core runs with: a zero interval would make a timer fire in a loop, a
    /// zero multiplier would make suspicion or retransmission vanish, and an absurd one would
    /// overflow time arithmetic; all are clamped to sane bounds.
    pub(crate) fn sanitized(mut self) -> Self {
        const FLOOR: Duration = Duration::from_millis(1);
        // The longest a config file may give, for configs made in code too.
        const CEILING: Duration = crate::config::MAX_DURATION;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;

    #[test]
    fn the_cluster_config_files_spell_out_the_defaults() {
        for text in [
            include_str!("../../config/cluster-n1.toml"),
            include_str!("../../config/cluster-n2.toml"),
            include_str!("../../config/cluster-n3.toml"),
        ] {
            let file = ConfigFile::parse(text).unwrap();
            assert_eq!(GossipConfig::from_file(&file.gossip), GossipConfig::default());
        }
    }

    #[test]
    fn absurd_intervals_are_clamped_so_no_timer_spins_or_overflows() {
        // A config file refuses zero and anything over 30 days; the core is also given
        // configs in code (the simulator).
        assert!(toml::from_str::<GossipFile>("dead_retention = \"99999999999999h\"").is_err());
        let c = GossipConfig {
            probe_interval: Duration::ZERO,
            suspicion_mult: 0,
            dead_retention: Duration::MAX,
            ..GossipConfig::default()
        }
        .sanitized();
        assert_eq!(c.probe_interval, Duration::from_millis(1));
        assert_eq!(c.suspicion_mult, 1);
        assert_eq!(c.dead_retention, crate::config::MAX_DURATION);
    }
}
