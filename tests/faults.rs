//! Issue 25's fault-injection test, Jepsen style: a cluster of real `kvnode` processes, eight
//! clients putting, getting and deleting unique values on five keys through its nodes, and a
//! nemesis on a seeded schedule (kill -9 and restart on the same data directory, SIGSTOP and
//! SIGCONT, and as root a partition by network namespaces). After healing, every key is read
//! through every node, and the history must be linearizable per key with no acknowledged
//! write lost (`tests/common/history`).
//!
//! The cluster's shape is a parameter ([`Shape`]): the keys' bucket owned by one durable node,
//! reached directly or forwarded by others, or a range replicated on three or five durable
//! nodes whose leader the nemesis strikes. A broken system (an in-memory owner, killed and
//! restarted) must fail the check, so the test cannot pass vacuously.
//!
//! Environment: `FAULT_SEED` replays a run (printed at its start and on failure);
//! `FAULT_SEEDS` runs that many seeds per shape (from the first); `FAULT_DURATION` (seconds,
//! default 8) is each run's length; `FAULT_KILLS` makes the first strikes that many kills;
//! `FAULT_NETNS=0` runs on loopback without partitions; `FAULT_KEEP=1` keeps every history,
//! not only failing ones; `FAULT_LOGS=DIR` keeps every node process's log in `DIR/NAME.log`;
//! `FAULT_SETTLE=1` fails a run with moves whose table has not settled a minute after healing.
//! `scripts/faults.sh` sets them and tabulates the `faults-row` lines.
//! A kept history is checked again, without a cluster, by `CHECK_HISTORY=path cargo test
//! --release --test history_checker -- --ignored a_kept_history`.

mod common;
#[path = "common/history/mod.rs"]
mod history;
#[path = "common/nemesis.rs"]
mod nemesis;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/workload.rs"]
mod workload;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use history::{Budget, History, Outcome, Report};
use nemesis::{Fault, Schedule, Struck};
use workload::{Cluster, Nodes, Rng, Shape, Workload};

/// The keys' bucket on one durable node, and clients talking to it directly.
const ONE_OWNER: Shape = Shape {
    name: "one-owner-3",
    nodes: 3,
    table: "a-z=n1",
    in_memory: false,
    entries: Nodes::Owner,
    victims: Nodes::Owner,
    moves: &[],
};

/// The keys' bucket on n1, clients talking to any node (the others forward), faults on any.
const FORWARDED_3: Shape = Shape {
    name: "forwarded-3",
    nodes: 3,
    table: "a-m=n1,n-z=n2",
    in_memory: false,
    entries: Nodes::Any,
    victims: Nodes::Any,
    moves: &[],
};

const FORWARDED_5: Shape = Shape {
    name: "forwarded-5",
    nodes: 5,
    ..FORWARDED_3
};

/// Replicated ranges: faults on the range's leader, clients through any node.
const REPLICATED_3: Shape = Shape {
    name: "replicated-3",
    nodes: 3,
    table: "a-z=n1+n2+n3",
    in_memory: false,
    entries: Nodes::Any,
    victims: Nodes::Owner,
    moves: &[],
};

const REPLICATED_5: Shape = Shape {
    name: "replicated-5",
    nodes: 5,
    table: "a-z=n1+n2+n3+n4+n5",
    ..REPLICATED_3
};

/// Issue 26: the keys' range moved from one owner to the next and back while clients run
/// and the nemesis strikes whichever node serves it (mid-move too).
const MOVING_OWNER_3: Shape = Shape {
    name: "moving-owner-3",
    nodes: 3,
    table: "a-z=n1",
    in_memory: false,
    entries: Nodes::Any,
    victims: Nodes::Owner,
    moves: &["a-z=n2", "a-z=n3", "a-z=n1"],
};

