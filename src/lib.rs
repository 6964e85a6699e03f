//! kvnode: a distributed key-value store in one binary.
//!
//! Module map, from the edge inwards:
//!
//! - [`app`]: the edge; parses arguments, sets up logging and the runtime, picks exit codes.
//! - [`cli`]: the command line, declared with clap; parsing only.
//! - [`commands`]: the client subcommands (`put`, `get`, `members`, `chat`, ...) and their output.
//! - [`route`]: `kvnode route`: a bucket's owner and replicas, the table, `--set`.
//! - [`stats`]: `kvnode stats`, a node's figures with rates and p50/p99 over the last 10 s.
//! - [`watch`]: `kvnode watch`, a bucket's changes by long polls that resume from the last
//!   position printed (the owner's side: `node::watch` over the store's change feed).
//! - [`stop`]: `kvnode stop`, by SIGTERM for a node of this home, else by a leave request.
//! - [`bench`]: `kvnode bench`, throughput and latency like redis-benchmark.
//! - [`output`]: answers on stdout, as text or JSON Lines.
//! - [`metrics`]: the node's figures (counters and histograms in atomics), their snapshot,
//!   its OpenMetrics text and the `/metrics` HTTP listener (hyper); knows no QUIC and no node.
//! - [`client`]: finding a node (`--via`), connecting and asking it, with exit-coded errors.
//! - [`config`]: the file, environment and flag layers, mapped onto the plain settings of the code
//!   that uses them (`transport::{Limits, Timeouts}`, `gossip::GossipConfig`,
//!   `supervisor::SupervisorConfig`) and resolved into `NodeConfig`. Only the edge and `node` import it.
//! - [`node`]: a running node; wires transport, store, routing and gossip together. A bucket
//!   request is routed in one function, `Node::bucket_now`: applied here, or sent on to its owner,
//!   or for a replicated range (issue 25) proposed or read at its leader (`node::replicated`); the
//!   Raft driver of the node's groups is `node::replicas` over the `kvnode-replica` crate
//!   (`src/replica/`), its frames travel by `node::raft_link`.
//!   Its local listeners (the text protocol, RESP) route every request through it too, by a front session.
//! - [`text_protocol`]: the guide's `kv_server` lines (`CREATE`, `PUT`, `GET`, `DELETE`): splitting,
//!   parsing and answers, sans-IO.
//! - [`rpc`]: many requests in flight over one stream: the calling side, and the serving loop that
//!   polls each request under a panic guard (no task per request).
//! - [`transport`]: QUIC endpoints, node certificates, authenticated connections, their limits and
//!   deadlines (the only code that names quinn).
//! - [`auth`]: the secret-proving handshake bound to the TLS exporter.
//! - [`woken`]: polling a source only when it has signalled (a stream task's cheap wake-ups).
//! - [`resp`]: RESP (Redis's protocol) sans-IO: request parsing, reply encoding, command mapping.
//! - [`wire`]: frames, limits and the request/response messages (knows no quinn).
//! - [`routing`]: the routing table and its parser (knows no network).
//! - [`gossip`]: membership and table spread: the `kvnode-gossip` crate (`src/gossip/`), a
//!   sans-IO SWIM core and its simulator (behind its `sim` feature). It depends on nothing of
//!   this crate: it spreads any [`gossip::Table`] (here the routing table) and knows members by
//!   [`gossip::NodeName`]; `node::gossip` drives it, `config` fills in its settings.
//! - [`supervisor`]: the one_for_one supervisor that restarts failed long-lived parts.
//! - [`store`]: buckets of keys and values, in memory or on disk, and each replicated range's Raft
//!   log and state (`store::group`, `NodeGroupStore`) beside them (knows no network); its
//!   change feed (`store::Feed`) holds the last acknowledged writes for `kvnode watch`.
//! - [`directory`]: the local node directory under `KVNODE_HOME/nodes` (epmd for kvnode).
//! - [`secret`]: where the shared secret comes from and who may read it.
//! - [`keyring`]: the secrets a node accepts and the one it proves with; its file (`kvnode secret`).
//! - [`secret_cmd`]: `kvnode secret install|use|remove|list` and `kvnode keygen`.
//! - [`names`]: the `name`, `name@host:port`, `host:port` forms (a name itself is gossip's `NodeName`).

pub mod app;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod directory;
pub mod keyring;
pub use kvnode_gossip as gossip;
pub mod metrics;
pub mod names;
pub mod node;
pub mod output;
pub mod resp;
pub mod route;
pub mod routing;
pub mod rpc;
pub mod secret;
pub mod secret_cmd;
pub mod stats;
pub mod stop;
pub mod store;
pub mod supervisor;
pub mod text_protocol;
pub mod transport;
pub mod watch;
pub mod wire;
pub mod woken;
