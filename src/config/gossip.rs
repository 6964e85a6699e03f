//! `[gossip]` in the config file, mapped onto the gossip core's plain [`GossipConfig`].

use serde::Deserialize;

use super::{AtLeastOne, ConfigDuration};
use crate::gossip::GossipConfig;

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

impl GossipFile {
    /// The settings this section gives, the defaults where a key is absent.
    pub fn resolve(&self) -> GossipConfig {
        let f = self;
        let d = GossipConfig::default();
        let dur = |v: Option<ConfigDuration>, default| v.map_or(default, |v| v.0);
        GossipConfig {
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ConfigFile;
    use crate::gossip::GossipConfig;

    #[test]
    fn the_cluster_config_files_spell_out_the_defaults() {
        for text in [
            include_str!("../../config/cluster-n1.toml"),
            include_str!("../../config/cluster-n2.toml"),
            include_str!("../../config/cluster-n3.toml"),
        ] {
            let file = ConfigFile::parse(text).unwrap();
            assert_eq!(file.gossip.resolve(), GossipConfig::default());
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
