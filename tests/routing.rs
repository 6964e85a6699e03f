//! Issue 3: every bucket request goes to its owner, hop by hop, across real nodes.

mod common;

use std::time::Duration;

use common::{Home, Node, wait_for};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn the_tutorials_router_test() {
    let home = Home::new();
    let _foo = home.start("foo", &["--table", "a-m=foo,n-z=bar"]);
    let _bar = home.start("bar", &["--table", "a-m=foo,n-z=bar"]);
    for via in ["foo", "bar"] {
        assert_eq!(home.run(&["route", "hello", "--via", via]).ok(), "foo\n", "asked {via}");
        assert_eq!(home.run(&["route", "world", "--via", via]).ok(), "bar\n", "asked {via}");
    }
    // A value put through one node is read through the other, wherever it lives.
    home.run(&["put", "world", "k", "from-foo", "--via", "foo"]).ok();
    assert_eq!(home.run(&["get", "world", "k", "--via", "bar"]).ok(), "from-foo\n");
    home.run(&["put", "hello", "k", "from-bar", "--via", "bar"]).ok();
    assert_eq!(home.run(&["get", "hello", "k", "--via", "foo"]).ok(), "from-bar\n");
    // A bucket whose first byte is outside the table.
    let out = home.run(&["get", "Apple", "k", "--via", "foo"]);
    out.expect(5);
    assert!(
        out.stderr
            .contains(r#"error: could not find entry for "Apple" in routing table [a-m=foo, n-z=bar] (version 1)"#),
        "{}",
        out.stderr
    );
}

#[test]
fn the_tutorials_zero_byte_bucket_fails_with_could_not_find_entry() {
    // argv cannot carry a NUL byte, so <<0>> goes through the library client.
    let home = Home::new();
    let foo = home.start("foo", &["--table", "a-m=foo,n-z=bar"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(async {
        let secret = kvnode::secret::SecretSource::Home(home.secret_path()).load().unwrap();
        let target = kvnode::client::Target {
            addr: foo.addr(),
            name: None,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let client = kvnode::client::Client::connect_with(&secret, "test", &target, deadline)
            .await
            .unwrap();
        let request = kvnode::wire::Request::Bucket(kvnode::wire::BucketRequest {
            bucket: vec![0],
            op: kvnode::wire::BucketOp::Get { key: b"k".to_vec() },
            path: vec![],
        });
        client.call(request).await.unwrap_err()
    });
    assert_eq!(err.exit_code(), 5);
    let said = err.to_string();
    assert!(
        said.starts_with(r#"could not find entry for "\x00" in routing table [a-m=foo, n-z=bar] (version 1)"#),
        "{said}"
    );
}

#[test]
fn route_json_shows_the_hops_and_route_table_shows_the_version() {
    let home = Home::new();
    let _foo = home.start("foo", &["--table", "a-m=foo,n-z=bar"]);
    let _bar = home.start("bar", &["--table", "a-m=foo,n-z=bar"]);
    let route = json(&home.run(&["route", "world", "--via", "foo", "--json"]).ok());
    assert_eq!(route["owner"], "bar");
    assert_eq!(route["path"], serde_json::json!(["foo", "bar"]));
    assert_eq!(route["hops"], 1);
    let table = home.run(&["route", "--table", "--via", "foo"]).ok();
    assert_eq!(table, "# version 1, set by foo\na-m=foo\nn-z=bar\n");
    let lines = home.run(&["route", "--table", "--via", "bar", "--json"]).ok();
    let entries: Vec<serde_json::Value> = lines.lines().map(json).collect();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["range"], "n-z");
    assert_eq!(entries[1]["node"], "bar");
    assert_eq!(entries[1]["version"], 1);
}

#[test]
fn a_chain_of_disagreeing_tables_delivers_to_the_last_owner() {
    let home = Home::new();
    let _c1 = home.start("c1", &["--table", "0x00-0xff=c2"]);
    let _c2 = home.start("c2", &["--table", "0x00-0xff=c3"]);
    let _c3 = home.start("c3", &[]);
    home.run(&["put", "anything", "k", "v", "--via", "c1"]).ok();
    let route = json(&home.run(&["route", "anything", "--via", "c1", "--json"]).ok());
    assert_eq!(route["path"], serde_json::json!(["c1", "c2", "c3"]));
    assert_eq!(
        home.run(&["get", "anything", "k", "--via", "c3"]).ok(),
        "v\n",
        "stored on c3 itself"
    );
}

#[test]
fn nodes_on_one_thread_and_on_several_serve_and_forward_alike() {
    let home = Home::new();
    // One event loop on the main thread (a current-thread runtime), and three workers.
    let one = home.start("one", &["--table", "a-m=one,n-z=three", "--threads", "1"]);
    let three = home.start("three", &["--table", "a-m=one,n-z=three", "--threads", "3"]);
    one.wait_log("node up on one thread", |l| {
        l.contains("node up") && l.contains("threads=1")
    });
    three.wait_log("node up on three threads", |l| {
        l.contains("node up") && l.contains("threads=3")
    });
    for via in ["one", "three"] {
        for bucket in ["apples", "zebras"] {
            home.run(&["put", bucket, via, "v", "--via", via]).ok();
        }
    }
    for via in ["one", "three"] {
        for bucket in ["apples", "zebras"] {
            for key in ["one", "three"] {
                assert_eq!(
                    home.run(&["get", bucket, key, "--via", via]).ok(),
                    "v\n",
                    "{bucket}/{key} via {via}"
                );
            }
        }
    }
    let out = home.run(&["start", "--name", "zero", "--threads", "0"]);
    out.expect(2);
    assert!(out.stderr.contains("--threads"), "{}", out.stderr);
}

/// Once a node's streams to an owner are open, it sends each request on at once from the
/// task that read it (the fast path); only the first requests, which open the connection
/// and its streams, go the slow path. A speed property, so it is read from the node's log.
#[test]
fn forwarded_requests_go_the_fast_path_once_the_streams_are_open() {
    let home = Home::new();
    let foo = home.start("foo", &["--table", "a-m=foo,n-z=bar", "-v"]);
    let _bar = home.start("bar", &["--table", "a-m=foo,n-z=bar"]);
    home.run(&["put", "world", "k", "v", "--via", "foo"]).ok();
    for _ in 0..20 {
        assert_eq!(home.run(&["get", "world", "k", "--via", "foo"]).ok(), "v\n");
    }
    let slow_path = |l: &str| l.contains("forwarding by the slow path");
    foo.wait_log("the first request forwarded by the slow path", slow_path);
    let slow = foo.stderr().iter().filter(|l| slow_path(l)).count();
    // One per request stream to a peer (two), at most; 21 if the fast path were never taken.
    assert!(
        slow <= 2,
        "{slow} of 21 requests went the slow path:\n{}",
        foo.stderr().join("\n")
    );
}

#[test]
fn a_two_node_loop_fails_with_exit_5_quickly() {
    let home = Home::new();
    let _l1 = home.start("l1", &["--table", "a-z=l2"]);
    let _l2 = home.start("l2", &["--table", "a-z=l1"]);
    let out = home.run(&["get", "loopy", "k", "--via", "l1", "--timeout", "30s"]);
    out.expect(5);
    assert!(out.stderr.contains("routing loop: l1 -> l2 -> l1"), "{}", out.stderr);
    assert!(
        out.elapsed < Duration::from_secs(15),
        "failed at once, not at the deadline: {:?}",
        out.elapsed
    );
}

#[test]
fn more_than_eight_hops_fail_with_the_path() {
    let home = Home::new();
    // h0 -> h1 -> ... -> h9, where h9 owns everything.
    let nodes: Vec<_> = (0..10)
        .map(|i| {
            let table = format!("0x00-0xff=h{}", i + 1);
            let args: Vec<&str> = if i < 9 { vec!["--table", &table] } else { vec![] };
            home.start(&format!("h{i}"), &args)
        })
        .collect();
    // Eight hops from h1 are allowed.
    let ok = json(
        &home
            .run(&["route", "b", "--via", "h1", "--json", "--timeout", "20s"])
            .ok(),
    );
    assert_eq!(ok["hops"], 8);
    let out = home.run(&["route", "b", "--via", "h0", "--timeout", "20s"]);
    out.expect(5);
    assert!(
        out.stderr
            .contains("hop limit of 8 reached: h0 -> h1 -> h2 -> h3 -> h4 -> h5 -> h6 -> h7 -> h8 -> h9"),
        "{}",
        out.stderr
    );
    drop(nodes);
}

/// foo and bar with `a-m=foo,n-z=bar`, `world k = v` put through foo, then bar, the
/// owner, killed: foo, and the address bar had.
fn bar_killed_after_a_put(home: &Home) -> (Node, String) {
    let foo = home.start("foo", &["--table", "a-m=foo,n-z=bar"]);
    let mut bar = home.start("bar", &["--table", "a-m=foo,n-z=bar"]);
    home.run(&["put", "world", "k", "v", "--via", "foo"]).ok();
    bar.kill9();
    (foo, bar.addr().to_string())
}

#[test]
fn an_owner_killed_mid_test_is_exit_3_naming_it_within_the_timeout() {
    let home = Home::new();
    let (_foo, bar_addr) = bar_killed_after_a_put(&home);
    let out = home.run(&["get", "world", "k", "--via", "foo", "--timeout", "2s"]);
    out.expect(3);
    assert!(
        out.stderr.contains("node bar") && out.stderr.contains(&bar_addr),
        "{}",
        out.stderr
    );
    assert!(out.elapsed < Duration::from_secs(12), "{:?}", out.elapsed);
}

/// Gets `world k` through foo until bar, the owner, answers it with `v`; the number of
/// attempts that failed meanwhile. Each attempt may take a second; before forwarding noticed
/// a restarted owner, they failed until the old connection's idle timeout (30 s).
fn gets_through_foo_until_bar_answers(home: &Home) -> usize {
    let mut failed = 0;
    wait_for("bar to answer through foo again", Duration::from_secs(15), || {
        let out = home.run(&["get", "world", "k", "--via", "foo", "--timeout", "1s"]);
        if out.code == Some(0) {
            assert_eq!(out.stdout(), "v\n");
            return Some(());
        }
        out.expect(3);
        failed += 1;
        None
    });
    failed
}

#[test]
fn an_owner_that_restarts_on_its_address_is_reached_again_at_once() {
    // In a network namespace of their own, so that its UDP counters count only their traffic.
    let Some(ns) = QuietNamespace::new() else { return };
    let home = Home::new();
    let table = ["--table", "a-m=foo,n-z=bar"];
    let mut foo = home.start_in(&ns.name, "foo", &table);
    let mut bar = home.start_in(&ns.name, "bar", &table);
    ns.run(&home, &["put", "world", "k", "v", "--via", "foo"]).ok();
    let addr = bar.addr().to_string();
    for restart in 1..=3 {
        // foo's connection to bar must be quiet (every packet acknowledged), so that no
        // retransmission reaches the new bar before the get does: the get then meets the
        // reset of a connection the new process never knew, and is sent again over a new
        // connection, so none fails.
        ns.wait_until_quiet();
        bar.kill9();
        bar = home.start_in(&ns.name, "bar", &[&table[..], &["--listen", &addr]].concat());
        let mut failed = 0;
        wait_for("bar to answer through foo again", Duration::from_secs(15), || {
            let out = ns.run(&home, &["get", "world", "k", "--via", "foo", "--timeout", "1s"]);
            if out.code == Some(0) {
                assert_eq!(out.stdout(), "v\n");
                return Some(());
            }
            out.expect(3);
            failed += 1;
            None
        });
        assert_eq!(failed, 0, "gets failed after bar's restart {restart}");
    }
    let resent = foo
        .stderr()
        .iter()
        .filter(|l| l.contains("reset its connection"))
        .count();
    println!("{resent} of 3 gets met the reset of the connection to the old bar and were sent again");
    foo.terminate();
}

/// A network namespace with only a loopback (root only), deleted when dropped.
struct QuietNamespace {
    name: String,
}

impl QuietNamespace {
    fn new() -> Option<Self> {
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: telling when a connection is quiet needs a network namespace of its own (root)");
            return None;
        }
        let name = format!("kvQ{}", std::process::id());
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        let ns = Self { name };
        if !(ip(&["netns", "add", &ns.name]) && ip(&["-n", &ns.name, "link", "set", "lo", "up"])) {
            println!("skipped: this machine would not make a network namespace (ip netns)");
            return None;
        }
        Some(ns)
    }

    /// Runs a client command inside the namespace.
    fn run(&self, home: &Home, args: &[&str]) -> common::Run {
        let start = std::time::Instant::now();
        let out = home
            .command_in(&self.name)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run kvnode");
        common::Run {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// UDP datagrams received in the namespace so far (every one sent is also received
    /// there: it has only a loopback).
    fn datagrams(&self) -> u64 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name, "cat", "/proc/net/snmp"])
            .output()
            .expect("read the namespace's UDP counters");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next().unwrap_or_default(), udp.next().unwrap_or_default());
        let at = names
            .split_whitespace()
            .position(|n| n == "InDatagrams")
            .expect("InDatagrams");
        values
            .split_whitespace()
            .nth(at)
            .and_then(|v| v.parse().ok())
            .expect("a count")
    }

    /// Waits until no datagram has moved for 100 ms: four times QUIC's largest ack delay
    /// (25 ms), so every ack-eliciting packet sent before has been acknowledged and nothing
    /// is in flight (the next keep-alive is seconds away).
    fn wait_until_quiet(&self) {
        let mut last = (self.datagrams(), std::time::Instant::now());
        wait_for("no datagram for 100 ms", Duration::from_secs(15), || {
            let now = self.datagrams();
            if now != last.0 {
                last = (now, std::time::Instant::now());
                return None;
            }
            (last.1.elapsed() >= Duration::from_millis(100)).then_some(())
        });
    }
}

impl Drop for QuietNamespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn an_owner_that_restarts_at_another_address_is_found_again() {
    let home = Home::new();
    let (_foo, old) = bar_killed_after_a_put(&home);
    // A durable node comes back on the port it had; this one is told to take another.
    let listen = another_port();
    let bar = home.start("bar", &["--table", "a-m=foo,n-z=bar", "--listen", &listen]);
    assert_ne!(bar.addr().to_string(), old, "bar came back at its old address");
    // The first get goes to the old address and times out; the next looks bar up again.
    let failed = gets_through_foo_until_bar_answers(&home);
    assert!(failed <= 1, "{failed} gets failed after bar came back");
}

/// A loopback address whose UDP port was free a moment ago, for a node to listen on.
fn another_port() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free UDP port");
    socket.local_addr().expect("its address").to_string()
}

