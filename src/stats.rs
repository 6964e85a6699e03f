//! `kvnode stats`: a node's figures over its authenticated connection, the same as its
//! `/metrics` shows, for people without a Prometheus: totals since it started, and rates and
//! p50/p99 latencies over the last 10 s. The node keeps a reading from about 10 s before
//! (see `metrics::sample`), so one question gives the rates at once; sampling twice from
//! here would make every `stats` wait 10 s.

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{ClientError, Settings};
use crate::commands::{ask, unexpected};
use crate::metrics::{COMMANDS, Hist, Snapshot, StatsReport};
use crate::output::Output;
use crate::wire::{Reply, Request};

pub async fn run(settings: &Settings, deadline: Instant, out: &mut Output) -> Result<(), ClientError> {
    let reply = ask(settings, deadline, Request::Stats).await?;
    let Reply::Stats(report) = reply else {
        return unexpected(&reply);
    };
    let window = Window::of(&report);
    if out.is_json() {
        out.object(json_of(&report, &window));
    } else {
        for line in text_of(&report.now, &window) {
            out.line(&line);
        }
    }
    Ok(())
}

/// What happened between the node's earlier reading and now.
struct Window {
    seconds: f64,
    /// The figures counted in the window (`now` minus the earlier reading).
    counted: Option<Snapshot>,
}

impl Window {
    fn of(report: &StatsReport) -> Self {
        match &report.earlier {
            Some(e) if e.ms_before > 0 => Window {
                seconds: e.ms_before as f64 / 1e3,
                counted: Some(since(&report.now, &e.counted)),
            },
            _ => Window {
                seconds: 0.0,
                counted: None,
            },
        }
    }

    fn rate(&self, f: impl Fn(&Snapshot) -> u64) -> Option<f64> {
        self.counted.as_ref().map(|c| f(c) as f64 / self.seconds)
    }
}

/// The counted figures of `now` less those of `earlier`.
fn since(now: &Snapshot, earlier: &Snapshot) -> Snapshot {
    let mut d = now.clone();
    for r in &mut d.requests {
        r.count -= earlier.requests_of(&r.command, &r.outcome).min(r.count);
    }
    for l in &mut d.latency {
        if let Some(e) = earlier
            .latency
            .iter()
            .find(|e| e.command == l.command && e.path == l.path)
        {
            l.nanos = l.nanos.since(&e.nanos);
        }
    }
    d.forwarded -= earlier.forwarded.min(d.forwarded);
    d.hops = d.hops.since(&earlier.hops);
    d.commit_batch = d.commit_batch.since(&earlier.commit_batch);
    d.commit_nanos = d.commit_nanos.since(&earlier.commit_nanos);
    d.gossip_sent_bytes -= earlier.gossip_sent_bytes.min(d.gossip_sent_bytes);
    d.gossip_received_bytes -= earlier.gossip_received_bytes.min(d.gossip_received_bytes);
    d.process.cpu_ms = match (now.process.cpu_ms, earlier.process.cpu_ms) {
        (Some(n), Some(e)) => Some(n.saturating_sub(e)),
        _ => None,
    };
    d
}

/// Every latency of `command` (answered here and forwarded) in one histogram.
fn latency_of(s: &Snapshot, command: &str) -> Option<Hist> {
    let mut parts = s.latency.iter().filter(|l| l.command == command).map(|l| &l.nanos);
    let mut sum = parts.next()?.clone();
    for p in parts {
        for (a, b) in sum.counts.iter_mut().zip(&p.counts) {
            *a += b;
        }
        sum.sum += p.sum;
    }
    Some(sum)
}

fn requests_of(s: &Snapshot, command: &str, failed: bool) -> u64 {
    s.requests
        .iter()
        .filter(|r| r.command == command && (r.outcome != "ok") == failed)
        .map(|r| r.count)
        .sum()
}

/// A quantile bound in nanoseconds, readably.
fn duration(ns: Option<u64>) -> String {
    match ns {
        None => "-".into(),
        Some(u64::MAX) => "> 10 s".into(),
        // The upper bound of the bucket the quantile falls in.
        Some(ns) if ns < 1_000_000 => format!("≤ {} µs", ns as f64 / 1e3),
        Some(ns) if ns < 1_000_000_000 => format!("≤ {} ms", ns as f64 / 1e6),
        Some(ns) => format!("≤ {} s", ns as f64 / 1e9),
    }
}

fn bytes(n: f64) -> String {
    match n {
        n if n < 1e3 => format!("{n:.0} B"),
        n if n < 1e6 => format!("{:.1} kB", n / 1e3),
        n if n < 1e9 => format!("{:.1} MB", n / 1e6),
        n => format!("{:.1} GB", n / 1e9),
    }
}

fn per_second(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".into(), |r| format!("{r:.1}"))
}

