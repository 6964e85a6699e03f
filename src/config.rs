//! Node configuration: the TOML file, and its merge with flags and environment (SPEC §9).
//!
//! Precedence is flag > environment > config file > default. Everything is validated here,
//! once; nothing after this re-parses user input. Reads the config file, touches nothing else.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::gossip::GossipConfig;
use crate::names::{HostPort, NodeName, NodeRef};
use crate::routing::{Entry, RoutingTable, TableError};
use crate::secret::SecretSource;
use crate::supervisor::SupervisorConfig;
use crate::transport::{Limits, Timeouts};

mod gossip;
pub use self::gossip::GossipFile;

/// What the process environment contributes, read once at start-up.
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// `KVNODE_HOME`, else `~/.kvnode`.
    pub home: PathBuf,
    /// `KVNODE_SECRET`.
    pub secret: Option<Vec<u8>>,
    /// `KVNODE_VIA`.
    pub via: Option<String>,
    /// `TOKIO_WORKER_THREADS` as given, checked where it is used ([`Env::threads`]).
    pub worker_threads: Option<String>,
}

impl Env {
    /// Reads `KVNODE_HOME`, `KVNODE_SECRET`, `KVNODE_VIA` and `TOKIO_WORKER_THREADS`.
    pub fn from_process() -> Result<Self, ConfigError> {
        use std::os::unix::ffi::OsStringExt;
        let home = match std::env::var_os("KVNODE_HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h),
            _ => std::env::home_dir()
                .filter(|h| !h.as_os_str().is_empty())
                .map(|h| h.join(".kvnode"))
                .ok_or(ConfigError::NoHome)?,
        };
        Ok(Self {
            home,
            secret: std::env::var_os("KVNODE_SECRET").map(|s| s.into_vec()),
            via: std::env::var("KVNODE_VIA").ok().filter(|v| !v.is_empty()),
            // Empty is unset, as for the other variables.
            worker_threads: std::env::var_os("TOKIO_WORKER_THREADS")
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string_lossy().into_owned()),
        })
    }

    /// `TOKIO_WORKER_THREADS`, if set: a number of threads in 1..=[`MAX_THREADS`]. (Tokio
    /// reads it too, and panics on a bad value; kvnode's runtimes are always told their size.)
    pub fn threads(&self) -> Result<Option<u16>, ConfigError> {
        let Some(raw) = &self.worker_threads else {
            return Ok(None);
        };
        match raw.trim().parse::<u16>() {
            Ok(n @ 1..=MAX_THREADS) => Ok(Some(n)),
            _ => Err(ConfigError::Invalid {
                what: "TOKIO_WORKER_THREADS".into(),
                reason: format!("{raw:?} is not a number of threads in 1..={MAX_THREADS}; unset it for one per core"),
            }),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither `KVNODE_HOME` nor `HOME` is set.
    #[error("neither KVNODE_HOME nor HOME is set; set KVNODE_HOME to a directory kvnode may use")]
    NoHome,
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The config file is not valid TOML or has an unknown key or a bad value.
    /// The message from the TOML parser names the line, column and key.
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    /// No name from `--name` or the config file.
    #[error("no node name: give --name NAME or name = \"NAME\" in the config file")]
    NoName,
    /// A flag's value is not acceptable.
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}

/// A duration written as in the CLI: `500ms`, `5s`, `1.5s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit; write it like 500ms, 5s or 2m"))?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write it like 500ms, 5s or 2m"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{unit:?} in {s:?} is not a unit; use ms, s, m or h")),
    };
    match Duration::try_from_secs_f64(number * scale) {
        // Every duration is added to the clock (a deadline, a timer); beyond any sensible
        // timeout or interval that overflows, and a request's timeout travels in whole
        // milliseconds as 32 bits (49 days) anyway.
        Ok(d) if d > MAX_DURATION => Err(format!("{s:?} is over 30 days, the longest duration kvnode takes")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

/// The longest duration a flag or a config key may give.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A listen address: an IP address and a port (a node binds one socket, so no host name).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not an IP address and port, like 127.0.0.1:4040 or [::1]:4040 (a node listens on an address, not a host name)")
    })
}

fn deserialize_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen(&s).map(Some).map_err(serde::de::Error::custom)
}

/// `text_listen`, if it is a loopback address: the text protocol has no authentication, so
/// anyone who reached it could read and write every bucket of the cluster.
fn loopback_only(addr: SocketAddr) -> Result<SocketAddr, ConfigError> {
    if addr.ip().is_loopback() {
        return Ok(addr);
    }
    Err(ConfigError::Invalid {
        what: "text_listen (--text-listen)".into(),
        reason: format!(
            "{addr} is not a loopback address: the text protocol has no authentication, so anyone who \
             can reach it could read and write every bucket; listen on 127.0.0.1 or [::1] (and reach it \
             from elsewhere through an SSH tunnel, say)"
        ),
    })
}

