//! Issue 27 part 2: `kvnode watch BUCKET [KEY]` against real nodes: the changes in order with
//! increasing positions, through another node, across an owner's restart (exit 3, saying
//! changes may have been missed), a watcher that never reads (it falls behind; the node's
//! memory stays bounded and it serves on), a replicated range's watch across a leader's
//! kill -9, and the usual exit codes for bad input and a stopped node.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use common::{Home, PATIENCE, wait_for};
use serde_json::Value;

/// A running `kvnode watch`, killed when dropped if still running.
struct Watcher {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Watcher {
    /// `kvnode watch ARGS... -v`, once it says it is watching (changes from then on are
    /// printed). Its stdout is collected, unless `unread`: then the pipe is handed back,
    /// to be read (or not) by the test.
    fn start(home: &Home, args: &[&str], unread: bool) -> (Self, Option<ChildStdout>) {
        let mut child = home
            .command()
            .arg("watch")
            .args(args)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvnode watch");
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let mut readers = vec![collect(child.stderr.take().unwrap(), Arc::clone(&stderr))];
        let pipe = child.stdout.take().unwrap();
        let pipe = if unread {
            Some(pipe)
        } else {
            readers.push(collect(pipe, Arc::clone(&stdout)));
            None
        };
        let mut watcher = Self {
            child,
            stdout,
            stderr,
            readers,
        };
        wait_for("the watch to start", PATIENCE, || {
            if let Some(status) = watcher.child.try_wait().unwrap() {
                panic!("the watch exited with {status}: {}", watcher.stderr().join("\n"));
            }
            watcher.stderr().iter().any(|l| l.contains("watching")).then_some(())
        });
        (watcher, pipe)
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the exit code, then for every line printed.
    fn wait_exit(&mut self) -> Option<i32> {
        let status = wait_for("the watch to exit", PATIENCE, || self.child.try_wait().unwrap());
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status.code()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap().push(line);
        }
    })
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines.iter().map(|l| serde_json::from_str(l).expect(l)).collect()
}

