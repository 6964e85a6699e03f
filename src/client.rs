//! The client side: find the node a user named, connect, authenticate, ask.
//!
//! Used by the command-line subcommands and by `bench`. Everything is bounded by the caller's
//! deadline; every failure is a `ClientError` that knows its exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::Me;
use crate::directory::Directory;
use crate::names::{HostPort, NodeName, NodeRef};
use crate::rpc::{CallError, Channel};
use crate::secret::{Secret, SecretError, SecretSource};
use crate::transport::Limits;
use crate::transport::{self, ConnectError, Endpoint, RequestStreams};
use crate::wire::{RemoteError, Reply, Request, Role};

/// A client connection with no traffic at all for this long is gone.
const CLIENT_IDLE: Duration = Duration::from_secs(30);
/// How often an idle client connection says it is still there.
const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Why a client command failed; each variant has one exit code (SPEC §1).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A bare name not found locally or in any local node's membership (exit 3).
    #[error(
        "no node named {name:?} in KVNODE_HOME/nodes (known: {known}); give --via NAME, NAME@HOST:PORT or HOST:PORT"
    )]
    NoSuchNode { name: String, known: String },
    /// No `--via`, no `KVNODE_VIA`, and no node running locally (exit 3).
    #[error(
        "no node is running in KVNODE_HOME/nodes ({home}); start one with `kvnode start --name NAME`, or give --via NAME@HOST:PORT"
    )]
    NoNodeRunning { home: String },
    /// Several local nodes and no choice made (exit 2).
    #[error("several nodes are running here ({known}); say which with --via NAME or KVNODE_VIA")]
    WhichNode { known: String },
    /// The host part of `--via` does not resolve (exit 3).
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    /// The node could not be reached (exit 3).
    #[error("node {node} is unreachable: {reason}")]
    Unreachable { node: String, reason: String },
    /// Nothing came back before the deadline (exit 3).
    #[error("no answer from node {node} within {after:?}; is it running? (raise --timeout to wait longer)")]
    Timeout { node: String, after: Duration },
    /// The secrets differ (exit 4).
    #[error("authentication refused by node {node}: the secrets differ — check KVNODE_SECRET or --secret-file")]
    AuthRefused { node: String },
    /// `NAME@HOST:PORT` reached a node with another name (exit 3).
    #[error("the node at {addr} is named {found}, not {expected}")]
    WrongNode {
        addr: SocketAddr,
        expected: NodeName,
        found: String,
    },
    /// No usable secret (exit 2).
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The arguments are invalid (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The node answered with an error.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The node answered something this command did not ask for (exit 6).
    #[error("unexpected answer from node {node}: {answer}")]
    Unexpected { node: String, answer: String },
    /// `stop` asked the node to stop, and it was still running at the deadline (exit 3).
    #[error(
        "node {node} was asked to stop but is still running after {after:?}; raise --timeout to wait longer, or end it with kill -9"
    )]
    NotStopped { node: String, after: Duration },
    /// `ping` got no pong from `node`, for this reason: exit 3 (SPEC §1), 4 for a refused
    /// secret (§3).
    #[error("{reason}")]
    Pang { node: String, reason: Box<ClientError> },
    /// `kvnode secret`: some members failed (each is in the report printed); the exit code
    /// is the first failure's.
    #[error("{message}")]
    MembersFailed { message: String, code: u8 },
    /// `watch` lost its node and could not re-establish the watch within `--timeout`: the
    /// last attempt's exit code.
    #[error("the watch broke and could not be re-established within {after:?}: {reason}")]
    WatchBroken { after: Duration, reason: Box<ClientError> },
}

impl ClientError {
    /// The same error; a timeout says it waited `budget`, the command's `--timeout`, rather
    /// than what was left of it when the last step began (every wait of a command is bounded
    /// by that one deadline).
    pub fn waited(self, budget: Duration) -> Self {
        match self {
            ClientError::Timeout { node, .. } => ClientError::Timeout { node, after: budget },
            e => e,
        }
    }

    /// The exit code of SPEC §1.
    pub fn exit_code(&self) -> u8 {
        use ClientError::*;
        match self {
            NoSuchNode { .. }
            | NoNodeRunning { .. }
            | Resolve { .. }
            | Unreachable { .. }
            | Timeout { .. }
            | WrongNode { .. }
            | NotStopped { .. } => 3,
            WhichNode { .. } | Secret(_) | Usage(_) => 2,
            AuthRefused { .. } => 4,
            Remote(e) => e.exit_code(),
            Unexpected { .. } => 6,
            Pang { reason, .. } if matches!(**reason, AuthRefused { .. }) => 4,
            Pang { .. } => 3,
            MembersFailed { code, .. } => *code,
            WatchBroken { reason, .. } => reason.exit_code(),
        }
    }

    /// Fields the JSON error object carries besides `error` and `code`: a pang is still
    /// `ping`'s answer, in the one object a failure prints.
    pub fn json_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut o = serde_json::Map::new();
        if let ClientError::Pang { node, .. } = self {
            o.insert("node".into(), node.clone().into());
            o.insert("answer".into(), "pang".into());
        }
        o
    }
}