/// Whether foo's gossip membership holds bar alive at `addr`.
fn foo_sees_bar_alive_at(home: &Home, addr: &str) -> bool {
    let out = home.run(&["members", "--via", "foo"]);
    out.stdout().lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.starts_with(&["bar", addr, "alive"])
    })
}

#[test]
fn an_owner_that_restarts_elsewhere_is_reached_once_gossip_knows_its_address() {
    let home = Home::new();
    let foo = home.start("foo", &["--table", "a-m=foo,n-z=bar"]);
    let join = ["--table", "a-m=foo,n-z=bar", "--join", &foo.full()];
    let mut bar = home.start("bar", &join);
    let old = bar.addr().to_string();
    wait_for("foo to see bar", Duration::from_secs(10), || {
        foo_sees_bar_alive_at(&home, &old).then_some(())
    });
    // Through foo, so that foo holds a connection to bar for forwarding.
    home.run(&["put", "world", "k", "v", "--via", "foo"]).ok();
    bar.kill9();
    // A durable node comes back on the port it had; this one is told to take another.
    let listen = another_port();
    let bar = home.start("bar", &[&join[..], &["--listen", &listen]].concat());
    let new = bar.addr().to_string();
    assert_ne!(new, old, "bar came back at its old address");
    wait_for(
        "foo's gossip to learn bar's new address",
        Duration::from_secs(10),
        || foo_sees_bar_alive_at(&home, &new).then_some(()),
    );
    // Not one get is lost to the connection foo held to the dead process.
    let out = home.run(&["get", "world", "k", "--via", "foo", "--timeout", "2s"]);
    assert_eq!(out.ok(), "v\n");
}