fn text_of(now: &Snapshot, w: &Window) -> Vec<String> {
    let count = |list: &[crate::metrics::Labelled]| {
        list.iter()
            .map(|l| format!("{} {}", l.count, l.label))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines = vec![
        format!(
            "node {}: up {} s, routing table version {}, {} connections open, {} watches waiting",
            now.node,
            now.uptime_ms / 1000,
            now.table_version,
            now.connections_open,
            now.watches_waiting
        ),
        format!(
            "members: {} (seen becoming: {})",
            count(&now.members),
            count(&now.transitions)
        ),
        format!("replicated ranges: {}", count(&now.ranges)),
        match w.counted {
            Some(_) => format!(
                "requests (rates, p50 and p99 over the last {:.1} s; totals since start):",
                w.seconds
            ),
            None => "requests (the node has no reading 10 s old yet: totals only):".into(),
        },
        format!(
            "  {:14} {:>10} {:>10} {:>8} {:>10} {:>10}",
            "COMMAND", "PER SEC", "TOTAL", "FAILED", "P50", "P99"
        ),
    ];
    for command in COMMANDS {
        let total = requests_of(now, command, false) + requests_of(now, command, true);
        if total == 0 {
            continue;
        }
        let recent = w.counted.as_ref().and_then(|c| latency_of(c, command));
        lines.push(format!(
            "  {:14} {:>10} {:>10} {:>8} {:>10} {:>10}",
            command,
            per_second(w.rate(|c| requests_of(c, command, false) + requests_of(c, command, true))),
            total,
            requests_of(now, command, true),
            duration(recent.as_ref().and_then(|h| h.quantile(0.5))),
            duration(recent.as_ref().and_then(|h| h.quantile(0.99))),
        ));
    }
    lines.push(format!(
        "forwarded: {} per sec, {} in all",
        per_second(w.rate(|c| c.forwarded)),
        now.forwarded
    ));
    lines.push(format!("handshakes refused: {}", count(&now.handshakes_refused)));
    let mut store = Vec::new();
    if let Some(b) = now.store_disk_bytes {
        store.push(format!("{} on disk", bytes(b as f64)));
    }
    if let Some(k) = now.store_keys {
        store.push(format!("{k} keys"));
    }
    if let Some(c) = &w.counted
        && c.commit_batch.count() > 0
    {
        store.push(format!(
            "{:.1} commits per sec, writes per commit p50 {} p99 {}, commit p50 {} p99 {}",
            c.commit_batch.count() as f64 / w.seconds,
            c.commit_batch.quantile(0.5).unwrap_or(0),
            c.commit_batch.quantile(0.99).unwrap_or(0),
            duration(c.commit_nanos.quantile(0.5)),
            duration(c.commit_nanos.quantile(0.99)),
        ));
    }
    lines.push(format!("store: {}", store.join("; ")));
    lines.push(format!(
        "gossip: sent {}/s ({} in all), received {}/s ({} in all)",
        w.rate(|c| c.gossip_sent_bytes).map_or_else(|| "-".into(), bytes),
        bytes(now.gossip_sent_bytes as f64),
        w.rate(|c| c.gossip_received_bytes).map_or_else(|| "-".into(), bytes),
        bytes(now.gossip_received_bytes as f64),
    ));
    let p = &now.process;
    let cpu = w
        .counted
        .as_ref()
        .and_then(|c| c.process.cpu_ms)
        .map_or_else(|| "-".into(), |ms| format!("{:.0}%", ms as f64 / 10.0 / w.seconds));
    lines.push(format!(
        "process: {} resident, {} threads, CPU {} ({} s in all)",
        p.rss_bytes.map_or_else(|| "-".into(), |b| bytes(b as f64)),
        p.threads.map_or_else(|| "-".into(), |t| t.to_string()),
        cpu,
        p.cpu_ms
            .map_or_else(|| "-".into(), |ms| format!("{:.1}", ms as f64 / 1e3)),
    ));
    lines
}

/// The figures as one JSON object: `now` as the node read them (the same as `/metrics`),
/// and per command the rate and latency quantiles (nanoseconds) over the window.
fn json_of(report: &StatsReport, w: &Window) -> Value {
    let recent: Vec<Value> = COMMANDS
        .iter()
        .filter_map(|&command| {
            let c = w.counted.as_ref()?;
            let h = latency_of(c, command)?;
            Some(json!({
                "command": command,
                "per_second": (requests_of(c, command, false) + requests_of(c, command, true)) as f64 / w.seconds,
                "p50_ns": h.quantile(0.5),
                "p99_ns": h.quantile(0.99),
            }))
        })
        .collect();
    json!({
        "now": report.now,
        "window_ms": (w.seconds * 1e3) as u64,
        "recent": recent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Earlier, Latency, RequestCount};

    fn with_gets(ok: u64, fast: u64) -> Snapshot {
        Snapshot {
            node: "foo".into(),
            requests: vec![RequestCount {
                command: "get".into(),
                outcome: "ok".into(),
                count: ok,
            }],
            latency: vec![Latency {
                command: "get".into(),
                path: "local".into(),
                nanos: Hist {
                    bounds: vec![1_000_000],
                    counts: vec![fast, ok - fast],
                    sum: 0,
                },
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn rates_and_quantiles_are_taken_over_the_window_only() {
        let report = StatsReport {
            now: with_gets(300, 200),
            earlier: Some(Earlier {
                ms_before: 10_000,
                counted: with_gets(100, 0),
            }),
        };
        let w = Window::of(&report);
        // 200 gets in 10 s, every one of them fast (the slow ones were before the window).
        assert_eq!(w.rate(|c| requests_of(c, "get", false)), Some(20.0));
        let lines = text_of(&report.now, &w);
        let get = lines.iter().find(|l| l.trim_start().starts_with("get")).unwrap();
        assert!(
            get.contains("20.0") && get.contains("300") && get.contains("1 ms"),
            "{get}"
        );
        let json = json_of(&report, &w);
        assert_eq!(json["recent"][0]["p99_ns"], 1_000_000);
        assert_eq!(json["now"]["requests"][0]["count"], 300);
    }

    #[test]
    fn without_an_earlier_reading_only_totals_are_said() {
        let report = StatsReport {
            now: with_gets(5, 5),
            earlier: None,
        };
        let lines = text_of(&report.now, &Window::of(&report));
        assert!(lines.iter().any(|l| l.contains("totals only")), "{lines:?}");
    }
}
