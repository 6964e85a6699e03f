//! A running node: wires the transport, the store, the routing table, the peer pool and the
//! request handlers together. The only module that knows all the others.

mod admission;
mod balance;
mod chat_out;
mod front;
mod gossip;
mod handler;
mod keys;
mod lease;
mod listen_resp;
mod listen_text;
mod ops;
mod peers;
mod penalty;
mod progress;
mod raft_link;
mod replicas;
mod replicated;
mod saved_cluster;
mod saved_table;
mod stats;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Me;
use crate::config::NodeConfig;
use crate::directory::{Directory, DirectoryError};
use crate::keyring::{KeyringError, SharedKeyring};
use crate::names::NodeName;
use crate::routing::RoutingTable;
use crate::rpc::{self, ServeContext};
use crate::secret::SecretError;
use crate::store::Store;
use crate::supervisor::{GaveUp, Part, Supervisor};
use crate::transport::{self, AcceptError, Connection, Endpoint, Identity, Incoming, TransportError};
use crate::wire::{self, FrameBudget, RemoteError, Role};

pub use front::FrontSession;
pub use peers::{ConnectFailure, PeerConn, PeerPool, hop_margin};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The keyring in the data directory cannot be read or is corrupt.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The data directory (given, or made under KVNODE_HOME) cannot be made or used.
    #[error(
        "cannot use the data directory {path}: {source}; give --data-dir (or data_dir) a directory kvnode can create and write"
    )]
    DataDir { path: String, source: std::io::Error },
    /// The RESP listener's address cannot be bound.
    #[error("cannot listen for RESP on {addr}: {source}; choose another resp_listen (--resp-listen)")]
    RespBind { addr: SocketAddr, source: std::io::Error },
    /// The text listener (`--text-listen`) cannot bind its address.
    #[error(
        "cannot listen for the text protocol on {addr} (text_listen, --text-listen): {source}; give a free loopback port, or leave it out"
    )]
    TextListen { addr: SocketAddr, source: std::io::Error },
    /// The metrics listener (`--metrics-listen`) cannot bind its address.
    #[error(
        "cannot listen for metrics on {addr} (metrics_listen, --metrics-listen): {source}; give a free port, or leave it out"
    )]
    MetricsListen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot publish the node in {path}: {source}")]
    Publish { path: String, source: std::io::Error },
    /// A long-lived part kept failing beyond the restart budget.
    #[error("stopping the node: {0}")]
    GaveUp(#[from] GaveUp),
    /// The node cannot go on (say, the cluster refused its name).
    #[error("stopping the node: {0}")]
    Fatal(String),
}

/// How long a stopping node waits for members to acknowledge that it is leaving.
const LEAVE_WAIT: Duration = Duration::from_secs(2);

/// How often freed memory is handed back to the system (glibc's `malloc_trim`).
#[cfg(target_env = "gnu")]
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// How often a pooled node-to-node connection is kept alive.
const PEER_KEEP_ALIVE: Duration = Duration::from_secs(2);

/// The shared state of a running node.
pub struct Node {
    name: NodeName,
    config: NodeConfig,
    listen: SocketAddr,
    /// The secrets this node accepts and the one it proves with (`kvnode secret`).
    keys: Arc<SharedKeyring>,
    /// Where a change to them is saved: `DATA_DIR/keyring`.
    keyring_file: std::path::PathBuf,
    /// Held while a change is made, so that each starts from the last one's keyring.
    keyring_change: tokio::sync::Mutex<()>,
    store: Store,
    table: RwLock<Arc<RoutingTable>>,
    /// Where a durable node keeps the table it holds (none in memory).
    table_file: Option<std::path::PathBuf>,
    /// The table last written there; a save that lost the race to a newer one is skipped.
    table_saved: Arc<std::sync::Mutex<Option<RoutingTable>>>,
    /// A joining node's saved table, newer than its configured one, until it has joined
    /// ([`Node::restore_held`]).
    held_when_stopped: std::sync::Mutex<Option<RoutingTable>>,
    peers: PeerPool,
    /// The connection each forwarding target was last reached on, while it stays open: a hop
    /// then costs no name resolution (which may read the node directory).
    hops: std::sync::Mutex<std::collections::HashMap<NodeName, Arc<PeerConn>>>,
    directory: Directory,
    serve: ServeContext,
    /// Every connection, stream and background task of the node, so shutdown can wait for
    /// the requests in flight.
    tasks: TaskTracker,
    connections: AtomicUsize,
    /// Slots for connections between their first packet and the end of the secret handshake.
    handshakes: admission::Slots,
    /// Addresses that failed the handshake, and how fast they may try again.
    penalties: std::sync::Mutex<penalty::Penalties>,
    /// The gossip driver's inbox and the membership it last published.
    gossip: gossip::GossipHandle,
    /// Cancelled when the node must stop on an error (say, the cluster refused its name).
    fatal: CancellationToken,
    /// Cancelled by a `Leave` request (`kvnode stop NAME --via NODE`): stop as on SIGTERM.
    leave: CancellationToken,
    fatal_reason: std::sync::Mutex<Option<String>>,
    /// Chat lines for this node's stdout.
    chat_out: chat_out::ChatOut,
    /// The Raft driver's inbox and the leaders it publishes (issue 25).
    replicas: replicas::ReplicasHandle,
    /// Each peer's queue of outgoing raft frames.
    raft_links: raft_link::RaftLinks,
    /// Ranges streamed in and moves seen finish, for `route --status` (issue 26).
    move_log: progress::MoveLog,
    /// Test builds only: switches that make a long-lived part crash.
    #[cfg(feature = "fault-injection")]
    crash: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
}

