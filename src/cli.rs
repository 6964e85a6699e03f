//! The command line, declared with clap. Parsing only: no IO, no defaults from the environment
//! beyond what clap reads (`KVNODE_VIA`); `app` turns it into resolved settings.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, ArgGroup, Args, Parser, Subcommand};

use crate::bench::{BenchSettings, BenchTest, test_name};
use crate::config::{LogFormat, MAX_THREADS, parse_duration};
use crate::names::{NodeName, NodeRef};

const ABOUT: &str = "A distributed key-value store in one binary: named nodes, gossip membership, \
routed buckets, QUIC with a shared secret.";

const EXAMPLES: &str = "\
Examples:
  kvnode start --name foo                 # run a node (in another terminal, or with &)
  kvnode put shopping eggs 3 --via foo    # store a value
  kvnode get shopping eggs --via foo      # prints 3
  kvnode chat kate \"hi\"                   # printed on kate's stdout
  kvnode stop foo                         # stop it (it tells the cluster it leaves)

Exit codes: 0 ok, 1 not found, 2 bad usage, 3 unreachable or deadline passed,
4 authentication refused, 5 routing failed, 6 internal error on the node.";

#[derive(Parser, Debug)]
#[command(name = "kvnode", version, about = ABOUT, after_help = EXAMPLES, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Args, Debug, Clone, Default)]
pub struct Global {
    /// Read the shared secret from FILE (must be mode 0600); overrides KVNODE_SECRET. A node
    /// whose data directory holds a keyring (made by `kvnode secret`) uses that instead
    #[arg(long, global = true, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Give up after this long, e.g. 500ms, 5s, 1m [default: 5s]
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Print answers, and errors, as JSON Lines on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v, -vv)
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less log output on stderr (-q, -qq)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub quiet: u8,
    /// How logs on stderr look
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node in the foreground until SIGINT or SIGTERM
    #[command(
        after_help = "Examples:\n  kvnode start --name foo\n  kvnode start --name bar --join foo --table 'a-m=foo,n-z=bar'\n  kvnode start --config config/foo.toml\n  kvnode start --name foo --text-listen 127.0.0.1:4040   # then: telnet 127.0.0.1 4040"
    )]
    Start(StartArgs),
    /// Create BUCKET, empty, if it does not exist (prints nothing on success)
    ///
    /// The guide's CREATE: a bucket that exists is left as it is (exit 0). `put` creates a
    /// bucket by itself; `create` makes one that reads find before anything is written.
    #[command(
        after_help = "Examples:\n  kvnode create shopping --via foo\n  kvnode keys shopping --via foo   # an empty list, not \"not found\""
    )]
    Create(BucketArgs),
    /// Store VALUE under KEY in BUCKET (prints nothing on success)
    #[command(after_help = "Examples:\n  kvnode put shopping eggs 3 --via foo\n  date | kvnode put log today -")]
    Put(PutArgs),
    /// Print the value stored under KEY in BUCKET
    #[command(after_help = "Examples:\n  kvnode get shopping eggs --via foo\n  kvnode get files logo --raw > logo.png")]
    Get(GetArgs),
    /// Remove KEY from BUCKET (prints nothing on success)
    #[command(after_help = "Example:\n  kvnode delete shopping eggs --via foo")]
    Delete(KeyArgs),
    /// Print the node that owns BUCKET, the routing table or the moves under way; set a new
    /// table (moving the data of ranges whose nodes change), or balance it over the members
    #[command(
        after_help = "Examples:\n  owner=$(kvnode route hello)\n  kvnode route hello --json        # with the hops taken and the range's replicas\n  kvnode route --table\n  kvnode route --set 'a-m=foo,n-z=bar'\n  kvnode route --set 'a-m=foo,n-z=bar' --if-version 3   # only over version 3\n  kvnode route --status                # the moves under way\n  kvnode route --balance --dry-run     # the plan that would spread the ranges"
    )]
    Route(RouteArgs),
    /// Send a message to NODE, which prints it; no MESSAGE: one message per stdin line
    #[command(
        after_help = "Examples:\n  kvnode chat kate \"hi\"\n  kvnode chat moebi hi --via alex\n  printf 'one\\ntwo\\n' | kvnode chat kate"
    )]
    Chat(ChatArgs),
    /// List the members a node knows: name, address, state, incarnation, last seen
    #[command(after_help = "Example:\n  kvnode members --via foo")]
    Members(ViaArgs),
    /// A node's figures (as its /metrics shows them): requests, latency, members, store, process
    #[command(
        after_help = "Examples:\n  kvnode stats --via foo\n  kvnode stats --json | jq .now.requests\n\nRates and p50/p99 latencies are over the last 10 s, totals since the node started."
    )]
    Stats(ViaArgs),
    /// Print pong if NODE answers (exit 0), else pang (exit 3; 4 if it refused our secret)
    #[command(after_help = "Example:\n  kvnode ping foo && echo up")]
    Ping(PingArgs),
    /// Print the keys of BUCKET, one per line
    #[command(after_help = "Example:\n  kvnode keys shopping --via foo")]
    Keys(BucketArgs),
    /// Print each change to BUCKET (or to its KEY) as it is acknowledged, until interrupted
    ///
    /// One line per change made after the watch starts, in the order they took effect:
    /// `put KEY VALUE` or `delete KEY`. Values print as `get` prints them, except that one
    /// holding a line break or other control bytes, or that is not UTF-8, is escaped (`\n`,
    /// `\xNN`), so that each change is one line; --json gives every byte (`value_hex`).
    /// With --json, one object a line: op, bucket, key, value (no value for a delete) and the
    /// position that orders it (owner node, the owner's epoch, seq; in a replicated range,
    /// the range and its log index as seq).
    ///
    /// Works through any node; the watch follows the bucket's owner, or a replicated
    /// range's leader across a failover. If the connection breaks, the watch reconnects
    /// (through the same node, for up to --timeout) and resumes after the last change it
    /// printed, never printing one twice. If it cannot resume without a gap (the owner
    /// restarted or changed, a replica took over that did not hold the changes since), or if
    /// it fell behind the feed (the last 4096 changes, 16 MiB), it says so and exits 3.
    /// SIGINT or SIGTERM end it at once, as they end any client command.
    #[command(after_help = WATCH_EXAMPLES)]
    Watch(WatchArgs),
    /// Stop NODE as SIGTERM would (it tells the cluster it leaves), and wait until it is gone
    #[command(
        after_help = "Examples:\n  kvnode stop foo                  # a node of this KVNODE_HOME: SIGTERM\n  kvnode stop bar --via foo        # a node foo knows: a leave request\n  kvnode stop bar@10.0.0.2:4040\n\nExit 3 if it is not gone within --timeout."
    )]
    Stop(StopArgs),
    /// Measure throughput and latency, like redis-benchmark
    #[command(
        after_help = "Examples:\n  kvnode bench --via foo\n  kvnode bench -c 50 -n 100000 -d 3 --pipeline 16 -t put,get"
    )]
    Bench(BenchArgs),
    /// Change the cluster's secret while it runs: install a new one, use it, remove the old
    ///
    /// Each change goes through one node to every live member and prints one line per
    /// member (exit 0 only if every member made it). A node accepts connections proved with
    /// any installed secret and proves its own with the one in use; its keyring is kept in
    /// its data directory (mode 0600) and beats --secret-file at the next start. Secrets
    /// are shown only by fingerprint (the first 8 hex digits of their SHA-256).
    #[command(after_help = SECRET_EXAMPLES)]
    Secret(SecretArgs),
    /// Print a new secret: 32 random bytes from the operating system, in hex, as a secret
    /// file holds it
    #[command(
        after_help = "Examples:\n  kvnode keygen --output new.secret        # mode 0600, refuses to overwrite\n  (umask 077; kvnode keygen > new.secret)  # a secret file must be mode 0600"
    )]
    Keygen(KeygenArgs),
}

