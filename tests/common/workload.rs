//! The fault test's cluster and clients: a cluster shape started as real `kvnode` processes
//! (each restartable on the address it had, with its data directory), and client threads that
//! put, get and delete unique values on a few keys through chosen nodes, recording every
//! operation in a [`History`].
//!
//! Included by `tests/faults.rs` only: `#[path = "common/workload.rs"] mod workload;`.

#![allow(dead_code)] // each test uses its part

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kvnode::client::{Client, ClientError, Target};
use kvnode::secret::Secret;
use kvnode::wire::{BucketOp, BucketRequest, Request};

use crate::common::{Home, Node, PATIENCE, Run};
use crate::history::{self, History, Op, Outcome};
use crate::netns::Net;

/// A tiny seeded generator (splitmix64), so a run replays from its printed seed.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A duration in `[lo, hi)` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo)))
    }

    /// An independent stream for `who` (a client, the nemesis).
    pub fn fork(&self, who: u64) -> Rng {
        Rng(self.0 ^ (who + 1).wrapping_mul(0x2545_F491_4F6C_DD1D))
    }
}

/// Which nodes a role applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nodes {
    /// The node that serves the keys' range: its owner, or its leader once ranges replicate.
    Owner,
    /// Any node of the cluster.
    Any,
}

/// A cluster shape: the one-line switch between today's single-owner ranges and replicated ones.
#[derive(Clone, Debug)]
pub struct Shape {
    pub name: &'static str,
    /// Nodes are called n1, n2, ...
    pub nodes: usize,
    /// The routing table every node starts with.
    pub table: &'static str,
    /// Keep data in memory (a restart loses it): the broken system the test must catch.
    pub in_memory: bool,
    /// Through which nodes clients send their operations.
    pub entries: Nodes,
    /// Which nodes the nemesis strikes.
    pub victims: Nodes,
    /// Tables a mover sets in turn during the run (`route --set`), moving the keys' range
    /// (issue 26); none: the table stays.
    pub moves: &'static [&'static str],
}

/// The bucket the keys live in: routed by the tables above (`a-z`, `a-m` cover it).
pub const BUCKET: &str = "faults";

impl Shape {
    pub fn name_of(i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// The index of node `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        (0..self.nodes).find(|&i| Self::name_of(i) == name)
    }
}

/// The cluster of a shape, every node a real process of one `KVNODE_HOME`.
pub struct Cluster {
    pub shape: Shape,
    pub home: Home,
    /// The namespaces every node runs in, when partitions are possible.
    net: Option<Net>,
    nodes: Vec<Option<Node>>,
    addrs: Vec<SocketAddr>,
    stopped: Vec<bool>,
}

impl Cluster {
    /// Every running node's log kept (`FAULT_LOGS`), as a killed one's was.
    pub fn keep_logs(&self) {
        for node in self.nodes.iter().flatten() {
            keep_log(node);
        }
    }

    /// Starts every node of `shape`; the second and later join the first. With `net`, each
    /// node in its own namespace of it (and clients must [`Cluster::enter`] it); else on
    /// loopback.
    pub fn start(shape: &Shape, net: Option<Net>) -> Self {
        let home = Home::new();
        let mut cluster = Cluster {
            shape: shape.clone(),
            home,
            net,
            nodes: Vec::new(),
            addrs: Vec::new(),
            stopped: vec![false; shape.nodes],
        };
        for i in 0..shape.nodes {
            let node = cluster.spawn(i, None);
            cluster.addrs.push(node.addr());
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    /// The arguments of node `i`: its table, one event loop (seven nodes share two cores in
    /// CI), and a member to join (n1, or n2 for n1 itself once the others run).
    fn args(&self, i: usize, listen: Option<SocketAddr>) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--table".into(),
            self.shape.table.into(),
            "--threads".into(),
            "1".into(),
        ];
        if self.shape.in_memory {
            args.push("--in-memory".into());
        }
        let join = if i == 0 { self.addrs.get(1) } else { self.addrs.first() };
        if let Some(addr) = join {
            args.push("--join".into());
            args.push(addr.to_string());
        }
        let listen = match (listen, &self.net) {
            (Some(addr), _) => Some(addr.to_string()),
            (None, Some(_)) => Some(format!("{}:0", Net::ip_of(i))),
            (None, None) => None,
        };
        if let Some(listen) = listen {
            args.push("--listen".into());
            args.push(listen);
        }
        args
    }

    fn spawn(&self, i: usize, listen: Option<SocketAddr>) -> Node {
        let args = self.args(i, listen);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match &self.net {
            Some(net) => self.home.start_in(net.node_ns(i), &Shape::name_of(i), &args),
            None => self.home.start(&Shape::name_of(i), &args),
        }
    }

    /// Whether partitions can be made (the nodes run in network namespaces).
    pub fn can_partition(&self) -> bool {
        self.net.is_some()
    }

    /// Moves the calling thread to where the nodes are reachable (a no-op on loopback).
    pub fn enter(&self) {
        enter(self.hub().as_deref());
    }