impl Node {
    pub fn name(&self) -> &NodeName {
        &self.name
    }

    /// The routing table this node holds now.
    pub fn table(&self) -> Arc<RoutingTable> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Installs `table` if it supersedes the one held. A durable node saves it too, on a
    /// blocking task whose handle is given back: `route --set` waits for it before saying
    /// the table is set; gossip does not wait.
    pub fn offer_table(&self, table: RoutingTable) -> Option<tokio::task::JoinHandle<()>> {
        let mut held = self.table.write().unwrap_or_else(PoisonError::into_inner);
        if !table.supersedes(&held) {
            return None;
        }
        self.install_table(&mut held, table)
    }

    /// Puts `table` in place of `held` (the table's lock is held by the caller, which has
    /// decided it wins: [`Node::offer_table`], or a compare-and-set of `route --set`).
    fn install_table(&self, held: &mut Arc<RoutingTable>, table: RoutingTable) -> Option<tokio::task::JoinHandle<()>> {
        tracing::info!(version = table.version(), setter = table.setter(), table = %table, "routing table changed");
        self.move_log.table_changed(held, &table);
        *held = Arc::new(table);
        // The driver starts, moves and drops the groups the new table names this node in
        // (once this node has joined its cluster: see `Node::joined`).
        let driver = self.gossip.joined().then(|| self.replicas.table_sender());
        self.save_table(Arc::clone(held), driver)
    }

    /// Saves `newest` (a durable node), then hands it to `driver`. Off the event loop and
    /// off the table's lock (an fsync may take a while); the newest table is the one left on
    /// disk, whatever order the saves run in.
    ///
    /// The driver gets the table only once it is on disk: what the driver does by a table
    /// (drop a group's records, start a new history) must never outlive the table across a
    /// restart. A table this node made (a finished move, a split's next step) may be
    /// nowhere else yet; a restart that began with an older one would find groups gone that
    /// it still counts on.
    fn save_table(
        &self,
        newest: Arc<RoutingTable>,
        driver: Option<tokio::sync::watch::Sender<Option<Arc<RoutingTable>>>>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let Some(path) = self.table_file.clone() else {
            if let Some(driver) = driver {
                replicas::follow_table(&driver, newest);
            }
            return None;
        };
        let saved = Arc::clone(&self.table_saved);
        Some(tokio::task::spawn_blocking(move || {
            let mut saved = saved.lock().unwrap_or_else(PoisonError::into_inner);
            // Not over a newer table (or the same one): that one is on disk.
            if saved.as_ref().is_none_or(|s| newest.supersedes(s)) {
                match saved_table::save(&path, &newest) {
                    Ok(()) => *saved = Some((*newest).clone()),
                    // Followed all the same: a node whose disk refuses a small file cannot
                    // keep its groups' records either, and stopping its groups would not help.
                    Err(e) => tracing::error!(
                        path = %path.display(), error = %e,
                        "cannot save the routing table; its replica groups follow it all the same, and a restart may begin with an older one and find groups gone that it still counts on"
                    ),
                }
            }
            if let Some(driver) = driver {
                replicas::follow_table(&driver, newest);
            }
        }))
    }

    /// A joining node has joined (before its groups follow any table): the table it held
    /// when it stopped, newer than its configured one, is taken back when it is newer than
    /// the cluster's too, the cluster's names this node, and every node it names is one the
    /// cluster knows (a member gossip knows, `members`, or a node the cluster's table names);
    /// the table, for gossip to spread. The newest table may have been on this node alone
    /// when it stopped (one it made: a finished move, a split's next step), and its groups
    /// followed it. Any other is passed over, said, and the cluster's saved in its place: the
    /// data directory may be another cluster's (a table naming nodes long gone would send
    /// requests there).
    pub(super) fn restore_held(&self, members: impl Fn(&NodeName) -> bool) -> Option<RoutingTable> {
        let saved = self
            .held_when_stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        // Decided and installed under the table's lock: nothing newer comes in between.
        let mut held = self.table.write().unwrap_or_else(PoisonError::into_inner);
        if !saved.supersedes(&held) {
            // The cluster's table is as new or newer: saved over this one as it came.
            return None;
        }
        let cluster = Arc::clone(&held);
        let mut named = cluster.nodes();
        named.extend(cluster.then().iter().flat_map(|e| e.replicas()));
        let names = |n: &NodeName| named.contains(&n);
        let unknown: Vec<String> = saved
            .nodes()
            .into_iter()
            .filter(|n| **n != self.name && !members(n) && !names(n))
            .map(ToString::to_string)
            .collect();
        let why = match (names(&self.name), unknown.is_empty()) {
            (true, true) => None,
            (false, _) => Some("the cluster's table does not name this node".to_string()),
            (true, false) => Some(format!(
                "it names nodes the cluster does not know ({})",
                unknown.join(", ")
            )),
        };
        if let Some(why) = why {
            tracing::warn!(
                saved = %saved, cluster = %cluster,
                "the table this node held when it stopped is newer than the cluster's, but {why}: passed over for the cluster's (this data directory may be another cluster's)"
            );
            drop(held);
            *self.table_saved.lock().unwrap_or_else(PoisonError::into_inner) = None;
            let _ = self.save_table(cluster, None);
            return None;
        }
        tracing::warn!(
            version = saved.version(), setter = saved.setter(), table = %saved, cluster = %cluster,
            "rejoined with the newer table this node held when it stopped (it may have been the only node holding it): the cluster takes it"
        );
        let _ = self.install_table(&mut held, saved.clone());
        Some(saved)
    }