const WATCH_EXAMPLES: &str = "\
Examples:
  kvnode watch shopping --via foo            # in one terminal, then in another:
  kvnode put shopping eggs 3 --via foo       # the watch prints: put eggs 3
  kvnode delete shopping eggs --via foo      # the watch prints: delete eggs
  kvnode watch shopping eggs --count 1 --json  # the next change to eggs, as JSON, then exit 0

Exit 3 if the watch cannot go on without missing changes (its owner restarted or changed,
or it fell behind): start it again, and read the current values with get or keys.";

const SECRET_EXAMPLES: &str = "\
Rotating the secret of a running cluster (every step through any node; clients holding
either secret keep working while both are installed):
  kvnode keygen --output new.secret
  kvnode secret install new.secret --via foo   # every member accepts it too
  kvnode secret use new.secret --via foo       # every member proves with it
  # give clients the new secret (KVNODE_SECRET, --secret-file, KVNODE_HOME/secret), then:
  kvnode secret remove old.secret --via foo    # nobody accepts the old one any more
  kvnode secret list --via foo                 # fingerprints, and how many members hold each

Removing the secret in use is refused; so is using one some live member lacks.";

/// `kvnode secret`'s actions.
#[derive(Args, Debug, Clone)]
pub struct SecretArgs {
    #[command(subcommand)]
    pub action: SecretAction,
}