/// Issue 26: a replicated range moved around four nodes, one replica at a time.
const MOVING_REPLICATED_4: Shape = Shape {
    name: "moving-replicated-4",
    nodes: 4,
    table: "a-z=n1+n2+n3",
    in_memory: false,
    entries: Nodes::Any,
    victims: Nodes::Owner,
    moves: &["a-z=n2+n3+n4", "a-z=n3+n4+n1", "a-z=n4+n1+n2", "a-z=n1+n2+n3"],
};

/// Issue 26: a replicated range's group ended (the range moved onto one node) and born again
/// (replicated anew from that node), over and over, with a different single owner each time,
/// while the nemesis strikes whichever node serves it: a replica killed in one history comes
/// back in a later one, and must retire its old group (generations), never take part with it.
const REBORN_3: Shape = Shape {
    name: "reborn-3",
    nodes: 3,
    table: "a-z=n1+n2+n3",
    in_memory: false,
    entries: Nodes::Any,
    victims: Nodes::Owner,
    moves: &[
        "a-z=n1",
        "a-z=n1+n2+n3",
        "a-z=n2",
        "a-z=n2+n3+n1",
        "a-z=n3",
        "a-z=n3+n1+n2",
    ],
};

/// Issue 26: the keys' replicated range split and merged, over and over (each by way of one
/// node: the bytes moved onto it, re-cut there, the pieces moved to their nodes), the keys'
/// bucket (`faults`, first byte `f`) in a different piece each time, while the nemesis
/// strikes whichever node serves it.
const SPLIT_MERGE_3: Shape = Shape {
    name: "split-merge-3",
    moves: &[
        "a-m=n2+n3+n1,n-z=n3+n1+n2",
        "a-e=n3+n1+n2,f-m=n1+n2+n3,n-z=n3+n1+n2",
        "a-z=n2+n3+n1",
        "a-f=n1+n2+n3,g-z=n3+n2+n1",
        "a-z=n1+n2+n3",
    ],
    ..REBORN_3
};

/// The broken system: the owner keeps its data in memory, so a kill loses acknowledged writes.
const IN_MEMORY_OWNER: Shape = Shape {
    name: "in-memory-owner-3",
    in_memory: true,
    ..ONE_OWNER
};

/// One shape at a time: a shape is five processes and eight clients on a two-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number; unset it or give one")),
    )
}

/// What the environment asks for (see the module's comment).
struct Params {
    first_seed: u64,
    seeds: u64,
    duration: Duration,
    kills: usize,
    netns: bool,
    keep: bool,
    /// `FAULT_SETTLE=1`: a shape with moves must have a settled table a minute after
    /// healing (`scripts/faults.sh` sets it). Off in `cargo test`, where an unsettled table
    /// is printed: a rare stall of a move onto one node under kills and partitions (two
    /// causes mended at stop 39, one run not diagnosed: issue 26's note) must not make the
    /// suite flaky.
    settle: bool,
}

fn params() -> Params {
    let first_seed = env("FAULT_SEED").unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.as_nanos() as u64 ^ u64::from(std::process::id())
    });
    Params {
        first_seed,
        seeds: env("FAULT_SEEDS").unwrap_or(1),
        duration: Duration::from_secs_f64(env("FAULT_DURATION").unwrap_or(8.0)),
        kills: env("FAULT_KILLS").unwrap_or(0),
        netns: std::env::var("FAULT_NETNS").map_or(true, |v| v != "0"),
        keep: std::env::var("FAULT_KEEP").is_ok_and(|v| v == "1"),
        settle: std::env::var("FAULT_SETTLE").is_ok_and(|v| v == "1"),
    }
}

/// One run's result.
struct Ran {
    seed: u64,
    report: Report,
    ops: usize,
    unknown: usize,
    failed: usize,
    struck: Vec<Struck>,
    /// After each kill of the node serving the range: the time to the first successful write
    /// invoked after it (`None`: none before the run ended).
    unavailable: Vec<Option<Duration>>,
    /// Where the history was saved, if it was.
    kept: Option<PathBuf>,
    /// Moves the mover started, and those seen done.
    moves: (usize, usize),
    /// With moves: whether the table was settled (no move under way, no step to follow) within
    /// a minute of healing, as every move must finish once every node is back.
    settled: Option<bool>,
}