    /// This node has joined its cluster (or has none to join): from now on its replica groups
    /// follow its table, which now holds the cluster's (the member it joined through sent
    /// it), or one newer. Before, a joining node's table is its start-up one, which may be
    /// far behind the cluster's (the configured table: it would start, even bootstrap,
    /// groups the cluster ended long ago). The flag is set before the table is read, and
    /// `install_table` reads the flag under the table's lock, so no table is missed. Handed
    /// over once saved, as every table is ([`Node::save_table`]).
    pub(super) fn joined(&self) {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner).clone();
        let _ = self.save_table(table, Some(self.replicas.table_sender()));
    }

    /// Where node `name` can be reached: gossip membership, the local directory, then
    /// `[peers]` in the config. A node known to be down, or not known at all, is an
    /// `Unreachable` error naming it.
    pub async fn locate(&self, name: &NodeName) -> Result<SocketAddr, RemoteError> {
        if *name == self.name {
            return Ok(self.listen);
        }
        if let Some(m) = self.gossip.member(name) {
            return match m.state {
                crate::gossip::State::Alive | crate::gossip::State::Suspect => Ok(m.addr),
                state => Err(RemoteError::Unreachable {
                    node: name.to_string(),
                    addr: m.addr.to_string(),
                    reason: format!("gossip membership says it {}", state.said()),
                }),
            };
        }
        if let Some(entry) = self.directory.lookup(name.as_str()) {
            return Ok(entry.addr);
        }
        if let Some(hp) = self.config.peers.get(name) {
            return hp.resolve().await.map_err(|_| RemoteError::Unreachable {
                node: name.to_string(),
                addr: hp.to_string(),
                reason: "its [peers] address does not resolve".into(),
            });
        }
        if let Some(entry) = self.directory.last_known(name.as_str()) {
            return Err(RemoteError::Unreachable {
                node: name.to_string(),
                addr: entry.addr.to_string(),
                reason: "it is not running (its process is gone)".into(),
            });
        }
        Err(RemoteError::Unreachable {
            node: name.to_string(),
            addr: "address unknown".into(),
            reason: "it is not in this node's local directory or [peers]; is it started?".into(),
        })
    }
}