#[derive(Subcommand, Debug, Clone)]
pub enum SecretAction {
    /// Make every live member accept the secret in FILE too (at least 16 bytes)
    Install(SecretFileArgs),
    /// Make every live member prove its own connections with the secret in FILE
    Use(SecretFileArgs),
    /// Make every live member accept the secret in FILE no more (not the one in use)
    Remove(SecretFileArgs),
    /// List each secret installed on the members, by fingerprint, with how many hold it
    List(ViaArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SecretFileArgs {
    /// A secret file (mode 0600), as --secret-file reads it; `kvnode keygen` makes one
    pub file: PathBuf,
    #[command(flatten)]
    pub via: ViaArgs,
}

#[derive(Args, Debug, Clone)]
pub struct KeygenArgs {
    /// Write the secret to FILE (made with mode 0600; an existing file is not overwritten)
    /// rather than to stdout
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct StartArgs {
    /// This node's name: [a-z0-9_-]{1,64}, unique in the cluster
    #[arg(long, value_name = "NAME")]
    pub name: Option<NodeName>,
    /// UDP address to listen on [default: 127.0.0.1:0, an ephemeral port]
    #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_listen)]
    pub listen: Option<SocketAddr>,
    /// Address other nodes and clients reach this node at, when not the listen address
    /// [default: the listen address; for a wildcard such as 0.0.0.0:4040, this machine's
    /// address on its default route]. Port 0: the port listened on
    #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_advertise)]
    pub advertise: Option<SocketAddr>,
    /// Serve the guide's text protocol (CREATE/PUT/GET/DELETE lines, as with telnet or nc) on
    /// this TCP address [default: off]. Loopback only: the protocol has no authentication
    #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_listen)]
    pub text_listen: Option<SocketAddr>,
    /// Join the cluster through this member (repeatable): NAME, NAME@HOST:PORT or HOST:PORT
    #[arg(long = "join", value_name = "NODE")]
    pub join: Vec<NodeRef>,
    /// Read settings from this TOML file (flags override it)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Routing table, e.g. 'a-m=foo,n-z=bar' or '0x00-0x60=baz'
    ///
    /// A table that begins with the byte '-' is given with '=': --table=-=foo,a-z=bar
    ///
    /// An entry may name up to 7 nodes joined by '+' ('a-m=foo+bar+baz', the first the
    /// preferred leader): the range is then kept on all of them, a write acknowledged once a
    /// majority holds it (README, "Replicated ranges"). Every node of such a cluster starts
    /// with the same table
    #[arg(long, value_name = "SPEC")]
    pub table: Option<String>,
    /// Where data and the node certificate live [default: KVNODE_HOME/NAME]
    #[arg(long, value_name = "DIR", conflicts_with = "in_memory")]
    pub data_dir: Option<PathBuf>,
    /// Keep all data in memory (lost when the node stops)
    #[arg(long)]
    pub in_memory: bool,
    /// Answer every chat message with TEXT
    #[arg(long, value_name = "TEXT")]
    pub auto_reply: Option<String>,
    /// Threads serving requests [default: TOKIO_WORKER_THREADS, else the config file's
    /// `threads`, else one per core]. 1 runs one event loop on one thread: less CPU per
    /// request for a node often idle between bursts (several nodes on one small machine), but
    /// it caps a busy node at one core
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=MAX_THREADS as i64))]
    pub threads: Option<u16>,
    /// Serve RESP (Redis's protocol: redis-cli, any Redis client) on this TCP address; the
    /// password is the cluster secret. Anything but loopback needs --resp-tls [default: off]
    #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_listen)]
    pub resp_listen: Option<SocketAddr>,
    /// The bucket Redis's string commands (SET, GET, ...) act on [default: redis]
    #[arg(long, value_name = "BUCKET")]
    pub resp_bucket: Option<String>,
    /// Serve RESP over TLS with the node's certificate (redis-cli --tls --insecure)
    #[arg(long)]
    pub resp_tls: bool,
    /// Serve Prometheus/OpenMetrics figures at http://ADDR/metrics [default: off]. Loopback
    /// only, unless --metrics-allow-remote
    #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_listen)]
    pub metrics_listen: Option<SocketAddr>,
    /// Let --metrics-listen take an address other than loopback: anyone who reaches it may
    /// read the figures (they need no secret)
    #[arg(long)]
    pub metrics_allow_remote: bool,
}