/// `metrics_listen`, if it is a loopback address or the operator allowed others: the
/// figures need no secret to read, and tell whoever reaches them how busy the cluster is.
fn metrics_listen(addr: Option<SocketAddr>, allow_remote: bool) -> Result<Option<SocketAddr>, ConfigError> {
    match addr {
        Some(a) if !a.ip().is_loopback() && !allow_remote => Err(ConfigError::Invalid {
            what: "metrics_listen (--metrics-listen)".into(),
            reason: format!(
                "{a} is not a loopback address, and /metrics needs no secret to read; listen on \
                 127.0.0.1 or [::1], or say that anyone who can reach {a} may read the figures with \
                 metrics_allow_remote = true (--metrics-allow-remote)"
            ),
        }),
        other => Ok(other),
    }
}

/// An address to advertise: an IP address other nodes and clients can connect to (not a
/// wildcard such as 0.0.0.0), and a port (0: the port the node listens on).
pub fn parse_advertise(s: &str) -> Result<SocketAddr, String> {
    let addr = parse_listen(s)?;
    if addr.ip().is_unspecified() {
        return Err(format!(
            "{s:?} is a wildcard, not an address others can connect to; give this machine's address on the network its peers share, like 10.0.0.2:4040"
        ));
    }
    Ok(addr)
}

/// A path in a config file: not empty (which would mean the current directory of whoever
/// starts the node).
fn deserialize_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let path = PathBuf::deserialize(d)?;
    if path.as_os_str().is_empty() {
        return Err(serde::de::Error::custom(
            "an empty path; give one, or leave the key out for its default",
        ));
    }
    Ok(Some(path))
}

fn deserialize_advertise<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_advertise(&s).map(Some).map_err(serde::de::Error::custom)
}

/// A duration in a config file (a TOML string such as "5s"), at least 1ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match parse_duration(&s) {
            // A timeout, an interval or a window: under a millisecond (QUIC's idle timeout
            // and the timers count whole ones) would time out everything at once or spin a
            // timer. Leave the key out for its default.
            Ok(d) if d < Duration::from_millis(1) => Err(serde::de::Error::custom(format!(
                "{s:?} is under 1ms; give at least 1ms, like 500ms, or leave the key out for its default"
            ))),
            Ok(d) => Ok(ConfigDuration(d)),
            Err(e) => Err(serde::de::Error::custom(e)),
        }
    }
}

/// A duration in a config file that may be zero: `timeouts.shutdown = "0s"` stops without
/// waiting for requests in flight, like `docker stop -t 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDurationOrZero(pub Duration);

impl<'de> Deserialize<'de> for ConfigDurationOrZero {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(ConfigDurationOrZero)
            .map_err(serde::de::Error::custom)
    }
}

/// A count in the config file that must be at least 1 (a limit, a fan-out, a multiplier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtLeastOne<T>(pub T);