#[test]
fn an_owner_that_never_answers_is_exit_3_within_the_timeout() {
    // bar is only a [peers] address where nothing listens: QUIC hears nothing back.
    let home = Home::new();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = home.write_file(
        "foo.toml",
        &format!(
            "name = \"foo\"\nrouting_table = [\"a-m=foo\", \"n-z=bar\"]\n[peers]\nbar = \"{}\"\n",
            silent.local_addr().unwrap()
        ),
    );
    let _foo = home.start_raw("foo", &["--config", config.to_str().unwrap()]);
    let out = home.run(&["get", "world", "k", "--timeout", "1500ms"]);
    out.expect(3);
    assert!(
        out.stderr.contains("node bar") && out.stderr.contains(&silent.local_addr().unwrap().to_string()),
        "{}",
        out.stderr
    );
    assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
}

#[test]
fn names_resolve_through_peers_in_the_config_file() {
    // Two homes: the nodes cannot see each other's directory, only the [peers] address.
    let (home_a, home_b, secret) = common::two_homes_one_secret();
    let p2 = home_b.start("p2", &["--table", "a-m=p1,n-z=p2", "--secret-file", &secret]);
    let config = home_a.write_file(
        "p1.toml",
        &format!(
            "name = \"p1\"\nrouting_table = [\"a-m=p1\", \"n-z=p2\"]\n[peers]\np2 = \"{}\"\n",
            p2.addr()
        ),
    );
    let _p1 = home_a.start_raw("p1", &["--config", config.to_str().unwrap(), "--secret-file", &secret]);
    home_a.run(&["put", "world", "k", "v", "--secret-file", &secret]).ok();
    assert_eq!(home_b.run(&["get", "world", "k", "--secret-file", &secret]).ok(), "v\n");
}