/// `--via NODE`: which node to talk to.
#[derive(Args, Debug, Clone, Default)]
pub struct ViaArgs {
    /// The node to talk to: NAME, NAME@HOST:PORT or HOST:PORT [default: KVNODE_VIA, else the
    /// only local node]
    #[arg(long, value_name = "NODE")]
    pub via: Option<NodeRef>,
}

#[derive(Args, Debug, Clone)]
pub struct BucketArgs {
    /// Bucket name (1-1024 bytes)
    pub bucket: OsString,
    #[command(flatten)]
    pub via: ViaArgs,
}

#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Bucket name (1-1024 bytes)
    pub bucket: OsString,
    /// Key (1-1024 bytes)
    pub key: OsString,
    #[command(flatten)]
    pub via: ViaArgs,
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Bucket name (1-1024 bytes)
    pub bucket: OsString,
    /// Only this key's changes (1-1024 bytes)
    pub key: Option<OsString>,
    /// Exit 0 after N changes
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    #[command(flatten)]
    pub via: ViaArgs,
}

#[derive(Args, Debug, Clone)]
pub struct PutArgs {
    /// Bucket name (1-1024 bytes); created by its first put
    pub bucket: OsString,
    /// Key (1-1024 bytes)
    pub key: OsString,
    /// The value (up to 8 MiB), or - to read it from stdin as bytes
    #[arg(allow_hyphen_values = true)]
    pub value: OsString,
    #[command(flatten)]
    pub via: ViaArgs,
}

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Print the exact bytes of the value, with no newline
    #[arg(long)]
    pub raw: bool,
}