impl<'de, T> Deserialize<'de> for AtLeastOne<T>
where
    T: Deserialize<'de> + Default + PartialEq + std::fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = T::deserialize(d)?;
        if n == T::default() {
            return Err(serde::de::Error::custom(format!(
                "{n} is not allowed here: give at least 1, or leave the key out for its default"
            )));
        }
        Ok(AtLeastOne(n))
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `threads = N` in a config file: 1 to [`MAX_THREADS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threads(pub u16);

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u16::try_from(n) {
            Ok(n @ 1..=MAX_THREADS) => Ok(Threads(n)),
            _ => Err(serde::de::Error::custom(format!(
                "threads = {n} is not in 1..={MAX_THREADS}; leave it out for one thread per core"
            ))),
        }
    }
}

/// `routing_table = ["a-m=foo", "n-z=bar"]`, validated as a whole (overlaps are errors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec(pub Vec<Entry>);

impl TableSpec {
    pub fn parse<'a>(specs: impl IntoIterator<Item = &'a str>) -> Result<Self, TableError> {
        RoutingTable::parse(specs, 0, "").map(|t| TableSpec(t.entries().to_vec()))
    }
}

impl<'de> Deserialize<'de> for TableSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let specs = Vec::<String>::deserialize(d)?;
        TableSpec::parse(specs.iter().map(String::as_str)).map_err(serde::de::Error::custom)
    }
}

/// The config file as written; every key optional, unknown keys refused.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub name: Option<NodeName>,
    #[serde(default, deserialize_with = "deserialize_listen")]
    pub listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "deserialize_advertise")]
    pub advertise: Option<SocketAddr>,
    /// Where the guide's text protocol listens (TCP, loopback only); off when not set.
    #[serde(default, deserialize_with = "deserialize_listen")]
    pub text_listen: Option<SocketAddr>,
    /// Where `/metrics` is served (plain HTTP); off when not set. Loopback only unless
    /// `metrics_allow_remote`.
    #[serde(default, deserialize_with = "deserialize_listen")]
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_allow_remote: Option<bool>,
    pub join: Option<Vec<NodeRef>>,
    pub routing_table: Option<TableSpec>,
    pub peers: Option<BTreeMap<NodeName, HostPort>>,
    #[serde(default, deserialize_with = "deserialize_path")]
    pub data_dir: Option<PathBuf>,
    pub in_memory: Option<bool>,
    pub auto_reply: Option<String>,
    pub threads: Option<Threads>,
    #[serde(default, deserialize_with = "deserialize_listen")]
    pub resp_listen: Option<SocketAddr>,
    pub resp_bucket: Option<String>,
    pub resp_tls: Option<bool>,
    #[serde(default, deserialize_with = "deserialize_path")]
    pub secret_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub supervisor: SupervisorFile,
    #[serde(default)]
    pub gossip: GossipFile,
    /// Issue 26: the cluster balances its table by itself (see [`Balance`]).
    pub auto_balance: Option<bool>,
    pub balance_after: Option<ConfigDuration>,
    pub max_moves: Option<AtLeastOne<usize>>,
}

/// `auto_balance`, `balance_after`, `max_moves`: the coordinator spreads the ranges over the
/// live members by itself (as `route --balance` does) once a member has joined, or has been
/// dead for `balance_after`, moving at most `max_moves` ranges at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    pub auto: bool,
    pub after: Duration,
    pub max_moves: usize,
}

impl Default for Balance {
    fn default() -> Self {
        Balance {
            auto: false,
            after: Duration::from_secs(60),
            max_moves: 2,
        }
    }
}

/// How the log is written (`--log-format`, `log_format`); the flag's values are `cli`'s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for machines.
    Json,
}

/// `[timeouts]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub request: Option<ConfigDuration>,
    pub handshake: Option<ConfigDuration>,
    pub idle: Option<ConfigDuration>,
    pub shutdown: Option<ConfigDurationOrZero>,
}

/// `[limits]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_connections: Option<AtLeastOne<u32>>,
    pub max_handshakes: Option<AtLeastOne<u32>>,
    pub max_streams_per_connection: Option<AtLeastOne<u32>>,
    pub max_requests_per_stream: Option<AtLeastOne<u32>>,
}

/// `[supervisor]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorFile {
    pub max_restarts: Option<u32>,
    pub restart_window: Option<ConfigDuration>,
}

impl ConfigFile {
    /// Reads and validates a config file; errors name the file, line and key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        };
        let invalid = |message: &str| ConfigError::Parse {
            path: path.display().to_string(),
            message: message.to_string(),
        };
        // Bounded: `--config /dev/zero`, or a huge file by mistake, would fill the memory.
        let mut text = String::new();
        let file = std::fs::File::open(path).map_err(read)?;
        file.take(MAX_CONFIG + 1).read_to_string(&mut text).map_err(read)?;
        if text.len() as u64 > MAX_CONFIG {
            return Err(invalid("it is over 1 MiB; a node's settings take a few lines"));
        }
        let mut file = Self::parse(&text).map_err(|message| invalid(&message))?;
        // Relative paths in a config file are relative to the file, not to wherever the
        // node happens to be started from.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut file.data_dir, &mut file.secret_file].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(file)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }
}

/// The largest config file read.
const MAX_CONFIG: u64 = 1 << 20;

/// Everything a node needs to start, resolved and validated.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: NodeName,
    pub home: PathBuf,
    pub listen: SocketAddr,
    /// The address given to others (directory, gossip, handshakes) when it is not `listen`;
    /// see [`crate::transport::advertised`].
    pub advertise: Option<SocketAddr>,
    /// Where the guide's text protocol listens (TCP); `None`: it does not. Loopback only.
    pub text_listen: Option<SocketAddr>,
    /// Where `/metrics` is served (HTTP); `None`: it is not. Loopback unless allowed.
    pub metrics_listen: Option<SocketAddr>,
    pub join: Vec<NodeRef>,
    /// The configured table; `None` means "own everything until a cluster says otherwise".
    pub table: Option<Vec<Entry>>,
    pub peers: BTreeMap<NodeName, HostPort>,
    pub data_dir: PathBuf,
    pub in_memory: bool,
    pub auto_reply: Option<String>,
    /// Threads serving requests; `None` is one per core. With 1 the node is one event loop
    /// on one thread (a current-thread runtime), with no hand-offs between worker threads.
    pub threads: Option<u16>,
    /// The RESP listener, when there is one.
    pub resp: Option<RespConfig>,
    pub secret: SecretSource,
    pub log_format: LogFormat,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub supervisor: SupervisorConfig,
    pub gossip: GossipConfig,
    pub balance: Balance,
}