#[test]
fn forwarded_requests_share_one_pooled_connection_per_peer() {
    let home = Home::new();
    let _foo = home.start("foo", &["--table", "a-m=foo,n-z=bar"]);
    let bar = home.start("bar", &["--table", "a-m=foo,n-z=bar", "-v"]);
    for i in 0..20 {
        home.run(&["put", "world", &format!("k{i}"), "v", "--via", "foo"]).ok();
    }
    let from_foo = bar
        .stderr()
        .iter()
        .filter(|l| l.contains("authenticated") && l.contains("name=foo"))
        .count();
    assert_eq!(from_foo, 1, "{:#?}", bar.stderr());
}

/// foo, logging at debug, whose table gives every bucket to bar, a `[peers]` address where
/// nothing answers (kept bound while the socket lives): requests through foo wait it out.
fn foo_forwarding_to_a_silent_bar(home: &Home) -> (common::Node, std::net::UdpSocket) {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = home.write_file(
        "foo.toml",
        &format!(
            "name = \"foo\"\nrouting_table = [\"a-z=bar\"]\n[peers]\nbar = \"{}\"\n",
            silent.local_addr().unwrap()
        ),
    );
    let foo = home.start_raw("foo", &["--config", config.to_str().unwrap(), "-v"]);
    (foo, silent)
}

