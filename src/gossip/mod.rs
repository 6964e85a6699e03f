//! Gossip membership and routing-table spread (SPEC §6): a sans-IO SWIM core and its simulator.
//!
//! Nothing here touches tokio, a clock, a socket or a thread: time is always a parameter and
//! randomness comes from a caller-seeded RNG.

// The state machine that uses these building blocks comes in the next commit.
#![allow(dead_code)]

mod broadcast;
mod config;
mod members;
mod message;
mod suspicion;

pub use self::config::{GossipConfig, GossipFile};
pub use self::members::{MemberView, Roster};
pub use self::message::{
    DecodeError, GOSSIP_VERSION, Ident, Identity, MAX_DATAGRAM, MAX_RELIABLE, MemberState, Message, PushPull, Sender,
    SharedTable, State, Update,
};