/// Runs a node until `shutdown` resolves, then drains requests in flight and exits cleanly.
/// If a long-lived part keeps failing beyond the restart budget, returns `GaveUp`.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let directory = Directory::new(&config.home);
    let claim = directory.claim(&config.name)?;
    let keyring_file = crate::keyring::path(&config.data_dir);
    let keys = Arc::new(SharedKeyring::new(keys::starting_keyring(&config, &keyring_file)?));
    // The certificate lives there even for an in-memory node; a path that is a file, or
    // under one, is the user's to fix, not a broken certificate.
    usable_dir(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let identity = Identity::load_or_create(&config.data_dir, &config.name)?;
    let setup = transport::NodeSetup::new(
        &identity,
        &config.limits,
        &config.timeouts,
        Some(PEER_KEEP_ALIVE),
        // The secret in use at start keys the endpoint's resets for this run (see there).
        &keys.in_use(),
        &config.name,
    )?;
    // A durable node listens where it did last time when its port was left to chance, so
    // that its cluster finds it again (issue 22, point 10).
    let cluster_file = (!config.in_memory).then(|| saved_cluster::path(&config.data_dir));
    let saved_cluster = cluster_file.as_deref().and_then(saved_cluster::load);
    let endpoint = saved_cluster::bind(config.listen, saved_cluster.as_ref(), &setup)?;
    let bound = endpoint.local_addr().map_err(|source| TransportError::Bind {
        addr: config.listen,
        source,
    })?;
    // From here on, `listen` is where others reach this node: what it publishes, gossips
    // and introduces itself with.
    let listen = transport::advertised(bound, config.advertise);
    // Bound before the node is published, so that a client that finds the node finds its
    // text port open too.
    let text_listener = match config.text_listen {
        Some(addr) => Some(
            listen_text::bind(addr)
                .await
                .map_err(|source| NodeError::TextListen { addr, source })?,
        ),
        None => None,
    };
    let metrics_listener = stats::bind(config.metrics_listen).await?;
    let store = if config.in_memory {
        Store::in_memory()
    } else {
        Store::open(&config.data_dir)?
    };
    let table = match &config.table {
        Some(entries) => RoutingTable::new(entries.clone(), 1, config.name.as_str())
            .expect("validated when the configuration was resolved")
            .with_generations(None),
        None if config.join.is_empty() => RoutingTable::owns_everything(&config.name),
        // A node joining a cluster with no table of its own has no opinion: the empty setter
        // loses to any table the cluster already holds, so a new node never takes over
        // buckets. Until it hears the cluster's table, it refuses bucket requests.
        None => RoutingTable::owns_everything(&config.name).with_version(0, ""),
    };
    // A durable node that starts a cluster (no `join`) begins with the table it held when
    // it stopped, if that is newer than its configured one: it is the cluster's memory, and
    // members joining it learn the table from it. A node that joins begins with its
    // configured table, and takes the one it held back once it has joined, if that is newer
    // than the cluster's and names only nodes the cluster knows (`Node::restore_held`): a
    // data directory reused in another cluster must not take over its routing. A table the
    // node itself set at the same version is the configured one, edited since.
    let table_file = (!config.in_memory).then(|| saved_table::path(&config.data_dir));
    let saved = table_file.as_deref().and_then(saved_table::load);
    let (saved, held_when_stopped) = match saved_table::restores(saved, &table) {
        Some(saved) if !config.join.is_empty() => (None, Some(saved)),
        restored => (restored, None),
    };
    let table = match saved {
        Some(saved) => {
            tracing::warn!(
                version = saved.version(), setter = saved.setter(), table = %saved, configured = %table,
                "routing with the newer table this node held when it stopped, not the configured one; \
                 `kvnode route --set` changes it, or delete {} to start from the configuration",
                saved_table::path(&config.data_dir).display()
            );
            saved
        }
        None => table,
    };
    // The runtime as built (one event loop, or its worker threads), not as configured.
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    if listen != bound {
        tracing::info!(%bound, advertise = %listen, "listening on {bound}, reached at {listen} (--advertise sets it)");
    }
    // A node joining with no table of its own routes nothing until it has the cluster's.
    let shown = match table.setter() {
        "" => "none yet (the cluster's, once joined)".to_string(),
        _ => table.to_string(),
    };
    tracing::info!(node = %config.name, %listen, table = %shown, store = %store.describe(), threads, "node up");
    let serve = ServeContext {
        max_in_flight: config.limits.max_requests_per_stream as usize,
        default_timeout: config.timeouts.request,
        idle_timeout: config.timeouts.idle,
        stopping: CancellationToken::new(),
        frames: FrameBudget::node(wire::UNFINISHED_FRAMES_PER_NODE),
    };
    // A durable node keeps where it is and whom it knows; it rejoins through the members
    // saved only without `join` of its own, as with the table.
    let gossip = gossip::GossipHandle::new(config.name.clone(), listen);
    let gossip = match cluster_file {
        Some(file) => gossip.saving_to(saved_cluster::Saver::new(
            file,
            bound,
            saved_cluster,
            config.join.is_empty(),
        )),
        None => gossip,
    };
    // The RESP socket is bound before the node is published, so a port in use is a start error.
    let resp = match &config.resp {
        None => None,
        Some(r) => {
            let socket = listen_resp::bind(r)
                .await
                .map_err(|source| NodeError::RespBind { addr: r.listen, source })?;
            let tls = match r.tls {
                true => Some(tokio_rustls::TlsAcceptor::from(transport::tcp_server_config(
                    &identity,
                )?)),
                false => None,
            };
            Some((socket, r.clone(), tls))
        }
    };
    // Published only now that where it listens is saved (above): a client that finds the node
    // may kill it at once, and it must come back on this port all the same.
    claim.publish(listen).map_err(|source| NodeError::Publish {
        path: directory.root().display().to_string(),
        source,
    })?;
    let node = Arc::new(Node {
        name: config.name.clone(),
        peers: PeerPool::new(endpoint.clone(), Arc::clone(&keys), config.name.clone(), listen),
        listen,
        keys,
        keyring_file,
        keyring_change: Default::default(),
        store,
        table: RwLock::new(Arc::new(table)),
        table_file,
        // What is on disk: the cluster's table, older, does not overwrite it before the node
        // has decided which one it follows.
        table_saved: Arc::new(std::sync::Mutex::new(held_when_stopped.clone())),
        held_when_stopped: std::sync::Mutex::new(held_when_stopped),
        hops: Default::default(),
        directory,
        serve,
        tasks: TaskTracker::new(),
        connections: AtomicUsize::new(0),
        handshakes: admission::Slots::new(config.limits.max_handshakes as usize),
        penalties: Default::default(),
        gossip,
        fatal: CancellationToken::new(),
        leave: CancellationToken::new(),
        fatal_reason: Default::default(),
        chat_out: Default::default(),
        // The replica driver gets its first table once the node has joined its cluster, or
        // found it has none to join (`Node::joined`).
        replicas: replicas::ReplicasHandle::new(),
        raft_links: Default::default(),
        move_log: Default::default(),
        #[cfg(feature = "fault-injection")]
        crash: Default::default(),
        config,
    });

    // Before anything is served: a group on disk that may yet apply entries over bytes this
    // node serves alone holds requests for them until the replica driver has decided.
    node.replicas.hold_unapplied(&node.store);

    // Two stops: `serve.stopping` drains requests; `parts_stop` then ends the long-lived parts,
    // after the requests that need them (the store's writer) are done.
    let parts_stop = CancellationToken::new();
    let supervisor = Supervisor::new(node.config.supervisor.clone())
        .with(listener(&node, &endpoint, &parts_stop))
        .with(store_writer(&node, &parts_stop))
        .with(gossip_driver(&node, &parts_stop))
        .with(replica_driver(&node, &parts_stop));
    let mut parts = tokio::spawn(supervisor.run(parts_stop.clone()));
    if let Some((socket, resp, tls)) = resp {
        node.tasks
            .spawn(listen_resp::serve(Arc::clone(&node), socket, resp, tls));
    }
    if let Some(text) = text_listener {
        let addr = text.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
        tracing::info!(%addr, "serving the guide's text protocol (CREATE/PUT/GET/DELETE) on {addr}, loopback only: it has no authentication");
        node.tasks.spawn(listen_text::serve(Arc::clone(&node), text));
    }
    stats::start(&node, metrics_listener);
    // Pooled connections nothing has used for a while are closed (they are kept alive by
    // our keep-alives otherwise); the pool looks every eighth of the idle period.
    let sweeping = Arc::clone(&node);
    node.tasks.spawn(async move {
        let mut every = tokio::time::interval(peers::PEER_IDLE / 8);
        loop {
            tokio::select! {
                _ = every.tick() => sweeping.peers.expire_idle(std::time::Instant::now()),
                () = sweeping.serve.stopping.cancelled() => return,
            }
        }
    });
    // glibc's malloc keeps what a burst of writes freed (a gigabyte after a bulk load or a
    // large move, in per-thread arenas): given back every second. (mimalloc returned it by
    // itself, but made in-memory puts a quarter slower; BENCHMARKS.md, "Streamed moves".)
    #[cfg(target_env = "gnu")]
    {
        let trimming = Arc::clone(&node);
        node.tasks.spawn(async move {
            let mut every = tokio::time::interval(TRIM_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        // SAFETY: malloc_trim only returns free memory to the system.
                        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
                    }
                    () = trimming.serve.stopping.cancelled() => return,
                }
            }
        });
    }
    let failed: Option<NodeError> = tokio::select! {
        () = shutdown => None,
        () = node.leave.cancelled() => {
            tracing::info!("asked to leave the cluster (kvnode stop)");
            None
        }
        () = node.fatal.cancelled() => Some(NodeError::Fatal(
            node.fatal_reason.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default(),
        )),
        outcome = &mut parts => Some(match outcome {
            Ok(Err(gave_up)) => NodeError::GaveUp(gave_up),
            Ok(Ok(())) => unreachable!("parts end only when the node stops"),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }),
    };

    // Stop: tell the cluster we are leaving (bounded wait for a few members to have it),
    // unlist the node, take no new requests, let those in flight finish (bounded).
    tracing::info!(node = %node.name, "shutting down");
    if failed.is_none() {
        let (done, acked) = tokio::sync::oneshot::channel();
        node.gossip.send(gossip::Input::Leave(done)).await;
        if tokio::time::timeout(LEAVE_WAIT, acked).await.is_err() {
            tracing::warn!(after = ?LEAVE_WAIT, "no member acknowledged our leaving in time; they will find out");
        }
    }
    claim.remove();
    node.serve.stopping.cancel();
    node.tasks.close();
    if tokio::time::timeout(node.config.timeouts.shutdown, node.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(after = ?node.config.timeouts.shutdown, "requests still in flight at the shutdown deadline; closing anyway");
    }
    parts_stop.cancel();
    if !matches!(failed, Some(NodeError::GaveUp(_))) {
        let _ = parts.await;
    }
    endpoint.close(transport::close::SHUTDOWN, b"node shutting down");
    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
    match failed {
        None => {
            tracing::info!(node = %node.name, "node stopped");
            Ok(())
        }
        Some(e) => Err(e),
    }
}