impl Ran {
    fn longest_unavailable(&self) -> String {
        if self.unavailable.is_empty() {
            return "-".into();
        }
        if self.unavailable.iter().any(Option::is_none) {
            return "never".into();
        }
        let ms = self.unavailable.iter().flatten().max().map_or(0, Duration::as_millis);
        format!("{ms}")
    }

    /// The line `scripts/faults.sh` tabulates.
    fn row(&self, shape: &Shape) -> String {
        format!(
            "faults-row shape={} seed={} ops={} unknown={} failed={} faults={} lost={} violations={} undecided={} unavailable_ms={} kills_ms={} moves={}/{}",
            shape.name,
            self.seed,
            self.ops,
            self.unknown,
            self.failed,
            self.struck.len(),
            self.report.lost_writes.len(),
            self.report.violations().len(),
            self.report.unknown_keys().len(),
            self.longest_unavailable(),
            self.each_unavailable(),
            self.moves.1,
            self.moves.0,
        )
    }

    /// Each kill's write unavailability, comma-separated (`never` for one after which no write
    /// succeeded), `-` for none.
    fn each_unavailable(&self) -> String {
        if self.unavailable.is_empty() {
            return "-".into();
        }
        let each: Vec<String> = self
            .unavailable
            .iter()
            .map(|u| u.map_or("never".into(), |d| d.as_millis().to_string()))
            .collect();
        each.join(",")
    }
}

