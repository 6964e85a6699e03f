//! kvnode's gossip core (SPEC §6): SWIM membership with Lifeguard's refinements, and the spread
//! of one cluster-wide [`Table`] (kvnode's routing table), sans-IO, with its simulator.
//!
//! Nothing here touches tokio, a clock, a socket or a thread: time is always a parameter and
//! randomness comes from a caller-seeded RNG. The node's QUIC driver feeds `handle_*`, drains
//! `poll_*` and re-arms one timer from `poll_timeout`; the simulator (`sim`, behind the `sim`
//! feature) does the same for thousands of nodes on a virtual clock.
//!
//! A crate of its own, so the compiler keeps it so: it depends on serde, postcard, rand and
//! thiserror, and on nothing of the node. What it spreads besides membership is a type
//! parameter; what it knows members by is a [`NodeName`].
//!
//! - `core`: [`Gossip`], its inputs, outputs ([`Transmit`], [`Event`]) and timers.
//! - `probe`, `suspicion`: failure detection (direct, indirect and stream probes; suspicion
//!   timers that shrink with independent confirmations).
//! - `merge`, `join`: how updates, full states, joins and leaves change the membership.
//! - `health`: failures found in poor local health are tentative, withdrawn when the node
//!   learns it was the one cut off (issue 28).
//! - `broadcast`, `spread`: what is piggybacked on which message, and the gossip rounds.
//! - `members`: the member table, the name index and the probe order.
//! - `message`: the wire format; `name`: member names; `table`: the [`Table`] trait.

mod broadcast;
mod config;
mod core;
mod health;
mod join;
mod members;
mod merge;
mod message;
mod name;
mod probe;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod spread;
mod suspicion;
mod table;
#[cfg(test)]
mod tests;

pub use self::config::GossipConfig;
pub use self::core::{Event, Gossip, Transmit};
pub use self::members::{MemberView, Roster};
pub use self::message::{
    DecodeError, GOSSIP_VERSION, Ident, Identity, MAX_DATAGRAM, MAX_RELIABLE, MemberState, Message, PushPull, Sender,
    SharedTable, State, Update, said,
};
pub use self::name::{MAX_NAME_LEN, NameError, NodeName};
pub use self::table::Table;