    /// The namespace clients must be in to reach the nodes; `None`: here, on loopback.
    pub fn hub(&self) -> Option<String> {
        self.net.as_ref().map(|n| n.hub.clone())
    }

    /// Cuts node `i` off from everyone, clients included: its packets vanish.
    pub fn partition(&mut self, i: usize) {
        self.net.as_ref().expect("partitions need namespaces").link(i, false);
    }

    pub fn unpartition(&mut self, i: usize) {
        self.net.as_ref().expect("partitions need namespaces").link(i, true);
    }

    /// Splits the cluster in two: the nodes of `side` reach one another and no one else
    /// (clients reach them only [`Cluster::run_beside`] one of them); the rest stay with the
    /// clients. `heal`: one cluster again.
    pub fn split(&mut self, side: &[usize], heal: bool) {
        self.net
            .as_ref()
            .expect("partitions need namespaces")
            .split(side, !heal);
    }

    /// Runs a client command where the nodes are reachable.
    pub fn run(&self, args: &[&str]) -> Run {
        match &self.net {
            Some(net) => self.run_in(&net.hub, args),
            None => self.home.run(args),
        }
    }

    /// Runs a client command inside node `i`'s own namespace, where node `i` is reachable
    /// even while it is cut off from everyone else (partitions need namespaces).
    pub fn run_beside(&self, i: usize, args: &[&str]) -> Run {
        let net = self
            .net
            .as_ref()
            .expect("a node's own side of a partition needs namespaces");
        self.run_in(net.node_ns(i), args)
    }

    /// Runs a client command in network namespace `ns`.
    fn run_in(&self, ns: &str, args: &[&str]) -> Run {
        let start = std::time::Instant::now();
        let out = self
            .home
            .command_in(ns)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run kvnode");
        Run {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// `NAME@ADDR` of node `i`, for `--via`.
    pub fn via(&self, i: usize) -> String {
        format!("{}@{}", Shape::name_of(i), self.addrs[i])
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// SIGKILL: a crash, no chance to flush or say goodbye.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill9();
            keep_log(&node);
        }
        self.stopped[i] = false;
    }

    /// Starts node `i` again on the address and data directory it had.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "n{} is running", i + 1);
        let node = self.spawn(i, Some(self.addrs[i]));
        self.nodes[i] = Some(node);
    }

    /// SIGSTOP: the process is frozen, its sockets open; requests queue up unanswered.
    pub fn pause(&mut self, i: usize) {
        if let Some(node) = &self.nodes[i] {
            node.signal(libc::SIGSTOP);
            self.stopped[i] = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(node) = &self.nodes[i]
            && self.stopped[i]
        {
            node.signal(libc::SIGCONT);
            self.stopped[i] = false;
        }
    }

    /// Every node running, not frozen, joined.
    pub fn heal(&mut self) {
        for i in 0..self.len() {
            if self.net.is_some() {
                self.unpartition(i);
            }
            self.resume(i);
            if self.nodes[i].is_none() {
                self.restart(i);
            }
        }
    }

    /// The node serving the keys' range: the leader `route --json` names once ranges
    /// replicate, else the owner. Asked of a running node; `None` if none answers.
    pub fn serving(&self) -> Option<usize> {
        let via = (0..self.len()).find(|&i| self.nodes[i].is_some() && !self.stopped[i])?;
        let out = self.run(&[
            "route",
            BUCKET,
            "--json",
            "--timeout",
            "2s",
            "--via",
            &format!("{}@{}", Shape::name_of(via), self.addrs[via]),
        ]);
        if out.code != Some(0) {
            return None;
        }
        let route: serde_json::Value = serde_json::from_str(out.stdout().trim()).ok()?;
        let name = route["leader"].as_str().or_else(|| route["owner"].as_str())?;
        self.shape.index_of(name)
    }

    /// The nodes a role applies to.
    pub fn pick(&self, which: Nodes) -> Vec<usize> {
        match which {
            Nodes::Any => (0..self.len()).collect(),
            Nodes::Owner => self.serving().into_iter().collect(),
        }
    }

    pub fn secret(&self) -> Secret {
        kvnode::secret::SecretSource::Home(self.home.secret_path())
            .load()
            .expect("the cluster's secret")
    }
}

/// What clients do.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub clients: usize,
    pub keys: usize,
    /// Out of ten operations, how many are puts and how many deletes (the rest are gets).
    pub puts: u64,
    pub deletes: u64,
    /// How long a client waits for an answer before it calls the outcome unknown.
    pub timeout: Duration,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            clients: 8,
            keys: 5,
            puts: 4,
            deletes: 1,
            timeout: Duration::from_secs(1),
        }
    }
}

/// Moves the calling thread into namespace `hub`, if any (see [`Cluster::hub`]).
pub fn enter(hub: Option<&str>) {
    if let Some(hub) = hub {
        crate::netns::enter(hub);
    }
}

pub fn key(k: usize) -> String {
    format!("k{k}")
}