/// Runs `shape` once with `seed`: clients and nemesis for the run's length, then heals, (with
/// `crash_at_end`, kills and restarts the owner once more), reads every key through every node
/// and checks the history.
fn run_once(shape: &Shape, seed: u64, p: &Params, workload: Workload, crash_at_end: bool) -> Ran {
    let net = if p.netns {
        netns::Net::new(shape.nodes)
            .map_err(|why| println!("partitions skipped: {why}"))
            .ok()
    } else {
        println!("partitions skipped: FAULT_NETNS=0");
        None
    };
    let mut cluster = Cluster::start(shape, net);
    let mut faults = vec![Fault::Kill];
    if !crash_at_end {
        faults.push(Fault::Pause);
        if cluster.can_partition() {
            faults.push(Fault::Partition);
        }
    }
    let rng = Rng(seed);
    let schedule = Schedule::draw(
        &mut rng.fork(1000),
        p.duration,
        p.kills,
        shape.victims,
        shape.nodes,
        &faults,
    );
    println!(
        "fault test {}: seed {seed} (FAULT_SEED={seed} cargo test --test faults replays it); {schedule}",
        shape.name
    );
    let entries = cluster.pick(shape.entries);
    assert!(!entries.is_empty(), "no node names the owner of the keys' range");
    let addrs: Vec<_> = (0..cluster.len()).map(|i| cluster.addr(i)).collect();
    let (secret, hub) = (cluster.secret(), cluster.hub());
    let history = History::new(seed);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mover = Mover {
        home: cluster.home.path().to_path_buf(),
        hub: cluster.hub(),
        addrs: addrs.clone(),
        tables: shape.moves,
    };
    let (mut struck, moves) = std::thread::scope(|s| {
        let moving = (!shape.moves.is_empty()).then(|| {
            let (mover, stop, mut rng) = (&mover, &stop, rng.fork(2000));
            s.spawn(move || mover.run(stop, &mut rng))
        });
        for client in 0..workload.clients {
            let (history, stop, entries) = (&history, &stop, &entries);
            let (secret, addrs, hub) = (secret.clone(), addrs.clone(), hub.clone());
            let rng = rng.fork(client as u64);
            s.spawn(move || {
                workload::enter(hub.as_deref());
                let conns = workload::Conns::new(secret, addrs);
                workload::client(history, client, rng, workload, conns, entries, stop);
            });
        }
        let struck = nemesis::run(&mut cluster, &schedule, start, &history);
        std::thread::sleep((start + schedule.duration).saturating_duration_since(Instant::now()));
        stop.store(true, Ordering::Relaxed);
        let moves = moving.map_or((0, 0), |m| m.join().expect("the mover"));
        (struck, moves)
    });
    cluster.heal();
    if crash_at_end {
        let owner = cluster.serving().expect("a node names the owner");
        struck.push(Struck {
            at: history.now(),
            fault: Fault::Kill,
            node: owner,
            serving: true,
        });
        cluster.kill(owner);
        cluster.restart(owner);
    }
    workload::final_reads(&history, workload.clients, &cluster, workload);
    let settled = (!shape.moves.is_empty()).then(|| {
        let until = Instant::now() + Duration::from_secs(60);
        let via = format!("{}@{}", Shape::name_of(0), addrs[0]);
        loop {
            let status = mover.run_cmd(&["route", "--status", "--timeout", "2s", "--via", &via]);
            if status.is_some_and(|s| s.contains("no moves under way")) {
                break true;
            }
            if Instant::now() >= until {
                println!(
                    "route --status 60 s after healing: {:?}",
                    mover.run_cmd(&["route", "--status", "--via", &via])
                );
                break false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let records = history.records();
    let report = history::check(&records, Budget::default());
    let unavailable = struck
        .iter()
        .filter(|s| s.fault == Fault::Kill && s.serving)
        .map(|s| {
            records
                .iter()
                .filter(|r| r.op.is_write() && r.invoked >= s.at && matches!(r.outcome, Outcome::Ok { .. }))
                .filter_map(|r| r.completed)
                .min()
                .map(|done| Duration::from_nanos(done - s.at))
        })
        .collect();
    let kept = (!report.is_ok() || p.keep).then(|| {
        let dir = std::env::temp_dir().join(format!("kvnode-faults-{}-{seed}-{}", shape.name, std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the history");
        let path = dir.join("history.jsonl");
        history.save(&path).expect("save the history");
        path
    });
    Ran {
        seed,
        ops: records.len(),
        unknown: records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Indeterminate { .. }))
            .count(),
        failed: records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
            .count(),
        report,
        struck,
        unavailable,
        kept,
        moves,
        settled,
    }
}

/// Moves the keys' range during a run: sets each of `tables` in turn through a random node
/// (`route --set --no-wait`), then polls `route --status` until the move is done, the run
/// ends, or 20 s pass; a command refused (a node down, the coordinator unreachable, a
/// move under way) is tried again with the next node.
struct Mover {
    home: PathBuf,
    hub: Option<String>,
    addrs: Vec<std::net::SocketAddr>,
    tables: &'static [&'static str],
}

impl Mover {
    fn run_cmd(&self, args: &[&str]) -> Option<String> {
        let mut cmd = match &self.hub {
            Some(hub) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", hub, common::BIN]);
                c
            }
            None => std::process::Command::new(common::BIN),
        };
        cmd.env("KVNODE_HOME", &self.home)
            .env_remove("KVNODE_SECRET")
            .env_remove("KVNODE_VIA")
            .env_remove("RUST_LOG")
            .args(args)
            .stdin(std::process::Stdio::null());
        let out = cmd.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// (moves started, moves seen done)
    fn run(&self, stop: &AtomicBool, rng: &mut Rng) -> (usize, usize) {
        let (mut started, mut done) = (0, 0);
        let mut next = 0;
        while !stop.load(Ordering::Relaxed) {
            let via = rng.below(self.addrs.len() as u64) as usize;
            let via = format!("{}@{}", Shape::name_of(via), self.addrs[via]);
            let table = self.tables[next % self.tables.len()];
            let set = self.run_cmd(&["route", "--set", table, "--no-wait", "--timeout", "3s", "--via", &via]);
            if set.is_none() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            println!("mover: {table} set through {via}");
            started += 1;
            next += 1;
            let until = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let status = self.run_cmd(&["route", "--status", "--timeout", "2s", "--via", &via]);
                if status.is_some_and(|s| s.contains("no moves under way")) {
                    done += 1;
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        (started, done)
    }
}

/// Runs `shape` for every seed asked for; each must be linearizable with nothing lost.
fn check_shape(shape: &Shape) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let p = params();
    for seed in p.first_seed..p.first_seed + p.seeds {
        let ran = run_once(shape, seed, &p, Workload::default(), false);
        println!("{}", ran.row(shape));
        let kept = ran
            .kept
            .as_ref()
            .map_or(String::new(), |path| format!("history kept at {}\n", path.display()));
        assert!(
            ran.report.is_ok(),
            "fault test {} failed with seed {seed} (FAULT_SEED={seed} cargo test --test faults replays it)\n{kept}{}",
            shape.name,
            ran.report
        );
        assert!(
            ran.report.unread_keys.is_empty(),
            "keys never read after healing: {:?}",
            ran.report.unread_keys
        );
        assert!(ran.ops >= 100, "only {} operations", ran.ops);
        if let Some(settled) = ran.settled {
            // A run whose tables were all refused would check nothing of moves; one started
            // must be done once every node is back (a short run may end before it is).
            assert!(ran.moves.0 >= 1, "no table set during the run (seed {seed})");
            if !settled {
                println!(
                    "unsettled: the table still had a move under way or a step to follow a minute after healing (seed {seed})"
                );
            }
            assert!(
                settled || !p.settle,
                "the table still had a move under way or a step to follow a minute after healing (seed {seed})"
            );
        }
        if let Some(path) = &ran.kept {
            println!("history kept at {}", path.display());
        }
    }
}

#[test]
fn one_durable_owner_of_three_nodes_killed_stopped_and_partitioned_stays_linearizable() {
    check_shape(&ONE_OWNER);
}

#[test]
fn requests_forwarded_to_one_owner_through_three_nodes_stay_linearizable() {
    check_shape(&FORWARDED_3);
}

#[test]
fn requests_forwarded_to_one_owner_through_five_nodes_stay_linearizable() {
    check_shape(&FORWARDED_5);
}

#[test]
fn a_range_replicated_on_three_nodes_stays_linearizable_through_leader_faults() {
    check_shape(&REPLICATED_3);
}

#[test]
fn a_range_replicated_on_five_nodes_stays_linearizable_through_leader_faults() {
    check_shape(&REPLICATED_5);
}

#[test]
fn a_range_moved_between_single_owners_under_faults_stays_linearizable() {
    check_shape(&MOVING_OWNER_3);
}

#[test]
fn a_replicated_range_moved_around_four_nodes_under_faults_stays_linearizable() {
    check_shape(&MOVING_REPLICATED_4);
}

#[test]
fn a_range_moved_onto_one_node_and_replicated_again_under_faults_stays_linearizable() {
    check_shape(&REBORN_3);
}

#[test]
fn a_replicated_range_split_and_merged_under_faults_stays_linearizable_as_it_is_moved() {
    check_shape(&SPLIT_MERGE_3);
}

/// Network namespaces for `n` nodes, for a test that needs partitions; `None` (the reason
/// printed: the test skips itself) where they cannot be made, as without root.
fn namespaces_or_skip(n: usize) -> Option<netns::Net> {
    netns::Net::new(n).map_err(|why| println!("skipped: {why}")).ok()
}

/// `put KEY KEY` (the key its own value) through node `via`, within 3 s.
fn put_through(cluster: &Cluster, via: usize, key: &str) -> common::Run {
    cluster.run(&[
        "put",
        workload::BUCKET,
        key,
        key,
        "--via",
        &cluster.via(via),
        "--timeout",
        "3s",
    ])
}

/// Every key of `acked` reads back as its own value through every node (each polled until
/// [`common::PATIENCE`]).
fn every_key_reads_back(cluster: &Cluster, acked: &[String]) {
    for i in 0..cluster.len() {
        for key in acked {
            let got = common::wait_for(&format!("{key} through n{}", i + 1), common::PATIENCE, || {
                let out = cluster.run(&[
                    "get",
                    workload::BUCKET,
                    key,
                    "--via",
                    &cluster.via(i),
                    "--timeout",
                    "3s",
                ]);
                (out.code == Some(0)).then(|| out.stdout())
            });
            assert_eq!(got.trim(), key, "through n{}", i + 1);
        }
    }
}

/// Issue 26's partition case: a `route --set` on each side of a partition. The range's
/// membership changes only through a majority of its replicas, so the cut-off side's move
/// cannot take effect (it is refused or waits), the majority's does, and after the heal
/// every node holds the majority's table and every acknowledged write is there.
#[test]
fn a_route_set_on_each_side_of_a_partition_takes_effect_on_the_majority_side_only() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = namespaces_or_skip(5) else { return };
    let shape = Shape {
        name: "partitioned-move-5",
        nodes: 5,
        table: "a-z=n1+n2+n3",
        in_memory: false,
        entries: Nodes::Any,
        victims: Nodes::Owner,
        moves: &[],
    };
    let mut cluster = Cluster::start(&shape, Some(net));
    let mut acked = Vec::new();
    common::wait_for("a first write", common::PATIENCE, || {
        (put_through(&cluster, 1, "k0").code == Some(0)).then_some(())
    });
    acked.push("k0".to_string());
    cluster.partition(0);
    // n1 alone: its move needs n2 or n3, which it cannot reach.
    let cut_off = cluster.run_beside(
        0,
        &[
            "route",
            "--set",
            "a-z=n1+n4+n5",
            "--via",
            &cluster.via(0),
            "--wait-for",
            "5s",
            "--timeout",
            "3s",
        ],
    );
    assert_ne!(
        cut_off.code,
        Some(0),
        "the cut-off side's move took effect: {cut_off:?}"
    );
    println!(
        "the cut-off side's route --set: exit {:?}: {}",
        cut_off.code,
        cut_off.stderr.trim()
    );
    // The majority side: once it coordinates without n1, its move goes through.
    let set = common::wait_for("the majority side's move", Duration::from_secs(60), || {
        let out = cluster.run(&[
            "route",
            "--set",
            "a-z=n2+n3+n4",
            "--via",
            &cluster.via(1),
            "--wait-for",
            "20s",
            "--timeout",
            "3s",
        ]);
        (out.code == Some(0)).then_some(out.stdout())
    });
    assert!(set.lines().any(|l| l == "a-z=n2+n3+n4"), "{set}");
    for k in 1..20 {
        let key = format!("k{k}");
        if put_through(&cluster, 2 + k % 3, &key).code == Some(0) {
            acked.push(key);
        }
    }
    assert!(acked.len() > 10, "writes on the majority side: {acked:?}");
    cluster.unpartition(0);
    // n1 learns the majority's table by gossip, and every node serves every acknowledged write.
    common::wait_for("n1 holding the majority's table", common::PATIENCE, || {
        let table = cluster
            .run(&["route", "--table", "--via", &cluster.via(0), "--timeout", "2s"])
            .stdout();
        (table.lines().any(|l| l == "a-z=n2+n3+n4") && !table.contains("# moving")).then_some(())
    });
    every_key_reads_back(&cluster, &acked);
}

/// Two coordinators at once, and a move into one node: the cluster split in two, each side
/// coordinating its own tables. On the side with a majority of the range's group, the range
/// moves onto n3 alone (its group ends there, and n3 takes writes as its single owner); the
/// other side re-aims the move three times, which its group, without a majority there,
/// never carries out, but which gives its table the higher version: after the heal, gossip
/// keeps that table, which still runs the ended group. Before stop 41, the nodes that had
/// dropped the group started it again from nothing under that table, and the range was lost
/// (its old replica elected over their empty copies, without the writes n3 took) or left with
/// no leader. Now n3 sealed the group before the move was finished, and says so to the
/// coordinator of the table kept: the range is named on n3 again, and every acknowledged
/// write reads back through every node.
#[test]
fn a_move_into_one_node_on_one_side_of_a_split_and_re_aims_on_the_other_lose_no_write() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = namespaces_or_skip(5) else { return };
    let shape = Shape {
        name: "sealed-move-5",
        nodes: 5,
        table: "a-z=n3+n4+n5",
        in_memory: false,
        entries: Nodes::Any,
        victims: Nodes::Owner,
        moves: &[],
    };
    let mut cluster = Cluster::start(&shape, Some(net));
    let table_via = |cluster: &Cluster, i: usize, beside: bool| {
        let args = ["route", "--table", "--via", &cluster.via(i), "--timeout", "2s"];
        let out = if beside {
            cluster.run_beside(i, &args)
        } else {
            cluster.run(&args)
        };
        out.stdout()
    };
    let mut acked = Vec::new();
    common::wait_for("a first write", common::PATIENCE, || {
        (put_through(&cluster, 0, "k0").code == Some(0)).then_some(())
    });
    acked.push("k0".to_string());
    // n2 and n5 on their own; n1 (coordinating), n3 and n4 with the clients.
    let side_b = [1, 4];
    cluster.split(&side_b, false);
    let set = common::wait_for("the move into n3", Duration::from_secs(60), || {
        let out = cluster.run(&[
            "route",
            "--set",
            "a-z=n3",
            "--via",
            &cluster.via(0),
            "--wait-for",
            "20s",
            "--timeout",
            "3s",
        ]);
        (out.code == Some(0)).then(|| out.stdout())
    });
    assert!(set.lines().any(|l| l == "a-z=n3"), "{set}");
    for k in 1..20 {
        let key = format!("k{k}");
        if put_through(&cluster, [0, 2, 3][k % 3], &key).code == Some(0) {
            acked.push(key);
        }
    }
    assert!(acked.len() > 10, "writes on n3: {acked:?}");
    let side_a = table_via(&cluster, 0, false);
    println!("side A's table:\n{side_a}");
    // Side B, once n2 coordinates it: each table re-aims the move (none can take effect).
    for target in ["a-z=n2+n5", "a-z=n5", "a-z=n2+n5"] {
        common::wait_for(&format!("side B's {target}"), Duration::from_secs(60), || {
            let out = cluster.run_beside(
                1,
                &[
                    "route",
                    "--set",
                    target,
                    "--no-wait",
                    "--via",
                    &cluster.via(1),
                    "--timeout",
                    "3s",
                ],
            );
            (out.code == Some(0)).then_some(())
        });
    }
    let side_b_table = table_via(&cluster, 1, true);
    println!("side B's table:\n{side_b_table}");
    let version = |table: &str| -> u64 {
        let line = table.lines().find(|l| l.starts_with("# version ")).unwrap_or_default();
        line["# version ".len().min(line.len())..]
            .split(',')
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        version(&side_b_table) > version(&side_a),
        "side B's table must be the one gossip keeps"
    );
    cluster.split(&side_b, true);
    // The kept table runs the group n3 sealed: n3 says so, and the range is named on n3.
    let healed = common::wait_for("every node's table naming n3 alone", Duration::from_secs(90), || {
        let tables: Vec<String> = (0..5).map(|i| table_via(&cluster, i, false)).collect();
        tables
            .iter()
            .all(|t| t.lines().any(|l| l == "a-z=n3") && !t.contains("# moving"))
            .then(|| tables[0].clone())
    });
    println!("healed:\n{healed}");
    assert!(
        version(&healed) > version(&side_b_table),
        "finished over side B's table: {healed}"
    );
    every_key_reads_back(&cluster, &acked);
}

/// The test of the test: an owner that keeps its data in memory loses what it acknowledged
/// when killed; the check must say so (a lost write, named), or the test above proves nothing.
#[test]
fn an_in_memory_owner_killed_and_restarted_is_caught_losing_acknowledged_writes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = params();
    p.duration = p.duration.min(Duration::from_secs(4));
    // Puts and gets only: a key whose last write was a delete would hide its loss.
    let workload = Workload {
        deletes: 0,
        ..Workload::default()
    };
    let ran = run_once(&IN_MEMORY_OWNER, p.first_seed, &p, workload, true);
    println!("{}", ran.row(&IN_MEMORY_OWNER));
    println!("the checker's explanation, as expected:\n{}", ran.report);
    assert!(!ran.report.is_ok(), "a kill of an in-memory owner went unnoticed");
    assert!(
        !ran.report.lost_writes.is_empty(),
        "the final reads found every acknowledged write on a restarted in-memory node:\n{}",
        ran.report
    );
    let path = ran.kept.expect("a failing history is kept");
    let (seed, saved) = history::read_jsonl(std::io::BufReader::new(std::fs::File::open(&path).unwrap())).unwrap();
    assert_eq!((seed, saved.len()), (ran.seed, ran.ops));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// Issue 25's read lease, against a pause: a leader frozen (SIGSTOP) and cut off while the
/// others elect a new leader and acknowledge a write, then thawed while still cut off. Its
/// ticks stood still while it was frozen, so a lease counted in ticks would still hold and
/// serve the old value; counted by the clock it ran out, so the leader asks its majority,
/// which it cannot reach, and serves nothing.
#[test]
fn a_leader_frozen_and_cut_off_serves_no_read_from_a_lease_that_ran_out() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = namespaces_or_skip(3) else { return };
    let mut cluster = Cluster::start(&REPLICATED_3, Some(net));
    let op = |cluster: &Cluster, args: &[&str], via: usize| {
        let via = cluster.via(via);
        let args = [args, &["--via", &via, "--timeout", "2s"]].concat();
        cluster.run(&args)
    };
    let put = |cluster: &Cluster, value: &str, via: usize| {
        common::wait_for("a write acknowledged", Duration::from_secs(60), || {
            (op(cluster, &["put", workload::BUCKET, "k", value], via).code == Some(0)).then_some(())
        })
    };
    put(&cluster, "old", 1);
    let leader = common::wait_for("the range's leader", common::PATIENCE, || {
        let route = op(&cluster, &["route", workload::BUCKET, "--json"], 1).stdout();
        let route: serde_json::Value = serde_json::from_str(route.trim()).ok()?;
        REPLICATED_3.index_of(route["leader"].as_str()?)
    });
    // Reads through the leader, served under its lease.
    for _ in 0..5 {
        assert_eq!(op(&cluster, &["get", workload::BUCKET, "k"], leader).stdout(), "old\n");
    }
    cluster.pause(leader);
    cluster.partition(leader);
    put(&cluster, "new", (leader + 1) % 3);
    cluster.resume(leader);
    let via = cluster.via(leader);
    let got = cluster.run_beside(
        leader,
        &["get", workload::BUCKET, "k", "--via", &via, "--timeout", "2s"],
    );
    assert_ne!(got.stdout(), "old\n", "a stale read from the thawed leader: {got:?}");
    assert_ne!(got.code, Some(0), "cut off, it cannot serve a read: {got:?}");
    cluster.unpartition(leader);
    common::wait_for("the thawed leader serving the new value", common::PATIENCE, || {
        (op(&cluster, &["get", workload::BUCKET, "k"], leader).stdout() == "new\n").then_some(())
    });
}