/// Makes `dir` if needed and checks that a file can be made in it (an existing directory
/// may be read-only or another user's).
fn usable_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(std::io::Error::other("it is a file, not a directory"));
    }
    crate::secret::create_private_dir(dir)?;
    let probe = dir.join(format!(".kvnode-probe-{}", std::process::id()));
    std::fs::OpenOptions::new().write(true).create_new(true).open(&probe)?;
    std::fs::remove_file(&probe)
}

/// What becomes of a connection attempt before any TLS work.
enum Admission {
    /// With the handshake slot it holds until its handshake ends.
    Accept(admission::Ticket),
    /// Over a limit: told so at once.
    Refuse,
    /// Handshakes are under pressure and its address is not validated yet: asked to come
    /// back with a QUIC Retry token, which costs the node one stateless packet and nothing
    /// at all for a spoofed address, which never comes back.
    Retry,
    /// From a source or address slowed down after failing the handshake: dropped unanswered.
    Ignore,
}

/// Where a node that connected to us from `from` and introduced itself with `listen` is
/// reached: at `listen`; at `from` when it gave none we can read; at `listen`'s port on
/// `from`'s address when `listen` is a wildcard (0.0.0.0:4040: a node that does not say
/// where it is reached).
fn reached_at(listen: Option<&str>, from: SocketAddr) -> SocketAddr {
    match listen.and_then(|a| a.parse::<SocketAddr>().ok()) {
        Some(a) if a.ip().is_unspecified() => SocketAddr::new(from.ip(), a.port()),
        Some(a) => a,
        None => from,
    }
}

