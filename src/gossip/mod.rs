//! Gossip membership and routing-table spread (SPEC §6).

mod config;

pub use config::{GossipConfig, GossipFile};
