//! Runs the gossip simulator at any size and prints convergence and detection figures.
//!
//!     cargo run --release --example gossip_sim -- --nodes 10000 --loss 0.1 [--seed S]
//!         [--latency-ms 1-10] [--seconds 60] [--out DIR] [--no-hot-rumor]
//!         [--scenarios table,kill,partition] [--cut F] [--no-tentative-verdicts]
//!
//! Scenarios, each on a fresh converged cluster:
//! - table: a new routing table set on one node; time until 50/99/99.9/100 % hold it.
//! - kill: runs `--seconds` virtual seconds; a table change at 2 s, a node killed at 5 s;
//!   time until every live node marks it dead, and false deaths over the whole run. Its wall
//!   time is the "N nodes x S virtual seconds" performance figure.
//! - partition: a group (half the nodes, or 100 beyond 2,000 nodes; `--cut`) cut off longer
//!   than the suspicion timeout, then healed; time until every live node sees every other
//!   alive again, and false deaths (on one's own side of the cut, or after the heal).
//!
//! Writes `summary.csv`, `table_spread.csv` (fraction with the update over time) and
//! `table_spread.svg` to `--out` (default `target/gossip-sim`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use kvnode::config::GossipFile;
use kvnode_gossip::GossipConfig;
use kvnode_gossip::sim::{Sim, SimConfig, SimTable};

#[derive(Parser, Debug)]
#[command(about = "Simulate kvnode's gossip membership at scale")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Probability that a datagram is lost.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One-way link latency range in milliseconds, LO-HI.
    #[arg(long, default_value = "1-10")]
    latency_ms: String,
    /// Virtual seconds of the kill scenario.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    #[arg(long, default_value = "target/gossip-sim")]
    out: PathBuf,
    /// Adopters of a new table wait for their next gossip round instead of forwarding it.
    #[arg(long)]
    no_hot_rumor: bool,
    /// Which scenarios to run.
    #[arg(long, value_delimiter = ',', default_value = "table,kill,partition")]
    scenarios: Vec<String>,
    /// The fraction of nodes cut off by the partition (default: half up to 2,000 nodes, then
    /// 100 nodes, since the work of a cut grows with the product of the two sides).
    #[arg(long)]
    cut: Option<f64>,
    /// How long the partition lasts (default: twice the longest suspicion timeout).
    #[arg(long)]
    partition_secs: Option<u64>,
    /// Runs the kill scenario with this many seeds (seed, seed+1, ...) and reports the
    /// distribution of detection times.
    #[arg(long, default_value_t = 1)]
    repeat: u64,
    /// Turns off tentative verdicts (failures a node finds while its own probes go unanswered
    /// are withdrawn when it learns it was the one cut off), to measure the protocol without.
    #[arg(long)]
    no_tentative_verdicts: bool,
    /// Overrides a `[gossip]` config key, like `--set probe_interval=500ms` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// The defaults with `--set` overrides applied, parsed exactly like a config file's `[gossip]`.
fn gossip_config(overrides: &[String]) -> anyhow::Result<GossipConfig> {
    let mut doc = String::new();
    for o in overrides {
        let (k, v) = o
            .split_once('=')
            .with_context(|| format!("--set {o}: write KEY=VALUE"))?;
        let v = v.trim();
        if v.parse::<u64>().is_ok() {
            writeln!(doc, "{} = {v}", k.trim())?;
        } else {
            writeln!(doc, "{} = {v:?}", k.trim())?;
        }
    }
    let file: GossipFile = toml::from_str(&doc).with_context(|| format!("--set: {doc}"))?;
    Ok(file.resolve())
}

struct Report {
    rows: Vec<(String, String, String)>,
}