/// A node's resident memory, in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn puts_and_deletes_are_seen_in_order_with_increasing_positions_and_a_key_sees_its_own() {
    let home = Home::new();
    let _n1 = home.start("n1", &[]); // durable: changes are seen once synced
    let (mut all, _) = Watcher::start(&home, &["shopping", "--via", "n1", "--json", "--count", "4"], false);
    let (mut eggs, _) = Watcher::start(&home, &["shopping", "eggs", "--via", "n1", "--count", "3"], false);
    home.run(&["put", "shopping", "eggs", "3", "--via", "n1"]).ok();
    home.run(&["put", "other", "eggs", "9", "--via", "n1"]).ok(); // another bucket: not seen
    home.run(&["put", "shopping", "milk", "1", "--via", "n1"]).ok();
    home.run(&["delete", "shopping", "eggs", "--via", "n1"]).ok();
    home.run(&["delete", "shopping", "eggs", "--via", "n1"]).expect(1); // nothing changed
    home.run(&["put", "shopping", "eggs", "two\nlines", "--via", "n1"]).ok();

    assert_eq!(all.wait_exit(), Some(0), "{:?}", all.stderr());
    let events = json_lines(&all.stdout());
    let seen: Vec<(&str, &str, Option<&str>)> = events
        .iter()
        .map(|e| {
            assert_eq!(e["bucket"], "shopping");
            (
                e["op"].as_str().unwrap(),
                e["key"].as_str().unwrap(),
                e["value"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("put", "eggs", Some("3")),
            ("put", "milk", Some("1")),
            ("delete", "eggs", None),
            ("put", "eggs", Some("two\nlines")),
        ]
    );
    let positions: Vec<u64> = events.iter().map(|e| e["position"]["seq"].as_u64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert!(
        events
            .iter()
            .all(|e| e["position"]["node"] == "n1" && e["position"]["epoch"] == events[0]["position"]["epoch"])
    );

    assert_eq!(eggs.wait_exit(), Some(0), "{:?}", eggs.stderr());
    assert_eq!(eggs.stdout(), ["put eggs 3", "delete eggs", "put eggs two\\nlines"]);
}

/// The port a node logged for a listener: `what` is in the line, `field=PORT` or
/// `field=HOST:PORT` names it.
fn logged_port(node: &common::Node, what: &str, field: &str) -> u16 {
    let line = node.wait_log(what, |l| l.contains(what));
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {line}"));
    value.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn writes_through_the_text_protocol_and_resp_are_seen_like_any_other() {
    use std::io::Write;
    use std::net::TcpStream;

    let home = Home::new();
    let n1 = home.start("n1", &["--text-listen", "127.0.0.1:0", "--resp-listen", "127.0.0.1:0"]);
    let text_port = logged_port(&n1, "serving the guide's text protocol", "addr=");
    let resp_port = logged_port(&n1, "serving RESP", "port=");
    let (mut watch, _) = Watcher::start(&home, &["b", "--via", "n1", "--count", "4"], false);
    // The guide's CREATE and PUT (a put into a bucket that must exist), then RESP's HSET (a
    // put that reports whether the key is new) and HDEL, then the guide's DELETE.
    let mut text = TcpStream::connect(("127.0.0.1", text_port)).unwrap();
    text.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answers = BufReader::new(text.try_clone().unwrap());
    let mut say = |line: &str| {
        text.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut answer = String::new();
        answers.read_line(&mut answer).unwrap();
        assert_eq!(answer, "OK\r\n", "{line}");
    };
    say("CREATE b");
    say("PUT b k 1");
    let secret = std::fs::read_to_string(home.secret_path()).unwrap();
    let url = format!("redis://:{}@127.0.0.1:{resp_port}/", secret.trim());
    let mut redis = redis::Client::open(url).unwrap().get_connection().unwrap();
    let added: i64 = redis::cmd("HSET").arg("b").arg("f").arg("2").query(&mut redis).unwrap();
    assert_eq!(added, 1);
    let removed: i64 = redis::cmd("HDEL").arg("b").arg("f").query(&mut redis).unwrap();
    assert_eq!(removed, 1);
    say("DELETE b k");
    assert_eq!(watch.wait_exit(), Some(0), "{:?}", watch.stderr());
    assert_eq!(watch.stdout(), ["put k 1", "put f 2", "delete f", "delete k"]);
}

#[test]
fn a_watch_through_another_node_sees_every_change_in_order() {
    let home = Home::new();
    let table = ["--table", "a-m=n1,n-z=n2", "--in-memory"];
    let _n1 = home.start("n1", &table);
    let _n2 = home.start("n2", &table);
    let route = home.run(&["route", "nuts", "--via", "n1"]).ok();
    assert_eq!(route.trim(), "n2");
    let (mut watch, _) = Watcher::start(&home, &["nuts", "--via", "n1", "--count", "6"], false);
    for i in 0..6 {
        let via = if i % 2 == 0 { "n1" } else { "n2" };
        home.run(&["put", "nuts", &format!("k{i}"), &i.to_string(), "--via", via])
            .ok();
    }
    assert_eq!(watch.wait_exit(), Some(0), "{:?}", watch.stderr());
    let want: Vec<String> = (0..6).map(|i| format!("put k{i} {i}")).collect();
    assert_eq!(watch.stdout(), want);
}

#[test]
fn a_watch_whose_entry_node_restarts_resumes_without_missing_or_repeating_a_change() {
    let home = Home::new();
    let table = ["--table", "a-m=n1,n-z=n2", "--in-memory"];
    let mut n1 = home.start("n1", &table);
    let listen = n1.addr().to_string();
    let _n2 = home.start("n2", &table);
    let (mut watch, _) = Watcher::start(
        &home,
        &["nuts", "--via", "n1", "--timeout", "20s", "--count", "4"],
        false,
    );
    home.run(&["put", "nuts", "a", "1", "--via", "n2"]).ok();
    wait_for("the first change", PATIENCE, || {
        (!watch.stdout().is_empty()).then_some(())
    });
    // The hop the watch goes through dies; the owner's feed, with its positions, lives on.
    // (Promptly: the stop does not wait for the poll it sent on, which waits 10 s for a change.)
    let stopping = std::time::Instant::now();
    assert!(n1.terminate().success());
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    home.run(&["put", "nuts", "b", "2", "--via", "n2"]).ok();
    home.run(&["delete", "nuts", "a", "--via", "n2"]).ok();
    let _n1 = home.start("n1", &[&table[..], &["--listen", &listen]].concat());
    home.run(&["put", "nuts", "c", "3", "--via", "n1"]).ok();
    assert_eq!(watch.wait_exit(), Some(0), "{:?}", watch.stderr());
    assert_eq!(watch.stdout(), ["put a 1", "put b 2", "delete a", "put c 3"]);
}

#[test]
fn an_owner_restart_ends_the_watch_saying_changes_may_have_been_missed() {
    let home = Home::new();
    let mut n1 = home.start("n1", &[]);
    let listen = n1.addr().to_string();
    let (mut watch, _) = Watcher::start(&home, &["b", "--via", "n1", "--timeout", "20s"], false);
    home.run(&["put", "b", "k", "1", "--via", "n1"]).ok();
    wait_for("the first change", PATIENCE, || {
        (!watch.stdout().is_empty()).then_some(())
    });
    assert!(n1.terminate().success());
    // The same data, at the same address: a new feed, whose positions the watch's is not of.
    let _n1 = home.start("n1", &["--listen", &listen]);
    home.run(&["put", "b", "k", "2", "--via", "n1"]).ok();
    assert_eq!(watch.wait_exit(), Some(3), "{:?}", watch.stderr());
    assert_eq!(
        watch.stdout(),
        ["put k 1"],
        "nothing printed twice, nothing after the gap"
    );
    let said = watch.stderr().join("\n");
    assert!(
        said.contains("n1 restarted") && said.contains("changes may have been missed"),
        "{said}"
    );
}

#[test]
fn a_bucket_that_changes_owner_ends_the_watch_saying_changes_may_have_been_missed() {
    let home = Home::new();
    let _n1 = home.start("n1", &["--in-memory", "--table", "a-z=n1"]);
    let _n2 = home.start("n2", &["--in-memory", "--join", "n1"]);
    wait_for("n2 to hold n1's table", PATIENCE, || {
        let owner = home.run(&["route", "b", "--via", "n2"]);
        (owner.code == Some(0) && owner.stdout().trim() == "n1").then_some(())
    });
    let (mut watch, _) = Watcher::start(&home, &["b", "--via", "n1"], false);
    home.run(&["put", "b", "k", "1", "--via", "n1"]).ok();
    wait_for("the first change", PATIENCE, || {
        (!watch.stdout().is_empty()).then_some(())
    });
    home.run(&["route", "--set", "a-z=n2", "--via", "n1"]).ok();
    wait_for("n1 to send b to n2", PATIENCE, || {
        (home.run(&["route", "b", "--via", "n1"]).stdout().trim() == "n2").then_some(())
    });
    home.run(&["put", "b", "k", "2", "--via", "n1"]).ok();
    assert_eq!(watch.wait_exit(), Some(3), "{:?}", watch.stderr());
    assert_eq!(watch.stdout(), ["put k 1"]);
    let said = watch.stderr().join("\n");
    assert!(
        said.contains("watched at n1, and its owner is now n2") && said.contains("may have been missed"),
        "{said}"
    );
}

#[test]
fn a_watcher_that_never_reads_falls_behind_while_the_node_serves_on_in_bounded_memory() {
    let home = Home::new();
    let n1 = home.start("n1", &["--in-memory"]);
    let (mut watch, pipe) = Watcher::start(&home, &["slow", "--via", "n1"], true);
    let before = rss_kib(n1.pid());
    // 160 MiB of changes to one key: ten times what the feed keeps.
    let bench = home.run(&[
        "bench", "--via", "n1", "-t", "put", "-n", "2560", "-d", "65536", "-c", "4", "--bucket", "slow",
    ]);
    bench.expect(0);
    let after = rss_kib(n1.pid());
    assert!(
        after < before + 96 * 1024,
        "the node grew from {before} KiB to {after} KiB"
    );
    // Other requests are served meanwhile.
    let value = home.run(&["get", "slow", "key:000000000000", "--via", "n1", "--raw"]);
    assert_eq!(value.expect(0).stdout.len(), 65536);
    // Reading at last, the watcher prints what it had, then learns it fell behind.
    let mut printed = Vec::new();
    pipe.unwrap().read_to_end(&mut printed).unwrap();
    assert_eq!(watch.wait_exit(), Some(3), "{:?}", watch.stderr());
    let said = watch.stderr().join("\n");
    assert!(said.contains("the watch fell behind"), "{said}");
    assert!(
        printed.split(|&b| b == b'\n').count() < 2560,
        "not every change was printed"
    );
}

#[test]
fn an_invalid_bucket_is_bad_usage_and_a_stopped_node_is_unreachable() {
    let home = Home::new();
    let mut n1 = home.start("n1", &["--in-memory"]);
    let run = home.run(&["watch", "", "--via", "n1"]);
    run.expect(2);
    assert!(run.stderr.contains("bucket name is empty"), "{}", run.stderr);
    home.run(&["watch", "b", &"k".repeat(1025), "--via", "n1"]).expect(2);
    let at = n1.full();
    assert!(n1.terminate().success());
    let run = home.run(&["watch", "b", "--via", &at, "--timeout", "2s"]);
    run.expect(3);
}

/// `put nuts KEY VALUE --via VIA`, retried until acknowledged (a leader is being elected).
fn put_until_ok(home: &Home, key: &str, value: &str, via: &str) {
    wait_for(&format!("a put of {key} through {via}"), PATIENCE, || {
        let out = home.run(&["put", "nuts", key, value, "--via", via, "--timeout", "2s"]);
        (out.code == Some(0)).then_some(())
    });
}

#[test]
fn a_watch_of_a_replicated_range_follows_its_leader_across_a_kill_without_missing_or_repeating_a_change() {
    let home = Home::new();
    let names = ["n1", "n2", "n3"];
    let table = ["--table", "a-z=n1+n2+n3"];
    let mut nodes: Vec<_> = names
        .iter()
        .map(|n| {
            let join: &[&str] = if *n == "n1" { &[] } else { &["--join", "n1"] };
            home.start(n, &[&table[..], join].concat())
        })
        .collect();
    let leader = || {
        wait_for("a leader of a-z", PATIENCE, || {
            let out = home.run(&["route", "nuts", "--via", "n1", "--json"]);
            let route: Value = serde_json::from_str(out.stdout().trim()).ok()?;
            route["leader"].as_str().map(str::to_string)
        })
    };
    let killed = leader();
    let via = *names.iter().find(|n| **n != killed).unwrap();
    let (mut watch, _) = Watcher::start(&home, &["nuts", "--via", via, "--json", "--timeout", "20s"], false);
    let printed = |watch: &Watcher, n: usize| {
        wait_for(&format!("{n} changes printed"), PATIENCE, || {
            (json_lines(&watch.stdout()).len() >= n).then_some(())
        })
    };
    for i in 0..3 {
        put_until_ok(&home, &format!("k{i}"), &format!("v{i}"), via);
    }
    printed(&watch, 3);
    nodes[names.iter().position(|n| *n == killed).unwrap()].kill9();
    for i in 3..6 {
        put_until_ok(&home, &format!("k{i}"), &format!("v{i}"), via);
    }
    wait_for("every change printed", PATIENCE, || {
        json_lines(&watch.stdout())
            .iter()
            .any(|e| e["key"] == "k5")
            .then_some(())
    });
    let _ = watch.child.kill();
    let events = json_lines(&watch.stdout());
    // Never a position twice, never one going back: nothing repeated, in the log's order.
    let seqs: Vec<u64> = events.iter().map(|e| e["position"]["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(events.iter().all(|e| e["position"]["range"] == "a-z"), "{events:?}");
    // Every acknowledged put, in order (one retried may have taken effect twice: two changes).
    let mut changes: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    changes.dedup();
    let want: Vec<(String, String)> = (0..6).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
    assert_eq!(changes, want);
    // Served first by the killed leader, then by the next.
    assert_eq!(events[0]["position"]["node"], killed.as_str());
    assert_ne!(events.last().unwrap()["position"]["node"], killed.as_str());
}

#[test]
fn the_help_shows_an_example() {
    let home = Home::new();
    let help = home.run(&["watch", "--help"]).ok();
    assert!(help.contains("kvnode watch shopping --via foo"), "{help}");
    assert!(help.contains("Exit 3"), "{help}");
}

/// Watch requests no CLI sends, straight on the wire: each gets a typed error or a bounded
/// answer, never a panic, and the node serves on.
#[test]
fn malformed_watch_requests_get_errors_and_the_node_serves_on() {
    use kvnode::client::{Client, Target};
    use kvnode::secret::SecretSource;
    use kvnode::wire::{BucketOp, BucketRequest, Reply, Request, WatchPosition};
    use tokio::time::Instant;

    let home = Home::new();
    let n1 = home.start("n1", &["--in-memory"]);
    let watch = |key: Option<&[u8]>, from: Option<WatchPosition>, wait_ms: u32| {
        Request::Bucket(BucketRequest {
            bucket: b"b".to_vec(),
            op: BucketOp::Watch {
                key: key.map(|k| k.to_vec().into()),
                from: from.map(Box::new),
                wait_ms,
            },
            path: vec![],
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let secret = SecretSource::Home(home.secret_path()).load().unwrap();
        let target = Target {
            addr: n1.addr(),
            name: None,
        };
        let deadline = Instant::now() + PATIENCE;
        let client = Client::connect_with(&secret, "test", &target, deadline).await.unwrap();
        for key in [&b""[..], &[b'k'; 1025]] {
            let err = client.call(watch(Some(key), None, 0)).await.unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
        }
        let Reply::Changes { upto, .. } = client.call(watch(None, None, 0)).await.unwrap() else {
            panic!("a new watch is told where it starts");
        };
        // A position this feed never gave.
        let ahead = WatchPosition {
            seq: upto.seq + 1000,
            ..upto.clone()
        };
        let err = client.call(watch(None, Some(ahead), 0)).await.unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        // Another node's position: a gap, not a silent resume.
        let elsewhere = WatchPosition {
            node: "n9".parse().unwrap(),
            ..upto.clone()
        };
        let err = client.call(watch(None, Some(elsewhere), 0)).await.unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(err.to_string().contains("may have been missed"), "{err}");
        // The longest wait asked for is cut to half the request's deadline: answered, empty.
        let timeout = std::time::Duration::from_secs(2);
        let answer = client
            .call_within(watch(None, Some(upto.clone()), u32::MAX), timeout)
            .await;
        assert!(
            matches!(answer, Ok(Reply::Changes { ref events, .. }) if events.is_empty()),
            "{answer:?}"
        );
        assert!(matches!(client.call(Request::Ping).await, Ok(Reply::Pong { .. })));
        client.close().await;
    });
}

#[test]
fn stats_count_the_watches_waiting_at_their_owner() {
    let home = Home::new();
    let _n1 = home.start("n1", &["--in-memory"]);
    let waiting = || {
        let stats = home.run(&["stats", "--via", "n1", "--json"]).ok();
        let stats: Value = serde_json::from_str(stats.trim()).unwrap();
        stats["now"]["watches_waiting"].as_u64().unwrap()
    };
    assert_eq!(waiting(), 0);
    let (watch, _) = Watcher::start(&home, &["b", "--via", "n1"], false);
    wait_for("the watch to wait at n1", PATIENCE, || (waiting() == 1).then_some(()));
    drop(watch);
    // Its last poll ends at its wait (half of --timeout) at the latest.
    wait_for("the watch to be gone", PATIENCE, || (waiting() == 0).then_some(()));
}

#[test]
fn a_watch_whose_node_stays_gone_gives_up_after_its_timeout_with_exit_3() {
    let home = Home::new();
    let mut n1 = home.start("n1", &["--in-memory"]);
    let (mut watch, _) = Watcher::start(&home, &["b", "--via", "n1", "--timeout", "1s"], false);
    assert!(n1.terminate().success());
    assert_eq!(watch.wait_exit(), Some(3));
    let said = watch.stderr().join("\n");
    assert!(said.contains("could not be re-established within 1s"), "{said}");
}