#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("what").required(true).args(["bucket", "table", "set", "status", "balance"])))]
pub struct RouteArgs {
    /// The bucket whose owner to print
    pub bucket: Option<OsString>,
    /// Print the routing table the node holds, with its version
    #[arg(long)]
    pub table: bool,
    /// Set a new routing table for the whole cluster, e.g. 'a-m=foo,n-z=bar'
    ///
    /// A table that begins with the byte '-' is given with '=': --set=-=foo,a-z=bar
    ///
    /// A range whose nodes change moves: its new nodes join the range's group, catch up, and
    /// only then does the table name them and the old nodes drop the data; reads and writes
    /// go on meanwhile. The command waits until every range is where the table says (see
    /// --no-wait, --wait-for). A range's bounds may be re-cut under the nodes that hold it
    /// ('a-z=foo' to 'a-m=foo,n-z=bar' cuts n-z under foo, then moves it). A replicated
    /// range is split or merged by way of one node: its bytes move onto one node that holds
    /// them, are re-cut there, and the pieces move to their nodes (two table versions;
    /// `route --table` shows the second as '# then ...' meanwhile). The new nodes must be
    /// live members (else exit 2).
    /// Setting a range that is still moving to other nodes re-aims its move; its old nodes
    /// leave it going (see --call-off)
    #[arg(long, value_name = "SPEC")]
    pub set: Option<String>,
    /// With --set: set it only if the cluster's table is still at version N [default: the
    /// version the node holds when asked]; else exit 5, saying it changed underneath
    #[arg(long, value_name = "N", requires = "set")]
    pub if_version: Option<u64>,
    /// With --set: allow nodes that are not members of the cluster (yet) in the table, and
    /// move no data: a one-node range given to another node leaves its buckets behind
    #[arg(long, requires = "set")]
    pub force: bool,
    /// With --set: a moving range given the nodes it is on (as --table shows it) calls its
    /// move off, and the range goes back to them (the way out of a move whose new node died)
    #[arg(long, requires = "set")]
    pub call_off: bool,
    /// Spread the ranges, and their first-named nodes (preferred leaders), evenly over the
    /// live members: prints the plan (each range that moves, from and to, with its keys and
    /// bytes), then carries it out as --set does
    #[arg(long)]
    pub balance: bool,
    /// With --balance: hold each range on N nodes [default: as many as it has now]
    #[arg(long, value_name = "N", requires = "balance")]
    pub replicas: Option<usize>,
    /// With --balance: print the plan and change nothing
    #[arg(long, requires = "balance")]
    pub dry_run: bool,
    /// With --set or --balance: return once the moves have started (see --status)
    #[arg(long)]
    pub no_wait: bool,
    /// With --set or --balance: how long to wait for the moves to finish; past it, exit 3
    /// (they go on). A move another table overtook (its range named elsewhere, no longer
    /// moving) ends the wait with exit 5
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout, default_value = "10m")]
    pub wait_for: Duration,
    /// Print the moves under way (range, from, to, and the keys and bytes each new node took
    /// in so far), then the moves the node asked saw finish
    #[arg(long)]
    pub status: bool,
    #[command(flatten)]
    pub via: ViaArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// Who receives the message: NAME, NAME@HOST:PORT or HOST:PORT
    pub node: NodeRef,
    /// The message; without it, one message per line of stdin until EOF
    pub message: Option<String>,
    /// Send through this node, which then is the sender and also prints the reply
    /// [KVNODE_VIA does not apply: it would change who the message is from]
    #[arg(long, value_name = "NODE")]
    pub via: Option<NodeRef>,
    /// The sender name shown to NODE [default: the --via node's name, or client@HOST]
    #[arg(long = "as", value_name = "NAME", value_parser = parse_sender)]
    pub as_name: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct PingArgs {
    /// The node to ping: NAME, NAME@HOST:PORT or HOST:PORT
    pub node: NodeRef,
}

#[derive(Args, Debug, Clone)]
pub struct StopArgs {
    /// The node to stop: NAME (in KVNODE_HOME/nodes: SIGTERM to its process), NAME@HOST:PORT
    /// or HOST:PORT (a leave request)
    pub node: NodeRef,
    /// Find NAME in this node's membership and send it a leave request
    /// [KVNODE_VIA does not apply: it names whom to talk to, not whom to stop]
    #[arg(long, value_name = "NODE")]
    pub via: Option<NodeRef>,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent clients
    #[arg(short = 'c', long = "clients", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub clients: u32,
    /// Requests per test
    #[arg(short = 'n', long = "requests", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,
    /// Value size in bytes
    #[arg(short = 'd', long = "data-size", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=8 * 1024 * 1024))]
    pub data_size: u32,
    /// Requests each client keeps in flight
    #[arg(short = 'P', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub pipeline: u32,
    /// Tests to run, comma-separated: put, get
    #[arg(short = 't', long = "tests", default_value = "put,get", value_delimiter = ',')]
    pub tests: Vec<BenchTest>,
    /// Distinct keys used (keys are key:000000000000 .. key:K-1)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub keyspace: u64,
    /// QUIC connections the clients share [default: one per client, as redis-benchmark does]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: Option<u32>,
    /// The bucket to use
    #[arg(long, default_value = "bench")]
    pub bucket: String,
    #[command(flatten)]
    pub via: ViaArgs,
}

impl BenchArgs {
    /// The benchmark these flags ask for.
    pub fn settings(&self) -> BenchSettings {
        BenchSettings {
            clients: self.clients,
            requests: self.requests,
            data_size: self.data_size,
            pipeline: self.pipeline,
            tests: self.tests.clone(),
            keyspace: self.keyspace,
            connections: self.connections,
            bucket: self.bucket.clone(),
        }
    }
}

