//! A node's or a client's endpoint as the rest of the code sees it: connect out, accept in,
//! close. Callers never name quinn.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::VarInt;

use super::{AcceptError, Authed, ConnectError};
use crate::auth::Me;
use crate::secret::Secret;

/// One UDP socket that connections go out from (and, on a node, come in to). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Endpoint(quinn::Endpoint);

impl From<quinn::Endpoint> for Endpoint {
    fn from(endpoint: quinn::Endpoint) -> Self {
        Self(endpoint)
    }
}

impl Endpoint {
    /// The address the socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Connects to `addr` and runs the client side of the secret handshake (see
    /// [`super::connect`]); the caller bounds it with its deadline.
    pub async fn connect(&self, addr: SocketAddr, secret: &Secret, me: &Me<'_>) -> Result<Authed, ConnectError> {
        super::connect(&self.0, addr, secret, me).await
    }

    /// The next connection attempt from outside, not yet admitted; `None` once the endpoint
    /// stopped accepting.
    pub async fn accept(&self) -> Option<Incoming> {
        self.0.accept().await.map(Incoming)
    }

    /// Closes every connection with one of the [`super::close`] codes.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        self.0.close(code, reason);
    }

    /// Waits until every connection has sent its close (or lost it).
    pub async fn wait_idle(&self) {
        self.0.wait_idle().await;
    }
}

/// A connection attempt from outside, before any handshake: the node decides whether it may
/// start one (see `node::admission`), then [`Incoming::accept`]s, refuses or ignores it.
#[derive(Debug)]
pub struct Incoming(quinn::Incoming);

impl Incoming {
    /// The address the attempt claims to come from.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// Whether that address is shown to be the sender's (it answered a retry token).
    pub fn remote_address_validated(&self) -> bool {
        self.0.remote_address_validated()
    }

    /// Whether the sender may still be asked to validate its address.
    pub fn may_retry(&self) -> bool {
        self.0.may_retry()
    }

    /// Refuses at once (a packet saying so goes back).
    pub fn refuse(self) {
        self.0.refuse();
    }

    /// Asks the sender to show that its address is its own; false if it cannot be asked.
    pub fn retry(self) -> bool {
        self.0.retry().is_ok()
    }

    /// Drops the attempt without a word.
    pub fn ignore(self) {
        self.0.ignore();
    }

    /// Runs the server side of the handshakes, accepting any of `keys`, all within
    /// `deadline` (see [`super::accept`]).
    pub async fn accept(self, keys: &[Secret], me: &Me<'_>, deadline: Duration) -> Result<Authed, AcceptError> {
        super::accept(self.0, keys, me, deadline).await
    }
}