/// The listener part: accepts connections and hands each to its own task.
fn listener(node: &Arc<Node>, endpoint: &Endpoint, parts_stop: &CancellationToken) -> Part {
    let (node, endpoint, parts_stop) = (Arc::clone(node), endpoint.clone(), parts_stop.clone());
    Part::new("listener", move || {
        let (node, endpoint, parts_stop) = (Arc::clone(&node), endpoint.clone(), parts_stop.clone());
        Box::pin(async move {
            loop {
                let incoming = tokio::select! {
                    incoming = endpoint.accept() => incoming,
                    () = node.serve.stopping.cancelled() => break,
                    never = node.crash_point("listener") => match never {},
                };
                let Some(incoming) = incoming else {
                    return Err("the endpoint stopped accepting".to_string());
                };
                let ticket = match node.may_handshake(&incoming) {
                    Admission::Accept(ticket) => ticket,
                    Admission::Refuse => {
                        incoming.refuse();
                        continue;
                    }
                    Admission::Retry => {
                        // Only an address not yet validated is asked (checked by may_handshake).
                        let _ = incoming.retry();
                        continue;
                    }
                    // A source slowed down after failing gets no answer at all: a refusal
                    // would cost an encrypted packet each, and only tell a flooder to go on.
                    Admission::Ignore => {
                        incoming.ignore();
                        continue;
                    }
                };
                node.tasks.spawn(Arc::clone(&node).serve_connection(incoming, ticket));
            }
            // Draining: accept nothing more, and end with the other parts.
            parts_stop.cancelled().await;
            Ok(())
        })
    })
}

/// The gossip part: the driver around the membership core.
fn gossip_driver(node: &Arc<Node>, parts_stop: &CancellationToken) -> Part {
    let (node, parts_stop) = (Arc::clone(node), parts_stop.clone());
    Part::new("gossip", move || {
        Box::pin(Arc::clone(&node).run_gossip(parts_stop.clone()))
    })
}

/// The replicas part: the Raft driver of every replicated range this node holds. A panic in
/// raft-rs fails the part, logged by the supervisor; the new run starts the groups again from
/// the table and their state in the store, and the requests the
/// failed run held are answered "outcome unknown". Past the restart budget the node stops.
fn replica_driver(node: &Arc<Node>, parts_stop: &CancellationToken) -> Part {
    let (node, parts_stop) = (Arc::clone(node), parts_stop.clone());
    Part::new("replicas", move || {
        let (node, parts_stop) = (Arc::clone(&node), parts_stop.clone());
        Box::pin(async move {
            let outbox = Arc::new(raft_link::NodeOutbox(Arc::downgrade(&node)));
            tokio::select! {
                done = node.replicas.run(node.name.clone(), node.store.clone(), outbox, parts_stop) => done,
                never = Arc::clone(&node).finish_moves() => match never {},
                never = Arc::clone(&node).auto_balance() => match never {},
                never = node.crash_point("replicas") => match never {},
            }
        })
    })
}

/// The store part: the group-commit writer that makes every put durable.
fn store_writer(node: &Arc<Node>, parts_stop: &CancellationToken) -> Part {
    let (node, parts_stop) = (Arc::clone(node), parts_stop.clone());
    Part::new("store", move || {
        let (node, parts_stop) = (Arc::clone(&node), parts_stop.clone());
        Box::pin(async move {
            tokio::select! {
                done = node.store.run_writer(parts_stop) => done,
                never = node.crash_point("store") => match never {},
            }
        })
    })
}

impl Node {
    /// Test builds only: the switch that makes part `name` crash.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn crash_switch(&self, name: &str) -> Arc<tokio::sync::Notify> {
        let mut switches = self.crash.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(switches.entry(name.to_string()).or_default())
    }

    /// Where a long-lived part can be made to crash by a test; in a shipped build it never
    /// resolves, and no trace of the hook is compiled in.
    async fn crash_point(&self, part: &str) -> std::convert::Infallible {
        #[cfg(feature = "fault-injection")]
        {
            self.crash_switch(part).notified().await;
            panic!("fault injection: part {part} crashed");
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = part;
            std::future::pending().await
        }
    }
}