/// `--tests`: the bench's tests by name (what `#[derive(ValueEnum)]` would write, kept here so
/// the bench knows no clap).
impl clap::ValueEnum for BenchTest {
    fn value_variants<'a>() -> &'a [Self] {
        &[BenchTest::Put, BenchTest::Get]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(test_name(*self)))
    }
}

/// `chat --as`: the sender's label, which is also the client's name in the handshake.
fn parse_sender(s: &str) -> Result<String, String> {
    match s.len() {
        1..=128 => Ok(s.to_string()),
        0 => Err("the sender's name is empty; give 1 to 128 bytes, e.g. --as zoe".into()),
        n => Err(format!("the sender's name is {n} bytes; give 1 to 128")),
    }
}

/// `--timeout`: a duration, and not zero, which no answer could meet.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        // Deadlines travel in whole milliseconds, and a config file's durations start there.
        timeout if timeout < Duration::from_millis(1) => Err(format!(
            "{s:?} leaves no time for an answer; give at least 1ms, e.g. 500ms or 5s"
        )),
        timeout => Ok(timeout),
    }
}

/// `--log-format text|json`: the flag's face of [`LogFormat`], which stays free of clap.
impl clap::ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[LogFormat::Text, LogFormat::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(match self {
            LogFormat::Text => clap::builder::PossibleValue::new("text").help("Human-readable lines"),
            LogFormat::Json => clap::builder::PossibleValue::new("json").help("One JSON object per line, for machines"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_has_an_example_in_its_help() {
        for sub in Cli::command().get_subcommands() {
            let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.contains("kvnode"), "{} has no example", sub.get_name());
        }
    }

    #[test]
    fn the_briefs_lines_parse() {
        for line in [
            "kvnode start --name foo",
            "kvnode put shopping eggs 3 --via foo",
            "kvnode get shopping eggs --via foo",
            "kvnode chat kate hi",
            "kvnode put b k - --via foo@127.0.0.1:4040",
            "kvnode route --set a-m=foo,n-z=bar",
            "kvnode route hello --json",
            "kvnode ping foo --timeout 1s",
            "kvnode put b k -5",
        ] {
            Cli::try_parse_from(line.split(' ')).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }

    #[test]
    fn a_zero_timeout_is_refused_naming_it() {
        let err = Cli::try_parse_from(["kvnode", "ping", "foo", "--timeout", "0s"]).unwrap_err();
        assert!(err.to_string().contains("\"0s\" leaves no time for an answer"), "{err}");
        assert!(Cli::try_parse_from(["kvnode", "ping", "foo", "--timeout", "1ms"]).is_ok());
        assert!(Cli::try_parse_from(["kvnode", "ping", "foo", "--timeout", "0.1ms"]).is_err());
    }

    #[test]
    fn a_table_flag_never_takes_the_next_flag_for_its_value() {
        // A missing value is reported as missing, not parsed as a table ('--in-memory').
        let err = Cli::try_parse_from(["kvnode", "start", "--name", "foo", "--table", "--in-memory"]).unwrap_err();
        assert!(
            err.to_string().contains("a value is required for '--table <SPEC>'"),
            "{err}"
        );
        assert!(Cli::try_parse_from(["kvnode", "route", "--set", "--via", "foo"]).is_err());
        // A table beginning with the byte '-' is written with '='.
        let cli = Cli::try_parse_from(["kvnode", "start", "--name", "foo", "--table=-=foo,a-z=bar"]).unwrap();
        let Command::Start(args) = cli.command else {
            panic!("not start")
        };
        assert_eq!(args.table.as_deref(), Some("-=foo,a-z=bar"));
        let cli = Cli::try_parse_from(["kvnode", "route", "--set=--0x7f=foo"]).unwrap();
        let Command::Route(args) = cli.command else {
            panic!("not route")
        };
        assert_eq!(args.set.as_deref(), Some("--0x7f=foo"));
    }

    #[test]
    fn route_takes_exactly_one_of_bucket_table_and_set() {
        assert!(Cli::try_parse_from(["kvnode", "route"]).is_err());
        assert!(Cli::try_parse_from(["kvnode", "route", "b", "--table"]).is_err());
    }
}