/// The `kvnode start` flags, as far as configuration is concerned.
#[derive(Clone, Debug, Default)]
pub struct StartFlags {
    pub name: Option<NodeName>,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    pub text_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_allow_remote: bool,
    pub join: Vec<NodeRef>,
    pub config: Option<PathBuf>,
    pub table: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub in_memory: bool,
    pub auto_reply: Option<String>,
    pub threads: Option<u16>,
    pub resp_listen: Option<SocketAddr>,
    pub resp_bucket: Option<String>,
    pub resp_tls: bool,
    pub secret_file: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub log_format: Option<LogFormat>,
}

/// The RESP listener's settings (`resp_listen`, `resp_bucket`, `resp_tls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RespConfig {
    pub listen: SocketAddr,
    /// The bucket of the string commands.
    pub bucket: Vec<u8>,
    /// TLS with the node's certificate.
    pub tls: bool,
}

/// The bucket of RESP's string commands when `resp_bucket` is not set.
pub const DEFAULT_RESP_BUCKET: &str = "redis";

impl RespConfig {
    /// The RESP settings from flags and file; a non-loopback address without TLS is refused,
    /// since a client's password (the cluster secret) would cross the network in clear text.
    fn resolve(listen: Option<SocketAddr>, bucket: Option<String>, tls: bool) -> Result<Option<Self>, ConfigError> {
        let bucket = bucket.unwrap_or_else(|| DEFAULT_RESP_BUCKET.into());
        if bucket.is_empty() || bucket.len() > crate::wire::MAX_BUCKET {
            return Err(ConfigError::Invalid {
                what: "resp_bucket".into(),
                reason: format!("{bucket:?} must be 1 to {} bytes", crate::wire::MAX_BUCKET),
            });
        }
        let Some(listen) = listen else {
            return Ok(None);
        };
        if !listen.ip().is_loopback() && !tls {
            return Err(ConfigError::Invalid {
                what: "resp_listen".into(),
                reason: format!(
                    "{listen} is not a loopback address, and a RESP client's password is the cluster secret: without TLS it would cross the network in clear text; set resp_tls = true (or --resp-tls), or listen on 127.0.0.1"
                ),
            });
        }
        Ok(Some(Self {
            listen,
            bucket: bucket.into_bytes(),
            tls,
        }))
    }
}

/// The most threads a node may be given (`--threads`, `threads`).
pub const MAX_THREADS: u16 = 1024;

/// The default listen address: loopback, ephemeral port (recorded in the node directory).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:0";