impl Node {
    /// Whether an incoming connection may start its (costly) TLS and secret handshakes: not
    /// beyond the connection limit, from an address shown to be the sender's when handshakes
    /// are under pressure, not faster than its source is allowed after failing to
    /// authenticate, and within its share of the handshake slots (see `admission`). Refusing
    /// costs almost nothing.
    fn may_handshake(&self, incoming: &Incoming) -> Admission {
        let peer = incoming.remote_address();
        let limits = &self.config.limits;
        if self.connections.load(Ordering::Relaxed) >= limits.max_connections as usize {
            tracing::warn!(%peer, limit = limits.max_connections, "refused a connection: too many open");
            crate::metrics::refused(crate::metrics::Refusal::TooManyConnections);
            return Admission::Refuse;
        }
        // Before the penalties: an address not validated may be spoofed, and must neither
        // spend nor be charged for the address it claims.
        if !incoming.remote_address_validated() && incoming.may_retry() && self.handshakes.lock().under_pressure() {
            tracing::trace!(%peer, "handshakes under pressure: asked to validate its address");
            return Admission::Retry;
        }
        let now = std::time::Instant::now();
        if !self
            .penalties
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allow(peer, now)
        {
            crate::metrics::refused(crate::metrics::Refusal::SlowedDown);
            return Admission::Ignore;
        }
        match self.handshakes.admit(peer, now) {
            Ok(ticket) => Admission::Accept(ticket),
            Err(full) => {
                tracing::debug!(%peer, limit = limits.max_handshakes, "refused a connection: {full}");
                crate::metrics::refused(crate::metrics::Refusal::HandshakesFull);
                Admission::Refuse
            }
        }
    }

