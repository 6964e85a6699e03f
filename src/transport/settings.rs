//! The transport's settings: deadlines and the limits that keep one peer from exhausting a
//! node. Plain values; `config` fills them in from the file, environment and flags.

use std::time::Duration;

/// Request, handshake and connection deadlines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The deadline of a request that arrives without one.
    pub request: Duration,
    /// A connection that has not finished the secret handshake by then is dropped.
    pub handshake: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle: Duration,
    /// How long a stopping node waits for requests in flight.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(5),
            handshake: Duration::from_secs(5),
            idle: Duration::from_secs(30),
            shutdown: Duration::from_secs(10),
        }
    }
}

/// Resource limits that keep one peer from exhausting a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    /// Connections allowed to be in their handshakes at once; more are refused cheaply. Shared
    /// out: 8 per source (address and port), an eighth per address, and a quarter kept for
    /// addresses that proved the secret before (see `node::admission`).
    pub max_handshakes: u32,
    pub max_streams_per_connection: u32,
    /// Requests that wait (durable writes, hops, chat) in flight per stream; beyond it the
    /// stream is not read until one finishes. Another node forwards to this one over two
    /// streams, so it may have twice this many waiting here.
    pub max_requests_per_stream: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_handshakes: 256,
            max_streams_per_connection: 256,
            max_requests_per_stream: 1024,
        }
    }
}