impl Report {
    fn add(&mut self, scenario: &str, metric: &str, value: impl ToString) {
        let value = value.to_string();
        println!("  {metric:<34} {value}");
        self.rows.push((scenario.into(), metric.into(), value));
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".to_string(), |d| format!("{:.3}", d.as_secs_f64()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (lo, hi) = args
        .latency_ms
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        .context("--latency-ms takes LO-HI in milliseconds, like 1-10")?;
    if lo > hi || !(0.0..1.0).contains(&args.loss) || args.nodes < 3 {
        bail!("need LO <= HI, 0 <= loss < 1 and at least 3 nodes");
    }
    let mut gossip = gossip_config(&args.overrides)?;
    if args.no_hot_rumor {
        gossip.hot_rumor_fanout = 0;
    }
    let cfg = SimConfig {
        seed: args.seed,
        latency: (Duration::from_millis(lo), Duration::from_millis(hi)),
        loss: args.loss,
        gossip,
        tentative_verdicts: !args.no_tentative_verdicts,
        ..SimConfig::default()
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    println!(
        "gossip simulation: {} nodes, loss {}, latency {lo}-{hi} ms, seed {}, hot rumor {}",
        args.nodes,
        args.loss,
        args.seed,
        if args.no_hot_rumor { "off" } else { "on" }
    );
    let mut report = Report { rows: Vec::new() };
    // The simulator's virtual clock starts at this reading; nothing depends on its value.
    let base = Instant::now();
    for scenario in &args.scenarios {
        match scenario.as_str() {
            "table" => table(&args, &cfg, base, &mut report)?,
            "kill" => kill(&args, &cfg, base, &mut report),
            "partition" => partition(&args, &cfg, base, &mut report),
            other => bail!("unknown scenario {other:?}; use table, kill or partition"),
        }
    }
    let mut csv = String::from("scenario,metric,value\n");
    for (s, m, v) in &report.rows {
        writeln!(csv, "{s},{m},{v}")?;
    }
    std::fs::write(args.out.join("summary.csv"), csv)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Two ranges, as the tutorial's table has.
fn new_table(version: u64) -> SimTable {
    let entries = vec![(0x00, 0x7f, "n0".into()), (0x80, 0xff, "n1".into())];
    SimTable::new(version, "n0", entries).expect("a valid table")
}

fn build(args: &Args, cfg: &SimConfig, base: Instant, report: &mut Report, scenario: &str) -> Sim {
    let started = Instant::now();
    let sim = Sim::converged(cfg.clone(), base, args.nodes);
    report.add(
        scenario,
        "setup_wall_s",
        format!("{:.2}", started.elapsed().as_secs_f64()),
    );
    sim
}

fn table(args: &Args, cfg: &SimConfig, base: Instant, report: &mut Report) -> anyhow::Result<()> {
    println!("table spread:");
    let mut sim = build(args, cfg, base, report, "table");
    let started = Instant::now();
    sim.run_until(Duration::from_secs(1));
    sim.set_table(0, new_table(2));
    let t0 = sim.now();
    let mut curve = vec![(Duration::ZERO, sim.table_fraction())];
    let step = Duration::from_millis(10);
    while sim.table_fraction() < 1.0 && sim.now() - t0 < Duration::from_secs(30) {
        sim.run_for(step);
        curve.push((sim.now() - t0, sim.table_fraction()));
    }
    // A little more after 100 %, so the plot shows the plateau.
    for _ in 0..20 {
        sim.run_for(step);
        curve.push((sim.now() - t0, sim.table_fraction()));
    }
    for (label, f) in [("50", 0.5), ("99", 0.99), ("99.9", 0.999), ("100", 1.0)] {
        report.add("table", &format!("time_to_{label}pct_s"), secs(sim.table_time_to(f)));
    }
    report.add("table", "wall_s", format!("{:.2}", started.elapsed().as_secs_f64()));
    let mut csv = String::from("time_ms,fraction\n");
    for (t, f) in &curve {
        writeln!(csv, "{},{f:.6}", t.as_millis())?;
    }
    std::fs::write(args.out.join("table_spread.csv"), csv)?;
    let title = format!(
        "{} nodes, loss {}, hot rumor {}: fraction holding the new table",
        args.nodes,
        args.loss,
        if args.no_hot_rumor { "off" } else { "on" }
    );
    std::fs::write(args.out.join("table_spread.svg"), svg(&curve, &title))?;
    Ok(())
}

fn kill(args: &Args, cfg: &SimConfig, base: Instant, report: &mut Report) {
    println!("kill detection and false deaths over {} virtual s:", args.seconds);
    let victim = args.nodes / 2;
    let end = Duration::from_secs(args.seconds);
    let mut detections = Vec::new();
    let (mut false_deaths, mut episodes) = (0, 0);
    for run in 0..args.repeat {
        let cfg = SimConfig {
            seed: cfg.seed + run,
            ..cfg.clone()
        };
        let mut sim = if run == 0 {
            build(args, &cfg, base, report, "kill")
        } else {
            Sim::converged(cfg, base, args.nodes)
        };
        let started = Instant::now();
        sim.run_until(Duration::from_secs(2).min(end));
        sim.set_table(0, new_table(3));
        sim.run_until(Duration::from_secs(5).min(end));
        sim.kill(victim);
        sim.run_until(end);
        let wall = started.elapsed();
        detections.push(sim.detection_time(victim).unwrap_or(Duration::MAX));
        false_deaths += sim.false_deaths().len();
        episodes += sim.stats().false_suspicion_episodes;
        if run > 0 {
            continue;
        }
        report.add("kill", "detection_all_s", secs(sim.detection_time(victim)));
        report.add(
            "kill",
            "marked_dead_by",
            format!("{}/{}", sim.marked_dead_by(victim), args.nodes - 1),
        );
        report.add("kill", "table_100pct_s", secs(sim.table_time_to(1.0)));
        report.add("kill", "false_deaths", sim.false_deaths().len());
        report.add("kill", "false_suspicion_episodes", sim.stats().false_suspicion_episodes);
        report.add("kill", "false_suspicion_events", sim.stats().false_suspicions);
        report.add("kill", "datagrams", sim.stats().datagrams);
        report.add("kill", "datagrams_lost", sim.stats().lost);
        report.add("kill", "streams", sim.stats().streams);
        report.add("kill", "virtual_s", args.seconds);
        report.add("kill", "wall_s", format!("{:.2}", wall.as_secs_f64()));
    }
    if args.repeat > 1 {
        detections.sort();
        let at = |q: f64| {
            let d = detections[((detections.len() as f64 * q).ceil() as usize).clamp(1, detections.len()) - 1];
            secs((d != Duration::MAX).then_some(d))
        };
        report.add("kill", "runs", args.repeat);
        report.add("kill", "detection_p50_s", at(0.5));
        report.add("kill", "detection_p90_s", at(0.9));
        report.add("kill", "detection_p99_s", at(0.99));
        report.add("kill", "detection_max_s", at(1.0));
        report.add("kill", "false_deaths_all_runs", false_deaths);
        report.add("kill", "false_suspicion_episodes_all_runs", episodes);
    }
}

fn partition(args: &Args, cfg: &SimConfig, base: Instant, report: &mut Report) {
    let n = args.nodes as f64;
    let g = &cfg.gossip;
    let min = g
        .probe_interval
        .mul_f64(f64::from(g.suspicion_mult) * n.log10().max(1.0));
    let longest = min * g.suspicion_max_mult;
    let hold = args.partition_secs.map_or(longest * 2, Duration::from_secs);
    println!(
        "partition for {:.0} s (suspicion timeout {:.1}-{:.1} s), then heal:",
        hold.as_secs_f64(),
        min.as_secs_f64(),
        longest.as_secs_f64()
    );
    let cut = args
        .cut
        .map_or_else(
            || if args.nodes <= 2000 { args.nodes / 2 } else { 100 },
            |f| (f * args.nodes as f64) as usize,
        )
        .clamp(1, args.nodes - 1);
    let mut sim = build(args, cfg, base, report, "partition");
    let started = Instant::now();
    sim.run_until(Duration::from_secs(2));
    let side: Vec<usize> = (0..cut).collect();
    sim.partition(&[side]);
    sim.run_for(hold);
    let split = !sim.one_membership() && sim.alive_seen_by(0) < cut;
    report.add("partition", "cut_off_nodes", cut);
    report.add("partition", "hold_s", format!("{:.0}", hold.as_secs_f64()));
    report.add("partition", "split_while_cut", split);
    report.add("partition", "node0_sees_alive_while_cut", sim.alive_seen_by(0));
    report.add(
        "partition",
        "cut_wall_s",
        format!("{:.2}", started.elapsed().as_secs_f64()),
    );
    let heal_started = Instant::now();
    sim.heal();
    let healed_at = sim.now();
    let heal = sim.run_until_true(
        Duration::from_secs(120),
        Duration::from_millis(100),
        Sim::one_membership,
    );
    report.add("partition", "heal_s", secs(heal.map(|t| t - healed_at)));
    report.add(
        "partition",
        "heal_wall_s",
        format!("{:.2}", heal_started.elapsed().as_secs_f64()),
    );
    // Deaths across the cut are the point of the scenario; a death on one's own side of it,
    // or after the heal, is a false one.
    let false_deaths: Vec<_> = sim
        .false_deaths()
        .iter()
        .filter(|d| (d.observer < cut) == (d.subject < cut) || d.at >= healed_at)
        .collect();
    report.add("partition", "false_deaths_same_side_or_after_heal", false_deaths.len());
    report.add(
        "partition",
        "false_deaths_by_cut_off_nodes",
        false_deaths.iter().filter(|d| d.observer < cut).count(),
    );
    if let Some(last) = false_deaths.iter().map(|d| d.at).max() {
        report.add(
            "partition",
            "last_false_death_after_heal_s",
            secs(last.checked_sub(healed_at)),
        );
    }
    // Live members so marked by anyone (the "majority members marked dead").
    let mut subjects: Vec<usize> = false_deaths.iter().map(|d| d.subject).collect();
    subjects.sort_unstable();
    subjects.dedup();
    report.add("partition", "falsely_dead_members", subjects.len());
    report.add(
        "partition",
        "falsely_dead_majority_members",
        subjects.iter().filter(|&&s| s >= cut).count(),
    );
    report.add(
        "partition",
        "false_suspicion_episodes",
        sim.stats().false_suspicion_episodes,
    );
    report.add("partition", "wall_s", format!("{:.2}", started.elapsed().as_secs_f64()));
}

/// A hand-written SVG polyline of the fraction over time.
fn svg(curve: &[(Duration, f64)], title: &str) -> String {
    let (w, h, pad) = (720.0, 420.0, 50.0);
    let t_max = curve.last().map_or(1.0, |(t, _)| t.as_secs_f64()).max(0.001);
    let x = |t: f64| pad + (w - 2.0 * pad) * t / t_max;
    let y = |f: f64| h - pad - (h - 2.0 * pad) * f;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"24\" font-size=\"14\">{title}</text>\n"
    );
    for i in 0..=10 {
        let f = f64::from(i) / 10.0;
        let _ = writeln!(
            s,
            "<line x1=\"{pad}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{f:.1}</text>",
            y(f),
            w - pad,
            pad - 6.0,
            y(f) + 4.0
        );
    }
    for i in 0..=5 {
        let t = t_max * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.2} s</text>",
            x(t),
            h - pad + 18.0
        );
    }
    let points: Vec<String> = curve
        .iter()
        .map(|(t, f)| format!("{:.1},{:.1}", x(t.as_secs_f64()), y(*f)))
        .collect();
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>",
        points.join(" ")
    );
    let _ = writeln!(
        s,
        "<line x1=\"{pad}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{0}\" stroke=\"black\"/>\n</svg>",
        h - pad,
        w - pad
    );
    s
}