    /// Authenticates one incoming connection, then serves every stream it opens.
    async fn serve_connection(self: Arc<Self>, incoming: Incoming, slot: admission::Ticket) {
        let peer = incoming.remote_address();
        let me = Me {
            role: Role::Node,
            name: self.name.as_str(),
            listen: Some(self.listen.to_string()),
        };
        let keyring = self.keys.current();
        let accepted = incoming
            .accept(keyring.all(), &me, self.config.timeouts.handshake)
            .await;
        drop(slot);
        let authed = match accepted {
            Ok(a) => a,
            Err(AcceptError::AuthRefused) => {
                crate::metrics::refused(crate::metrics::Refusal::WrongSecret);
                let warning = self.penalise(peer);
                match warning {
                    Some(penalty::Warning::First) => {
                        tracing::warn!(%peer, "refused a connection: its secret differs from this node's");
                    }
                    Some(penalty::Warning::Repeated(n)) => {
                        tracing::warn!(address = %peer.ip(), attempts = n, "refused more connections that failed the handshake (a wrong secret, or not finished in time) from this address; it is being slowed down");
                    }
                    None => {}
                }
                return;
            }
            // Held open past TLS without the proof until the deadline: the slot was kept from
            // honest clients all that time, so it costs its source what a wrong secret does.
            // (A QUIC handshake that never finished is not charged: its address may be a
            // spoofed victim's.)
            Err(e @ AcceptError::Timeout(_)) => {
                crate::metrics::refused(crate::metrics::Refusal::HandshakeTimeout);
                match self.penalise(peer) {
                    Some(penalty::Warning::First) => {
                        tracing::warn!(%peer, error = %e, "dropped a connection; its source is slowed down as for a wrong secret");
                    }
                    Some(penalty::Warning::Repeated(n)) => {
                        tracing::warn!(address = %peer.ip(), attempts = n, error = %e, "dropped more connections that failed the handshake (a wrong secret, or not finished in time) from this address; it is being slowed down");
                    }
                    None => tracing::debug!(%peer, error = %e, "dropped a connection"),
                }
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection failed before authenticating");
                return;
            }
        };
        tracing::debug!(%peer, name = %authed.peer.name, role = ?authed.peer.role, "authenticated");
        self.penalties
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .succeeded(peer);
        self.handshakes.lock().proved(peer.ip(), std::time::Instant::now());
        self.connections.fetch_add(1, Ordering::Relaxed);
        let conn = authed.conn.clone();
        if authed.peer.role == Role::Node {
            // Requests and gossip to this node reuse its connection. Nodes connect from their
            // listen socket, so the address it advertises is where it is.
            let addr = reached_at(authed.peer.listen.as_deref(), peer);
            let name = authed.peer.name.parse::<NodeName>().ok();
            if let Some(old) = self.peers.adopt(authed, addr) {
                // The connection cached for forwarding to the node there (the one that was,
                // or the one now) may be the replaced one.
                let was = old.name().parse::<NodeName>().ok();
                for name in [was, name.clone()].into_iter().flatten() {
                    self.forget_hop(&name, None);
                }
                // Closed once calls already on it have had their time: kept alive by our
                // keep-alives, it would otherwise stay open, unused, for good. (A stopping
                // node closes every connection anyway.)
                let (grace, stopping) = (self.config.timeouts.request, self.serve.stopping.clone());
                self.tasks.spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep(grace) => {
                            old.connection().close(transport::close::DONE, b"superseded by a newer connection");
                        }
                        () = stopping.cancelled() => {}
                    }
                });
            }
            self.tasks.spawn(Arc::clone(&self).read_datagrams(conn.clone(), addr));
            if let Some(name) = name {
                self.tasks
                    .spawn(Arc::clone(&self).read_raft_streams(conn.clone(), name));
            }
        }
        self.serve_streams(&conn).await;
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records a failed handshake (a wrong secret, or none proven in time) against `peer`;
    /// says whether (and what) to log.
    fn penalise(&self, peer: SocketAddr) -> Option<penalty::Warning> {
        self.penalties
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failed(peer, std::time::Instant::now())
    }

    /// Serves every request stream the other side opens on `conn`, until it ends or we stop.
    async fn serve_streams(self: &Arc<Self>, conn: &Connection) {
        // The streams of one connection share its part of the budget for frames being received.
        let frames = self.serve.frames.for_connection(wire::UNFINISHED_FRAMES_PER_CONNECTION);
        loop {
            let stream = tokio::select! {
                s = conn.accept_stream() => s,
                () = self.serve.stopping.cancelled() => break,
            };
            match stream {
                Ok((send, recv)) => {
                    let ctx = ServeContext {
                        frames: frames.clone(),
                        ..self.serve.clone()
                    };
                    self.tasks.spawn(rpc::serve(recv, send, Arc::clone(self), ctx));
                }
                Err(e) => {
                    tracing::trace!(peer = %conn.remote_address(), error = %e, "connection ended");
                    break;
                }
            }
        }
    }

    /// The connection to the node at `addr`: pooled, or made now (and then served in both
    /// directions, since the peer may send requests and gossip back on it).
    pub(crate) async fn link(
        self: &Arc<Self>,
        addr: SocketAddr,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<PeerConn>, ConnectFailure> {
        let (conn, new) = self.peers.connect(addr, deadline).await?;
        if new {
            let (node, c) = (Arc::clone(self), conn.connection().clone());
            self.tasks.spawn(async move { node.serve_streams(&c).await });
            self.tasks
                .spawn(Arc::clone(self).read_datagrams(conn.connection().clone(), addr));
            if let Ok(name) = conn.name().parse::<NodeName>() {
                self.tasks
                    .spawn(Arc::clone(self).read_raft_streams(conn.connection().clone(), name));
            }
        }
        Ok(conn)
    }

    /// The connection to node `name` at `addr`, checking that the node there has that name.
    pub(crate) async fn peer(
        self: &Arc<Self>,
        name: &NodeName,
        addr: SocketAddr,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<PeerConn>, RemoteError> {
        let conn = self.link(addr, deadline).await.map_err(|e| match e {
            ConnectFailure::AuthRefused => RemoteError::AuthRefused {
                from: self.name.to_string(),
                to: format!("{name} ({addr})"),
            },
            ConnectFailure::Unreachable(reason) => RemoteError::Unreachable {
                node: name.to_string(),
                addr: addr.to_string(),
                reason,
            },
        })?;
        if conn.name() != name.as_str() {
            return Err(RemoteError::Unreachable {
                node: name.to_string(),
                addr: addr.to_string(),
                reason: format!("the node there is named {}", conn.name()),
            });
        }
        Ok(conn)
    }

    /// Hands every gossip datagram arriving on a node-to-node connection to the driver.
    async fn read_datagrams(self: Arc<Self>, conn: Connection, from: SocketAddr) {
        loop {
            let datagram = tokio::select! {
                d = conn.read_datagram() => d,
                () = self.serve.stopping.cancelled() => return,
            };
            let Some(bytes) = datagram else { return };
            crate::metrics::gossip_received(bytes.len());
            match crate::gossip::Message::decode(&bytes) {
                Ok(msg) => {
                    tracing::trace!(%from, len = bytes.len(), "gossip datagram in");
                    // A datagram cannot be answered: a drop is counted and logged.
                    let _ = self.gossip.offer(gossip::Input::Message { from, msg });
                }
                Err(e) => tracing::debug!(%from, error = %e, "dropped an undecodable gossip datagram"),
            }
        }
    }

    /// Stops the node with an error (logged by the caller, returned by `run`).
    pub(crate) fn fail(&self, reason: String) {
        *self.fatal_reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        self.fatal.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connecting_node_is_reached_at_its_listen_address_or_where_it_came_from() {
        let from: SocketAddr = "10.0.0.7:53211".parse().unwrap();
        let at = |listen| reached_at(listen, from).to_string();
        assert_eq!(at(Some("10.0.0.7:4040")), "10.0.0.7:4040");
        assert_eq!(at(Some("0.0.0.0:4040")), "10.0.0.7:4040");
        assert_eq!(at(Some("not an address")), "10.0.0.7:53211");
        assert_eq!(at(None), "10.0.0.7:53211");
    }
}
