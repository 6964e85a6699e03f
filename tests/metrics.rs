//! Issue 27, part 1: `/metrics` scraped with a real HTTP client and parsed as Prometheus
//! parses it, after a known workload; `kvnode stats --json` and `kvnode members` agreeing
//! with it on the same node; the listener's refusals and bounds.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Home, Node, PATIENCE, wait_for};
use prometheus_parse::{Scrape, Value};

/// `kvnode start --name NAME --in-memory --metrics-listen LISTEN ARGS...`, and where it serves.
fn start_at(home: &Home, name: &str, listen: &str, args: &[&str]) -> (Node, SocketAddr) {
    let mut all = vec!["--in-memory", "--metrics-listen", listen];
    all.extend_from_slice(args);
    let node = home.start(name, &all);
    let line = node.wait_log("the metrics listener", |l| l.contains("serving metrics at"));
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr=")?.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (node, addr)
}

/// A node serving `/metrics` on a loopback port of its own.
fn start_metrics(home: &Home, name: &str) -> (Node, SocketAddr) {
    start_at(home, name, "127.0.0.1:0", &[])
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(PATIENCE))
        .build()
        .into()
}

/// GET `path`: its status and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut answer = agent()
        .get(&format!("http://{addr}{path}"))
        .call()
        .expect("an HTTP answer");
    let body = answer.body_mut().read_to_string().expect("a text body");
    (answer.status().as_u16(), body)
}

/// The figures at `/metrics`, parsed.
fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
}

/// The value of the sample `name` whose labels include `labels` (0 when there is none: a
/// (command, outcome) pair that never occurred is not listed).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a number: {other:?}"),
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().copied().unwrap_or(0.0)
}

/// The observation count of histogram `name` with `labels`.
fn observed(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max) as u64,
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

fn requests(s: &Scrape, command: &str, outcome: &str) -> f64 {
    value(
        s,
        "kvnode_requests_total",
        &[("command", command), ("outcome", outcome)],
    )
}

#[test]
fn the_counters_move_by_exactly_the_workload_and_stats_and_members_agree() {
    let home = Home::new();
    let (_foo, addr) = start_metrics(&home, "foo");
    let before = scrape(addr);
    let (puts, gets, misses) = (5, 3, 2);
    for i in 0..puts {
        home.run(&["put", "b", &format!("k{i}"), "v", "--via", "foo"]).ok();
    }
    for i in 0..gets {
        home.run(&["get", "b", &format!("k{i}"), "--via", "foo"]).ok();
    }
    for i in 0..misses {
        home.run(&["get", "b", &format!("missing{i}"), "--via", "foo"])
            .expect(1);
    }
    let after = scrape(addr);
    let moved = |command, outcome| requests(&after, command, outcome) - requests(&before, command, outcome);
    assert_eq!(moved("put", "ok"), puts as f64);
    assert_eq!(moved("get", "ok"), gets as f64);
    assert_eq!(moved("get", "not_found"), misses as f64);
    assert_eq!(moved("delete", "ok"), 0.0);
    let latency = |s: &Scrape, command| {
        observed(
            s,
            "kvnode_request_duration_seconds",
            &[("command", command), ("path", "local")],
        )
    };
    assert_eq!(latency(&after, "get") - latency(&before, "get"), (gets + misses) as u64);
    assert_eq!(latency(&after, "put") - latency(&before, "put"), puts as u64);
    assert_eq!(value(&after, "kvnode_forwarded_requests_total", &[]), 0.0);
    assert_eq!(value(&after, "kvnode_store_keys", &[]), puts as f64);
    assert_eq!(value(&after, "kvnode_members", &[("state", "alive")]), 1.0);
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 0.0);

    // The same figures through `kvnode stats --json`, and the members `kvnode members` lists.
    let stats: serde_json::Value = serde_json::from_str(&home.run(&["stats", "--via", "foo", "--json"]).ok()).unwrap();
    let now = &stats["now"];
    assert_eq!(now["node"], "foo");
    let count = |command: &str, outcome: &str| {
        now["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["command"] == command && r["outcome"] == outcome)
            .map_or(0.0, |r| r["count"].as_f64().unwrap())
    };
    for (command, outcome) in [("put", "ok"), ("get", "ok"), ("get", "not_found")] {
        assert_eq!(
            count(command, outcome),
            requests(&after, command, outcome),
            "{command} {outcome}"
        );
    }
    assert_eq!(
        now["table_version"].as_f64().unwrap(),
        value(&after, "kvnode_routing_table_version", &[])
    );
    let members = home.run(&["members", "--via", "foo", "--json"]).ok();
    let mut listed: HashMap<String, f64> = HashMap::new();
    for line in members.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        *listed.entry(m["state"].as_str().unwrap().to_string()).or_default() += 1.0;
    }
    let scraped = scrape(addr);
    for state in ["alive", "suspect", "dead", "left"] {
        let in_stats = now["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["label"] == state)
            .map_or(0.0, |m| m["count"].as_f64().unwrap());
        let said = listed.get(state).copied().unwrap_or(0.0);
        assert_eq!(in_stats, said, "{state}: stats against members");
        assert_eq!(
            value(&scraped, "kvnode_members", &[("state", state)]),
            said,
            "{state}: /metrics against members"
        );
    }
    // And the human-readable form names the figures.
    let text = home.run(&["stats", "--via", "foo"]).ok();
    assert!(
        text.contains("node foo") && text.contains("get") && text.contains("members: 1 alive"),
        "{text}"
    );
}