/// What every client command needs, resolved from flags and environment.
#[derive(Clone, Debug)]
pub struct Settings {
    pub home: PathBuf,
    pub secret: SecretSource,
    pub timeout: Duration,
    /// `--via`, else `KVNODE_VIA`, for the commands that take `--via`.
    pub via: Option<NodeRef>,
    /// `KVNODE_VIA` as set (not empty), parsed only by a command that takes `--via` and
    /// was given none: a bad one is no concern of `ping`, or of `get --via foo`.
    pub via_env: Option<String>,
    /// How this client introduces itself: `client@HOST` unless told otherwise.
    pub name: String,
}

/// A resolved node: where to connect and, when known, what it must be called.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub name: Option<NodeName>,
}

impl Target {
    /// `foo (127.0.0.1:4040)` or just the address.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", self.addr),
            None => self.addr.to_string(),
        }
    }
}

/// `client@HOST`, the default name a command-line client gives itself.
pub fn default_client_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("client@{host}")
}

async fn resolve_host(hp: &HostPort) -> Result<SocketAddr, ClientError> {
    hp.resolve().await.map_err(|e| ClientError::Resolve {
        host: hp.to_string(),
        reason: e.to_string(),
    })
}

fn known(dir: &Directory) -> String {
    let names: Vec<String> = dir.live_nodes().into_iter().map(|e| e.name.to_string()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Finds the node a user named with `--via` (or `KVNODE_VIA`, or the only local node).
pub async fn resolve(settings: &Settings, deadline: Instant) -> Result<Target, ClientError> {
    let dir = Directory::new(&settings.home);
    match &settings.via {
        Some(via) => resolve_ref(via, settings, deadline).await,
        None => {
            let nodes = dir.live_nodes();
            match nodes.as_slice() {
                [only] => Ok(Target {
                    addr: only.addr,
                    name: Some(only.name.clone()),
                }),
                [] => Err(ClientError::NoNodeRunning {
                    home: dir.root().display().to_string(),
                }),
                _ => Err(ClientError::WhichNode { known: known(&dir) }),
            }
        }
    }
}

/// Resolves `name`, `name@host:port` or `host:port`.
pub async fn resolve_ref(via: &NodeRef, settings: &Settings, deadline: Instant) -> Result<Target, ClientError> {
    match via {
        NodeRef::Addr(hp) => Ok(Target {
            addr: resolve_host(hp).await?,
            name: None,
        }),
        NodeRef::NameAt(name, hp) => Ok(Target {
            addr: resolve_host(hp).await?,
            name: Some(name.clone()),
        }),
        NodeRef::Name(name) => {
            let dir = Directory::new(&settings.home);
            if let Some(entry) = dir.lookup(name.as_str()) {
                return Ok(Target {
                    addr: entry.addr,
                    name: Some(entry.name),
                });
            }
            // Not a local node: ask the local nodes whom they know through gossip.
            let (mut gone, mut refused, mut answered) = (None, None, false);
            for local in dir.live_nodes() {
                let target = Target {
                    addr: local.addr,
                    name: Some(local.name.clone()),
                };
                let client = match Client::connect(settings, &target, deadline).await {
                    Ok(client) => client,
                    // Ours to fix, and no other node will take it either.
                    Err(e @ ClientError::Secret(_)) => return Err(e),
                    // Said if no node took our secret: it is then the likely cause (a node of
                    // another cluster here refusing it is not, when one of ours answered).
                    Err(e @ ClientError::AuthRefused { .. }) => {
                        refused.get_or_insert(e);
                        continue;
                    }
                    Err(_) => continue,
                };
                let members = client.call(Request::Members).await;
                client.close().await;
                let Ok(Reply::Members(members)) = members else { continue };
                answered = true;
                let Some(m) = members.iter().find(|m| m.name == *name) else {
                    continue;
                };
                match m.addr.parse() {
                    Ok(addr) if m.is_live() => {
                        return Ok(Target {
                            addr,
                            name: Some(name.clone()),
                        });
                    }
                    // Known, and gone: say so rather than "no node named".
                    _ => {
                        gone = Some(ClientError::Unreachable {
                            node: format!("{name} ({})", m.addr),
                            reason: format!(
                                "the gossip membership of {} says it {}",
                                local.name,
                                crate::gossip::said(&m.state)
                            ),
                        });
                    }
                }
            }
            Err(gone
                .or(refused.filter(|_| !answered))
                .unwrap_or_else(|| ClientError::NoSuchNode {
                    name: name.to_string(),
                    known: known(&dir),
                }))
        }
    }
}

/// One authenticated connection to a node, with one request stream.
pub struct Client {
    endpoint: Endpoint,
    conn: transport::Connection,
    /// The request stream; reopened when the node closed it (it closes idle streams).
    stream: RequestStreams,
    /// The node's name as it introduced itself.
    pub node: String,
    pub addr: SocketAddr,
    deadline: Instant,
}

impl Client {
    /// Connects and authenticates, all before `deadline`.
    pub async fn connect(settings: &Settings, target: &Target, deadline: Instant) -> Result<Self, ClientError> {
        let secret = settings.secret.load()?;
        Self::connect_with(&secret, &settings.name, target, deadline).await
    }

    pub async fn connect_with(
        secret: &Secret,
        my_name: &str,
        target: &Target,
        deadline: Instant,
    ) -> Result<Self, ClientError> {
        let endpoint = Self::endpoint(target)?;
        Self::connect_on(endpoint, secret, my_name, target, deadline).await
    }

    /// A client endpoint (one UDP socket) for reaching `target`; many connections may share it.
    pub fn endpoint(target: &Target) -> Result<Endpoint, ClientError> {
        let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable {
            node: target.describe(),
            reason: e.to_string(),
        };
        // The deadline governs every call; the idle timeout only has to outlast it, and
        // keep-alives hold a quiet interactive session (chat from a terminal) open.
        let config = transport::client_config(&Limits::default(), CLIENT_IDLE, Some(CLIENT_KEEP_ALIVE))
            .map_err(|e| unreachable(&e))?;
        transport::client_endpoint(target.addr, config)
            .map(Endpoint::from)
            .map_err(|e| unreachable(&e))
    }

    /// Connects and authenticates through `endpoint`, all before `deadline`.
    pub async fn connect_on(
        endpoint: Endpoint,
        secret: &Secret,
        my_name: &str,
        target: &Target,
        deadline: Instant,
    ) -> Result<Self, ClientError> {
        let shown = target.describe();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let me = Me {
            role: Role::Client,
            name: my_name,
            listen: None,
        };
        let authed = match tokio::time::timeout_at(deadline, endpoint.connect(target.addr, secret, &me)).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    node: shown,
                    after: remaining,
                });
            }
            Ok(Err(ConnectError::AuthRefused { .. })) => return Err(ClientError::AuthRefused { node: shown }),
            Ok(Err(e)) => {
                return Err(ClientError::Unreachable {
                    node: shown,
                    reason: e.to_string(),
                });
            }
            Ok(Ok(authed)) => authed,
        };
        let node = authed.peer.name.clone();
        if let Some(expected) = &target.name
            && *expected != *node
        {
            authed.conn.close(transport::close::DONE, b"wrong node");
            return Err(ClientError::WrongNode {
                addr: target.addr,
                expected: expected.clone(),
                found: node,
            });
        }
        let stream = RequestStreams::new(1);
        stream
            .reopen(&authed.conn, 0)
            .await
            .map_err(|e| ClientError::Unreachable {
                node: shown,
                reason: e.to_string(),
            })?;
        Ok(Self {
            endpoint,
            stream,
            conn: authed.conn,
            node,
            addr: target.addr,
            deadline,
        })
    }

    /// `foo (127.0.0.1:4040)`
    pub fn describe(&self) -> String {
        format!("{} ({})", self.node, self.addr)
    }

    /// Asks one thing, bounded by what is left of the deadline.
    pub async fn call(&self, request: Request) -> Result<Reply, ClientError> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        self.call_within(request, remaining).await
    }

    /// Asks one thing with its own timeout (for long-running sessions such as chat).
    pub async fn call_within(&self, request: Request, timeout: Duration) -> Result<Reply, ClientError> {
        self.call_ref(&request, timeout).await
    }

    /// Like [`Client::call_within`], for a request the caller keeps (and may reuse).
    pub async fn call_ref(&self, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
        let channel = self.channel().await?;
        match channel.call(request, timeout).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(ClientError::Remote(e)),
            Err(CallError::Timeout(after)) => Err(ClientError::Timeout {
                node: self.describe(),
                after,
            }),
            Err(CallError::TooLarge(e)) => Err(ClientError::Usage(e)),
            // (`call` waits for room; never given back by it.)
            Err(CallError::Full) => Err(ClientError::Timeout {
                node: self.describe(),
                after: timeout,
            }),
            Err(CallError::Broken(reason)) => Err(ClientError::Unreachable {
                node: self.describe(),
                reason: self.conn.ended_because().unwrap_or(reason),
            }),
        }
    }

    /// The request stream, or a fresh one if the node has closed the last (say, after a long
    /// quiet spell in an interactive chat). A request is never resent: only a stream already
    /// known to be closed is replaced.
    async fn channel(&self) -> Result<std::sync::Arc<Channel>, ClientError> {
        if let Some(channel) = self.stream.sound(0) {
            return Ok(channel);
        }
        self.stream
            .reopen(&self.conn, 0)
            .await
            .map_err(|e| ClientError::Unreachable {
                node: self.describe(),
                reason: e.explained(),
            })
    }

    /// Closes at once: the close frame goes out, and the process does not wait out QUIC's
    /// draining period (90 ms measured against 4 ms), since the node forgets the connection
    /// as soon as the frame arrives.
    pub async fn close(self) {
        self.conn.close(transport::close::DONE, b"done");
        // The connection's driver task sends the close frame; let it run before we return,
        // or the node would hold the connection until its idle timeout.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        self.endpoint.close(transport::close::DONE, b"done");
    }
}
