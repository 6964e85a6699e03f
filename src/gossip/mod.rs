//! Gossip membership and routing-table spread (SPEC §6): a sans-IO SWIM core and its simulator.
//!
//! Nothing here touches tokio, a clock, a socket or a thread: time is always a parameter and
//! randomness comes from a caller-seeded RNG. The node's QUIC driver feeds `handle_*`, drains
//! `poll_*` and re-arms one timer from `poll_timeout`; the simulator (`sim`) does the same for
//! thousands of nodes on a virtual clock.

mod broadcast;
mod config;
mod core;
mod join;
mod members;
mod merge;
mod message;
mod probe;
pub mod sim;
mod spread;
mod suspicion;
#[cfg(test)]
mod tests;

pub use self::config::GossipConfig;
pub use self::core::{Event, Gossip, Transmit};
pub use self::members::{MemberView, Roster};
pub use self::message::{
    DecodeError, GOSSIP_VERSION, Ident, Identity, MAX_DATAGRAM, MAX_RELIABLE, MemberState, Message, PushPull, Sender,
    SharedTable, State, Update, said,
};