#[test]
fn a_bad_path_or_method_is_refused_and_the_node_serves_on() {
    let home = Home::new();
    let (_foo, addr) = start_metrics(&home, "foo");
    let (status, _) = get(addr, "/nothing");
    assert_eq!(status, 404);
    let (status, _) = get(addr, "/metrics/../secret");
    assert_eq!(status, 404);
    let posted = agent()
        .post(&format!("http://{addr}/metrics"))
        .send_empty()
        .expect("an HTTP answer");
    assert_eq!(posted.status().as_u16(), 405);
    // Garbage that is not HTTP at all: the connection is closed, nothing else happens.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(b"\x00\x01 not http\r\n\r\n").unwrap();
    let _ = raw.read(&mut [0u8; 256]);
    assert!(!scrape(addr).samples.is_empty());
    home.run(&["put", "b", "k", "v", "--via", "foo"]).ok();
}

#[test]
fn a_request_head_never_finished_is_cut_off_and_scrapes_go_on() {
    let home = Home::new();
    let (_foo, addr) = start_metrics(&home, "foo");
    // A slowloris: a request line and then nothing.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    let started = Instant::now();
    // Others are served meanwhile.
    assert!(!scrape(addr).samples.is_empty());
    // hyper answers 408 or just closes; either way the connection ends within its timeout.
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "held {:?}",
        started.elapsed()
    );
}

#[test]
fn metrics_on_an_address_other_than_loopback_are_refused_unless_allowed() {
    let home = Home::new();
    let run = home.run(&["start", "--name", "foo", "--in-memory", "--metrics-listen", "0.0.0.0:0"]);
    run.expect(2);
    assert!(
        run.stderr.contains("metrics_listen") && run.stderr.contains("--metrics-allow-remote"),
        "{}",
        run.stderr
    );
    // Allowed: the node starts and serves (reached here through loopback).
    let (_foo, addr) = start_at(&home, "bar", "0.0.0.0:0", &["--metrics-allow-remote"]);
    let local: SocketAddr = format!("127.0.0.1:{}", addr.port()).parse().unwrap();
    wait_for("a scrape of the remote-allowed listener", PATIENCE, || {
        (!scrape(local).samples.is_empty()).then_some(())
    });
}