fn request(op: &Op) -> Request {
    let bucket_op = match op {
        Op::Put { key, value } => BucketOp::Put {
            key: key.clone().into_bytes(),
            value: value.clone().into_bytes(),
        },
        Op::Get { key } => BucketOp::Get {
            key: key.clone().into_bytes(),
        },
        Op::Delete { key } => BucketOp::Delete {
            key: key.clone().into_bytes(),
        },
    };
    Request::Bucket(BucketRequest {
        bucket: BUCKET.as_bytes().to_vec(),
        op: bucket_op,
        path: vec![],
    })
}

/// A client's connections, one per node, opened when first needed and dropped when broken.
pub struct Conns {
    secret: Secret,
    conns: Vec<Option<Client>>,
    addrs: Vec<SocketAddr>,
}

impl Conns {
    pub fn new(secret: Secret, addrs: Vec<SocketAddr>) -> Self {
        Self {
            secret,
            conns: addrs.iter().map(|_| None).collect(),
            addrs,
        }
    }

    /// Sends `op` through node `i`, recording it in `history` as client `client`. `None` if
    /// no connection could be made: nothing was sent, so nothing is recorded.
    pub async fn run(
        &mut self,
        history: &History,
        client: usize,
        i: usize,
        op: Op,
        timeout: Duration,
    ) -> Option<Outcome> {
        if self.conns[i].is_none() {
            let target = Target {
                addr: self.addrs[i],
                name: None,
            };
            let deadline = tokio::time::Instant::now() + timeout;
            match Client::connect_with(&self.secret, "faults", &target, deadline).await {
                Ok(conn) => self.conns[i] = Some(conn),
                Err(_) => return None,
            }
        }
        let conn = self.conns[i].as_ref()?;
        let id = history.invoke(client, op.clone());
        let answer = conn.call_ref(&request(&op), timeout).await;
        let outcome = history::outcome_of(&op, &answer);
        history.complete(id, outcome.clone());
        // The connection itself failed (not a node on the way): open a new one next time.
        if matches!(
            answer,
            Err(ClientError::Timeout { .. } | ClientError::Unreachable { .. })
        ) {
            self.conns[i] = None;
        }
        Some(outcome)
    }
}

/// One client: random operations through random `entries` until `stop`, each value unique
/// (`c{client}.{seq}`).
pub fn client(
    history: &History,
    client: usize,
    mut rng: Rng,
    workload: Workload,
    mut conns: Conns,
    entries: &[usize],
    stop: &AtomicBool,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a client runtime");
    rt.block_on(async {
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let key = key(rng.below(workload.keys as u64) as usize);
            let roll = rng.below(10);
            let op = if roll < workload.puts {
                seq += 1;
                Op::put(&key, &format!("c{client}.{seq}"))
            } else if roll < workload.puts + workload.deletes {
                Op::delete(&key)
            } else {
                Op::get(&key)
            };
            let i = entries[rng.below(entries.len() as u64) as usize];
            if conns.run(history, client, i, op, workload.timeout).await.is_none() {
                // Unreachable: pace the retries rather than spin against a dead node.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
}

/// After healing: every key read through every node, retried until one get through that node
/// succeeds (a restarted node may take a moment to be routed to again). Recorded as client
/// `client`. Panics, naming the node and key, if a read never succeeds within [`PATIENCE`].
pub fn final_reads(history: &History, client: usize, cluster: &Cluster, workload: Workload) {
    // On a thread of its own, which may enter the nodes' namespace.
    std::thread::scope(|s| {
        s.spawn(|| {
            cluster.enter();
            final_reads_here(history, client, cluster, workload);
        })
        .join()
        .unwrap_or_else(|panic| {
            cluster.keep_logs();
            std::panic::resume_unwind(panic)
        });
    });
    cluster.keep_logs();
}

/// With `FAULT_LOGS=DIR`, appends `node`'s log (stderr) to `DIR/NAME.log`: each process of a
/// run's nodes, killed or at the end, for reading what a failed seed's nodes did.
pub fn keep_log(node: &Node) {
    let Some(dir) = std::env::var_os("FAULT_LOGS") else {
        return;
    };
    let path = std::path::Path::new(&dir).join(format!("{}.log", node.name));
    let text = node.stderr().join("\n");
    let appended = std::fs::create_dir_all(&dir).and_then(|()| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        writeln!(f, "--- {}\n{text}", node.name)
    });
    if let Err(e) = appended {
        eprintln!("cannot keep {}'s log in {}: {e}", node.name, path.display());
    }
}

fn final_reads_here(history: &History, client: usize, cluster: &Cluster, workload: Workload) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let addrs: Vec<SocketAddr> = (0..cluster.len()).map(|i| cluster.addr(i)).collect();
    let secret = cluster.secret();
    rt.block_on(async {
        let mut conns = Conns::new(secret, addrs);
        for i in 0..cluster.len() {
            for k in 0..workload.keys {
                let deadline = std::time::Instant::now() + PATIENCE;
                loop {
                    let got = conns.run(history, client, i, Op::get(&key(k)), workload.timeout).await;
                    if let Some(Outcome::Ok { .. }) = got {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no successful read of {} through n{} within {PATIENCE:?} after healing (last: {got:?})",
                        key(k),
                        i + 1
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}