#[test]
fn a_second_signal_stops_a_draining_node_at_once() {
    let home = Home::new();
    let (mut foo, _silent) = foo_forwarding_to_a_silent_bar(&home);
    // A request that would hold the drain for 30 s: its owner never answers.
    let mut client = home.command();
    client
        .args(["get", "world", "k", "--timeout", "30s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut client = client.spawn().unwrap();
    foo.wait_log("the request to be in flight", |l| l.contains("forwarding"));
    foo.signal(libc::SIGTERM);
    foo.wait_log("the drain to begin", |l| l.contains("shutting down"));
    foo.signal(libc::SIGINT);
    // Without it, the node would wait out its 10 s shutdown deadline.
    assert_eq!(foo.wait_exit().code(), Some(130));
    assert!(foo.stderr().iter().any(|l| l.contains("stopping at once")));
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn a_stopping_node_finishes_the_requests_in_flight() {
    let home = Home::new();
    let (mut foo, _silent) = foo_forwarding_to_a_silent_bar(&home);
    // A request that will take until its deadline: its owner never answers.
    let client = {
        let mut cmd = home.command();
        cmd.args(["get", "world", "k", "--timeout", "3s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    foo.wait_log("the request to be in flight", |l| l.contains("forwarding"));
    foo.signal(libc::SIGTERM);
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The answer came from the node (naming the owner), not a dropped connection.
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("node bar"), "{stderr}");
    assert_eq!(foo.wait_exit().code(), Some(0));
}

/// foo and bar (`a-m=foo,n-z=bar`), bar joined to foo, then stopped (`kill -9`, or SIGTERM
/// when `gently`) until foo's gossip holds it `dead` (or `left`): foo, and that state.
fn bar_down_in_foos_gossip(home: &Home, gently: bool) -> (Node, &'static str) {
    let table = ["--in-memory", "--table", "a-m=foo,n-z=bar"];
    let foo = home.start("foo", &table);
    let mut bar = home.start("bar", &[&table[..], &["--join", "foo"]].concat());
    home.run(&["put", "world", "k", "v", "--via", "foo"]).ok();
    let state = if gently {
        assert!(bar.terminate().success());
        "left"
    } else {
        bar.kill9();
        "dead"
    };
    wait_for(&format!("foo to hold bar {state}"), Duration::from_secs(30), || {
        let members = home.run(&["members", "--via", "foo", "--json"]).ok();
        members
            .lines()
            .any(|l| json(l)["name"] == "bar" && json(l)["state"] == state)
            .then_some(())
    });
    (foo, state)
}

#[test]
fn a_request_for_an_owner_gossip_holds_dead_or_left_fails_at_once_naming_it() {
    for gently in [false, true] {
        let home = Home::new();
        let (_foo, state) = bar_down_in_foos_gossip(&home, gently);
        for args in [
            &["get", "world", "k"][..],
            &["put", "world", "k", "w"],
            &["keys", "world"],
        ] {
            let out = home.run(&[args, &["--via", "foo", "--timeout", "20s"]].concat());
            out.expect(3);
            assert!(
                out.stderr.contains("node bar") && out.stderr.contains(state),
                "{args:?}: {}",
                out.stderr
            );
            // At once: not after the 20 s it was given (a client start takes a moment).
            assert!(out.elapsed < Duration::from_secs(3), "{args:?} took {:?}", out.elapsed);
        }
    }
}

#[test]
fn route_answers_from_the_table_when_the_owner_is_down_with_its_state() {
    for gently in [false, true] {
        let home = Home::new();
        let (_foo, state) = bar_down_in_foos_gossip(&home, gently);
        let out = home.run(&["route", "world", "--via", "foo", "--timeout", "20s"]);
        assert_eq!(out.ok(), "bar\n");
        assert!(
            out.stderr.contains("bar") && out.stderr.contains(state),
            "{}",
            out.stderr
        );
        assert!(out.elapsed < Duration::from_secs(3), "took {:?}", out.elapsed);
        let out = json(&home.run(&["route", "world", "--via", "foo", "--json"]).ok());
        assert_eq!(
            (&out["owner"], &out["state"]),
            (&json("\"bar\""), &json(&format!("\"{state}\"")))
        );
        assert_eq!(out["path"], json("[\"foo\"]"));
        // A live owner: alive, and the hops taken to it.
        let out = json(&home.run(&["route", "hello", "--via", "foo", "--json"]).ok());
        assert_eq!(
            (&out["owner"], &out["state"], &out["hops"]),
            (&json("\"foo\""), &json("\"alive\""), &json("0"))
        );
    }
}