impl NodeConfig {
    /// Merges flags, environment, config file and defaults, in that order of precedence.
    pub fn resolve(flags: StartFlags, env: &Env) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let name = flags.name.or(file.name).ok_or(ConfigError::NoName)?;
        let table = match flags.table {
            Some(spec) => Some(
                TableSpec::parse([spec.as_str()])
                    .map_err(|e| ConfigError::Invalid {
                        what: "--table".into(),
                        reason: e.to_string(),
                    })?
                    .0,
            ),
            None => file.routing_table.map(|t| t.0),
        };
        // A flag beats the file: `--data-dir` makes a durable node even where the file says
        // `in_memory = true`, `--in-memory` an in-memory one whatever its data_dir (the
        // certificate is kept there). With neither flag, the file must not say both, as the
        // flags must not (clap refuses them together): one would be ignored, and a copy of
        // an in-memory example given a data_dir would lose its data at every stop.
        if flags.data_dir.is_none() && !flags.in_memory && file.in_memory == Some(true) && file.data_dir.is_some() {
            return Err(ConfigError::Parse {
                path: flags.config.as_deref().unwrap_or(Path::new("")).display().to_string(),
                message: "in_memory = true and data_dir together: keep the data in memory (lost at every stop) or in data_dir, not both; remove one (or give --in-memory or --data-dir)".into(),
            });
        }
        let in_memory = flags.in_memory || (flags.data_dir.is_none() && file.in_memory.unwrap_or(false));
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| env.home.join(name.as_str()));
        let secret = SecretSource::choose(flags.secret_file, env.secret.clone(), file.secret_file, &env.home);
        let d = Timeouts::default();
        let t = &file.timeouts;
        let timeouts = Timeouts {
            request: flags.timeout.or(t.request.map(|d| d.0)).unwrap_or(d.request),
            handshake: t.handshake.map_or(d.handshake, |d| d.0),
            idle: t.idle.map_or(d.idle, |d| d.0),
            shutdown: t.shutdown.map_or(d.shutdown, |d| d.0),
        };
        let dl = Limits::default();
        let limit = |v: Option<AtLeastOne<u32>>, default| v.map_or(default, |v| v.0);
        let l = &file.limits;
        let limits = Limits {
            max_connections: limit(l.max_connections, dl.max_connections),
            max_handshakes: limit(l.max_handshakes, dl.max_handshakes),
            max_streams_per_connection: limit(l.max_streams_per_connection, dl.max_streams_per_connection),
            max_requests_per_stream: limit(l.max_requests_per_stream, dl.max_requests_per_stream),
        };
        let threads = match flags.threads {
            Some(n) => Some(n),
            None => env.threads()?.or(file.threads.map(|t| t.0)),
        };
        let ds = SupervisorConfig::default();
        let supervisor = SupervisorConfig {
            max_restarts: file.supervisor.max_restarts.unwrap_or(ds.max_restarts),
            window: file.supervisor.restart_window.map_or(ds.window, |d| d.0),
        };
        let gossip = file.gossip.resolve();
        let resp = RespConfig::resolve(
            flags.resp_listen.or(file.resp_listen),
            flags.resp_bucket.or(file.resp_bucket),
            flags.resp_tls || file.resp_tls.unwrap_or(false),
        )?;
        let mut join = flags.join;
        if join.is_empty() {
            join = file.join.unwrap_or_default();
        }
        Ok(Self {
            name,
            home: env.home.clone(),
            listen: flags
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            advertise: flags.advertise.or(file.advertise),
            text_listen: flags.text_listen.or(file.text_listen).map(loopback_only).transpose()?,
            metrics_listen: metrics_listen(
                flags.metrics_listen.or(file.metrics_listen),
                flags.metrics_allow_remote || file.metrics_allow_remote.unwrap_or(false),
            )?,
            join,
            table,
            peers: file.peers.unwrap_or_default(),
            data_dir,
            in_memory,
            auto_reply: flags.auto_reply.or(file.auto_reply),
            threads,
            resp,
            secret,
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            timeouts,
            limits,
            supervisor,
            gossip,
            balance: Balance {
                auto: file.auto_balance.unwrap_or(false),
                after: file.balance_after.map_or(Balance::default().after, |d| d.0),
                max_moves: file.max_moves.map_or(Balance::default().max_moves, |m| m.0),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_without() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5y").unwrap_err().contains("not a unit"));
        assert!(parse_duration("fast").is_err());
        // Added to the clock, a huge one panicked.
        assert_eq!(parse_duration("720h"), Ok(MAX_DURATION));
        for huge in ["721h", "5000000000000000h", "1e300s"] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
    }

    #[test]
    fn a_full_config_file_parses() {
        let f = ConfigFile::parse(
            r#"
            name = "foo"
            listen = "127.0.0.1:4040"
            join = ["bar", "baz@10.0.0.3:4040"]
            routing_table = ["a-m=foo", "n-z=bar"]
            data_dir = "/tmp/foo"
            in_memory = true
            auto_reply = "chicken?"
            [peers]
            bar = "10.0.0.2:4040"
            [timeouts]
            request = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(f.name.unwrap().as_str(), "foo");
        assert_eq!(f.join.unwrap().len(), 2);
        assert_eq!(f.routing_table.unwrap().0.len(), 2);
        assert_eq!(f.timeouts.request, Some(ConfigDuration(Duration::from_secs(2))));
        assert_eq!(f.peers.unwrap().len(), 1);
    }

    #[test]
    fn threads_come_from_the_flag_then_the_environment_then_the_file_and_zero_is_refused() {
        let env = Env {
            home: "/tmp/kvnode-test-home".into(),
            ..Env::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(&path, "name = \"n\"\nthreads = 2\n").unwrap();
        let flags = |threads| StartFlags {
            config: Some(path.clone()),
            threads,
            ..StartFlags::default()
        };
        assert_eq!(NodeConfig::resolve(flags(None), &env).unwrap().threads, Some(2));
        assert_eq!(NodeConfig::resolve(flags(Some(1)), &env).unwrap().threads, Some(1));
        let default = StartFlags {
            name: Some("n".parse().unwrap()),
            ..StartFlags::default()
        };
        assert_eq!(
            NodeConfig::resolve(default, &env).unwrap().threads,
            None,
            "one per core"
        );

        // TOKIO_WORKER_THREADS comes between the flag and the file, and is checked.
        let with_env = |v: &str| Env {
            worker_threads: Some(v.into()),
            ..env.clone()
        };
        assert_eq!(
            NodeConfig::resolve(flags(None), &with_env("3")).unwrap().threads,
            Some(3)
        );
        assert_eq!(
            NodeConfig::resolve(flags(Some(1)), &with_env("3")).unwrap().threads,
            Some(1)
        );
        assert_eq!(
            NodeConfig::resolve(flags(Some(1)), &with_env("abc")).unwrap().threads,
            Some(1)
        );
        for bad in ["abc", "0", "", "2000"] {
            let err = NodeConfig::resolve(flags(None), &with_env(bad))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("invalid TOKIO_WORKER_THREADS: ") && err.contains(&format!("{bad:?} is not")),
                "{bad}: {err}"
            );
        }

        for bad in ["0", "-1", "2000", "70000", "\"two\""] {
            std::fs::write(&path, format!("name = \"n\"\nthreads = {bad}\n")).unwrap();
            let err = NodeConfig::resolve(flags(None), &env).unwrap_err().to_string();
            assert!(
                err.contains("n.toml") && err.contains("line 2") && err.contains("threads"),
                "{bad}: {err}"
            );
        }
        let err = ConfigFile::parse("threads = 0").unwrap_err();
        assert!(err.contains("threads = 0 is not in 1..=1024"), "{err}");
    }

    #[test]
    fn a_typo_in_a_key_names_the_line_and_the_key() {
        let err = ConfigFile::parse("name = \"foo\"\nlsiten = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("lsiten"), "{err}");
    }

    #[test]
    fn bad_values_name_the_line_and_say_why() {
        let cases = [
            ("name = \"Foo\"", "contains 'F'"),
            ("listen = \"nowhere\"", "line 1"),
            ("listen = \"localhost:4040\"", "is not an IP address and port"),
            ("advertise = \"0.0.0.0:4040\"", "is a wildcard"),
            ("advertise = \"[::]:0\"", "is a wildcard"),
            ("routing_table = [\"a-m=foo\", \"k-z=bar\"]", "overlap"),
            ("[timeouts]\nrequest = \"5 parsecs\"", "line 2"),
            ("[limits]\nmax_connections = -1", "line 2"),
        ];
        for (text, expect) in cases {
            let err = ConfigFile::parse(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }

    #[test]
    fn durations_under_a_millisecond_and_zero_counts_are_refused() {
        // Each of these, at zero, left a node that logged "node up" and then served nobody,
        // or flapped members, or spun a timer.
        for (table, key) in [
            ("timeouts", "request"),
            ("timeouts", "handshake"),
            ("timeouts", "idle"),
            ("supervisor", "restart_window"),
            ("gossip", "probe_interval"),
            ("gossip", "probe_timeout"),
            ("gossip", "gossip_interval"),
            ("gossip", "push_pull_interval"),
            ("gossip", "reconnect_interval"),
            ("gossip", "dead_retention"),
            ("gossip", "join_timeout"),
            ("gossip", "join_retry_max"),
        ] {
            // Under a millisecond acts as zero: QUIC's idle timeout counts whole ones.
            for zero in ["0ms", "0s", "0.0s", "0.4ms"] {
                let text = format!("name = \"n\"\n[{table}]\n{key} = \"{zero}\"\n");
                let err = ConfigFile::parse(&text).unwrap_err();
                assert!(err.contains("line 3") && err.contains(key), "{text}: {err}");
                assert!(err.contains("is under 1ms; give at least 1ms"), "{text}: {err}");
            }
            ConfigFile::parse(&format!("[{table}]\n{key} = \"1ms\"\n")).unwrap();
        }
        // Zero is meaningful here: stop without waiting for requests in flight.
        let f = ConfigFile::parse("[timeouts]\nshutdown = \"0s\"\n").unwrap();
        assert_eq!(f.timeouts.shutdown, Some(ConfigDurationOrZero(Duration::ZERO)));
        for (table, key) in [
            ("limits", "max_connections"),
            ("limits", "max_handshakes"),
            ("limits", "max_streams_per_connection"),
            ("limits", "max_requests_per_stream"),
            ("gossip", "gossip_fanout"),
            ("gossip", "suspicion_mult"),
            ("gossip", "suspicion_max_mult"),
            ("gossip", "retransmit_mult"),
            ("gossip", "awareness_max_multiplier"),
        ] {
            let text = format!("name = \"n\"\n[{table}]\n{key} = 0\n");
            let err = ConfigFile::parse(&text).unwrap_err();
            assert!(err.contains("line 3") && err.contains(key), "{text}: {err}");
            assert!(err.contains("give at least 1"), "{text}: {err}");
            ConfigFile::parse(&format!("[{table}]\n{key} = 1\n")).unwrap();
        }
        // Zero switches these off, as in memberlist.
        ConfigFile::parse("[gossip]\nindirect_checks = 0\nhot_rumor_fanout = 0\n").unwrap();
    }

    #[test]
    fn data_dir_given_as_a_flag_beats_in_memory_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env {
            home: dir.path().join("home"),
            ..Env::default()
        };
        let file = |text: &str| {
            let path = dir.path().join("n.toml");
            std::fs::write(&path, text).unwrap();
            path
        };
        let resolve = |config, data_dir: Option<&str>, in_memory| {
            NodeConfig::resolve(
                StartFlags {
                    config: Some(config),
                    data_dir: data_dir.map(PathBuf::from),
                    in_memory,
                    ..Default::default()
                },
                &env,
            )
        };
        // The shipped examples say in_memory = true: --data-dir must make the node durable.
        let in_memory = file("name = \"n\"\nin_memory = true\n");
        let c = resolve(in_memory.clone(), Some("/tmp/n-data"), false).unwrap();
        assert!(!c.in_memory);
        assert_eq!(c.data_dir, Path::new("/tmp/n-data"));
        assert!(resolve(in_memory.clone(), None, false).unwrap().in_memory);
        assert!(resolve(in_memory, None, true).unwrap().in_memory);
        let durable = file("name = \"n\"\ndata_dir = \"/tmp/n-data\"\n");
        assert!(
            resolve(durable.clone(), None, true).unwrap().in_memory,
            "--in-memory beats data_dir"
        );
        assert!(!resolve(durable, None, false).unwrap().in_memory);
        // Both keys in one file: refused, as the two flags are (one would be ignored, and
        // a copy of an in-memory example given a data_dir would lose its data at every stop);
        // unless a flag settles it.
        let both = file("name = \"n\"\nin_memory = true\ndata_dir = \"/tmp/n-data\"\n");
        let err = resolve(both.clone(), None, false).unwrap_err().to_string();
        assert!(err.contains("in_memory = true and data_dir together"), "{err}");
        assert!(!resolve(both.clone(), Some("/tmp/other"), false).unwrap().in_memory);
        let c = resolve(both, None, true).unwrap();
        assert!(c.in_memory);
        assert_eq!(c.data_dir, Path::new("/tmp/n-data"));
        // A key present but false is no conflict.
        let off = file("name = \"n\"\nin_memory = false\ndata_dir = \"/tmp/n-data\"\n");
        assert!(!resolve(off, None, false).unwrap().in_memory);
    }

    #[test]
    fn empty_paths_and_oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for key in ["data_dir", "secret_file"] {
            let path = dir.path().join("e.toml");
            std::fs::write(&path, format!("name = \"n\"\n{key} = \"\"\n")).unwrap();
            let err = ConfigFile::load(&path).unwrap_err().to_string();
            assert!(err.contains("an empty path") && err.contains(key), "{err}");
        }
        let big = dir.path().join("big.toml");
        std::fs::write(&big, "#".repeat(MAX_CONFIG as usize + 1)).unwrap();
        let err = ConfigFile::load(&big).unwrap_err().to_string();
        assert!(err.contains("over 1 MiB"), "{err}");
        let err = ConfigFile::load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(err.contains("over 1 MiB"), "{err}");
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("foo.toml");
        std::fs::write(
            &path,
            "name = \"foo\"\nlisten = \"127.0.0.1:4040\"\nadvertise = \"10.0.0.2:4040\"\nauto_reply = \"hi\"\n[timeouts]\nrequest = \"2s\"\n",
        )
        .unwrap();
        let env = Env {
            home: dir.path().join("home"),
            ..Env::default()
        };
        let from_file = NodeConfig::resolve(
            StartFlags {
                config: Some(path.clone()),
                ..Default::default()
            },
            &env,
        )
        .unwrap();
        assert_eq!(from_file.name.as_str(), "foo");
        assert_eq!(from_file.listen.port(), 4040);
        assert_eq!(from_file.advertise, Some("10.0.0.2:4040".parse().unwrap()));
        assert_eq!(from_file.timeouts.request, Duration::from_secs(2));
        assert_eq!(from_file.data_dir, env.home.join("foo"));
        let flagged = NodeConfig::resolve(
            StartFlags {
                config: Some(path),
                name: Some(NodeName::new("bar").unwrap()),
                listen: Some("127.0.0.1:5050".parse().unwrap()),
                advertise: Some("10.0.0.3:5050".parse().unwrap()),
                timeout: Some(Duration::from_secs(9)),
                ..Default::default()
            },
            &env,
        )
        .unwrap();
        assert_eq!(flagged.name.as_str(), "bar");
        assert_eq!(flagged.listen.port(), 5050);
        assert_eq!(flagged.advertise, Some("10.0.0.3:5050".parse().unwrap()));
        assert_eq!(flagged.timeouts.request, Duration::from_secs(9));
        assert_eq!(flagged.auto_reply.as_deref(), Some("hi"));
        let none = NodeConfig::resolve(StartFlags::default(), &env).unwrap_err();
        assert!(matches!(none, ConfigError::NoName));
    }

    #[test]
    fn metrics_listen_on_another_address_than_loopback_must_be_allowed() {
        let at = |a: &str| Some(a.parse::<SocketAddr>().unwrap());
        assert_eq!(metrics_listen(None, false).unwrap(), None);
        assert_eq!(
            metrics_listen(at("127.0.0.1:9187"), false).unwrap(),
            at("127.0.0.1:9187")
        );
        let err = metrics_listen(at("0.0.0.0:9187"), false).unwrap_err().to_string();
        assert!(err.contains("metrics_allow_remote = true"), "{err}");
        assert_eq!(metrics_listen(at("0.0.0.0:9187"), true).unwrap(), at("0.0.0.0:9187"));
    }

    #[test]
    fn the_text_listener_is_off_by_default_and_binds_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env {
            home: dir.path().join("home"),
            ..Env::default()
        };
        let path = dir.path().join("t.toml");
        let resolve = |file: &str, flag: Option<&str>| {
            std::fs::write(&path, format!("name = \"n\"\n{file}")).unwrap();
            let flags = StartFlags {
                config: Some(path.clone()),
                text_listen: flag.map(|a| a.parse().unwrap()),
                ..StartFlags::default()
            };
            NodeConfig::resolve(flags, &env).map(|c| c.text_listen.map(|a| a.to_string()))
        };
        assert_eq!(resolve("", None).unwrap(), None);
        let from_file = "text_listen = \"127.0.0.1:4040\"\n";
        assert_eq!(resolve(from_file, None).unwrap().as_deref(), Some("127.0.0.1:4040"));
        assert_eq!(
            resolve(from_file, Some("[::1]:4041")).unwrap().as_deref(),
            Some("[::1]:4041")
        );
        for wide in ["0.0.0.0:4040", "10.0.0.2:4040", "[::]:4040"] {
            let err = resolve("", Some(wide)).unwrap_err().to_string();
            assert!(err.starts_with("invalid text_listen (--text-listen): "), "{err}");
            assert!(
                err.contains("not a loopback address") && err.contains("no authentication"),
                "{err}"
            );
            let err = resolve(&format!("text_listen = \"{wide}\"\n"), None).unwrap_err();
            assert!(err.to_string().contains("no authentication"), "{err}");
        }
        let err = ConfigFile::parse("text_listen = \"localhost:4040\"").unwrap_err();
        assert!(
            err.contains("text_listen") && err.contains("not an IP address and port"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_table_flag_quotes_the_entry() {
        let env = Env {
            home: "/tmp/h".into(),
            ..Env::default()
        };
        let err = NodeConfig::resolve(
            StartFlags {
                name: Some(NodeName::new("foo").unwrap()),
                table: Some("a-m=foo,m-z=bar".into()),
                ..Default::default()
            },
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--table") && err.contains("\"m-z=bar\""), "{err}");
    }

    #[test]
    fn the_example_configs_in_the_repository_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                ConfigFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen >= 4, "config/ holds the example files");
    }

    #[test]
    fn the_resp_listener_needs_tls_off_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let file = |text: &str| {
            let path = dir.path().join("resp.toml");
            std::fs::write(&path, format!("name = \"foo\"\n{text}")).unwrap();
            NodeConfig::resolve(
                StartFlags {
                    config: Some(path),
                    ..Default::default()
                },
                &Env {
                    home: dir.path().join("home"),
                    ..Env::default()
                },
            )
        };
        assert_eq!(file("").unwrap().resp, None);
        let local = file("resp_listen = \"127.0.0.1:6379\"").unwrap().resp.unwrap();
        assert_eq!((local.bucket.as_slice(), local.tls), (&b"redis"[..], false));
        let err = file("resp_listen = \"0.0.0.0:6379\"").unwrap_err().to_string();
        assert!(err.contains("resp_listen") && err.contains("resp_tls = true"), "{err}");
        let tls = file("resp_listen = \"0.0.0.0:6379\"\nresp_tls = true\nresp_bucket = \"kv\"");
        let tls = tls.unwrap().resp.unwrap();
        assert_eq!((tls.bucket.as_slice(), tls.tls), (&b"kv"[..], true));
        assert!(
            file("resp_bucket = \"\"")
                .unwrap_err()
                .to_string()
                .contains("resp_bucket")
        );
    }
}
