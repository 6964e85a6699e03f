//! Issue 6: durable storage — nothing acknowledged is lost, to kill -9, restarts, a full disk;
//! data directories are locked; corrupt files are named, never a panic.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Home, Node, PATIENCE, wait_for};
use kvnode::client::{Client, Target};
use kvnode::secret::SecretSource;
use kvnode::wire::{BucketOp, BucketRequest, Request};
use tokio::time::Instant;

fn put(bucket: &str, key: &str, value: &str) -> Request {
    Request::Bucket(BucketRequest {
        bucket: bucket.as_bytes().to_vec(),
        op: BucketOp::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        },
        path: vec![],
    })
}

/// `writers` clients put as fast as they can, each on its own connection, until told to stop
/// or their node dies; returns every (bucket, key, value) the node acknowledged.
fn write_until_stopped(
    home: &Home,
    addr: std::net::SocketAddr,
    writers: usize,
    stop: impl FnOnce(&Arc<Mutex<Vec<(String, String, String)>>>),
) -> Vec<(String, String, String)> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let secret = SecretSource::Home(home.secret_path()).load().unwrap();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (acked, secret) = (Arc::clone(&acked), secret.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let target = Target { addr, name: None };
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let Ok(client) = Client::connect_with(&secret, "writer", &target, deadline).await else {
                        return;
                    };
                    for i in 0.. {
                        let (bucket, key, value) = (format!("w{w}"), format!("k{i:06}"), format!("v{w}.{i}"));
                        match client
                            .call_within(put(&bucket, &key, &value), Duration::from_secs(3))
                            .await
                        {
                            Ok(_) => acked.lock().unwrap().push((bucket, key, value)),
                            Err(_) => return, // the node is gone
                        }
                    }
                });
            })
        })
        .collect();
    stop(&acked);
    for t in threads {
        t.join().unwrap();
    }
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

fn get(bucket: &str, key: &str) -> Request {
    Request::Bucket(BucketRequest {
        bucket: bucket.as_bytes().to_vec(),
        op: BucketOp::Get {
            key: key.as_bytes().to_vec(),
        },
        path: vec![],
    })
}

/// Issue 22 point 11: a read that blocks in the engine (in test builds, a read of bucket
/// `fault-injection-slow-read` takes 3 s, as a read that misses the cache on a slow disk
/// would) holds up neither the other requests of its stream nor, with `--threads 1`, the node.
#[test]
fn a_slow_durable_read_stalls_neither_its_stream_nor_the_node() {
    let home = Home::new();
    let foo = home.start("foo", &["--threads", "1"]);
    home.run(&["put", "fault-injection-slow-read", "k", "slow"]).ok();
    home.run(&["put", "b", "k", "fast"]).ok();
    let secret = SecretSource::Home(home.secret_path()).load().unwrap();
    let target = Target {
        addr: foo.addr(),
        name: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::connect_with(&secret, "tester", &target, Instant::now() + PATIENCE)
            .await
            .unwrap();
        // Both on the client's one stream: the slow read first, then a fast one.
        let slow = client.call_within(get("fault-injection-slow-read", "k"), PATIENCE);
        tokio::pin!(slow);
        let fast = async {
            let reply = client.call_within(get("b", "k"), PATIENCE).await;
            // Another client, on its own connection, while the slow read still blocks.
            let other = tokio::task::spawn_blocking({
                let home_run = home.command();
                move || {
                    let mut cmd = home_run;
                    cmd.args(["get", "b", "k"]).output().unwrap()
                }
            })
            .await
            .unwrap();
            (reply, other)
        };
        let (reply, other) = tokio::select! {
            both = fast => both,
            slow = &mut slow => panic!("the slow read was answered before the fast ones: {slow:?}"),
        };
        assert!(
            matches!(&reply, Ok(kvnode::wire::Reply::Value(v)) if v.as_slice() == b"fast"),
            "{reply:?}"
        );
        assert_eq!(String::from_utf8_lossy(&other.stdout), "fast\n", "{other:?}");
        let slow = slow.await;
        assert!(
            matches!(&slow, Ok(kvnode::wire::Reply::Value(v)) if v.as_slice() == b"slow"),
            "{slow:?}"
        );
    });
}

#[test]
fn kill_9_during_concurrent_puts_loses_no_acknowledged_write() {
    let home = Home::new();
    let mut foo = home.start("foo", &[]);
    let addr = foo.addr();
    let acked = write_until_stopped(&home, addr, 8, |acked| {
        wait_for("a few hundred acknowledged writes", PATIENCE, || {
            (acked.lock().unwrap().len() >= 400).then_some(())
        });
        foo.kill9();
    });
    let foo = home.start("foo", &[]);
    let mut stored = std::collections::HashMap::new();
    for (bucket, _, _) in &acked {
        stored
            .entry(bucket.clone())
            .or_insert_with(|| home.run(&["keys", bucket]).ok());
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|(b, k, _)| !stored[b].lines().any(|line| line == k))
        .collect();
    assert!(acked.len() >= 400);
    assert_eq!(
        lost.len(),
        0,
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    // Not only the keys: every acknowledged value, read back over one connection.
    let wrong = values_differing(&home, foo.addr(), &acked);
    assert!(
        wrong.is_empty(),
        "{} of {} acknowledged values differ: {:?}",
        wrong.len(),
        acked.len(),
        &wrong[..wrong.len().min(10)]
    );
}

/// The (bucket, key, expected value, what a get found) of each of `expected` whose value at
/// `addr` is not the one expected.
fn values_differing(
    home: &Home,
    addr: std::net::SocketAddr,
    expected: &[(String, String, String)],
) -> Vec<(String, String, String, String)> {
    let secret = SecretSource::Home(home.secret_path()).load().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let target = Target { addr, name: None };
        let client = Client::connect_with(&secret, "checker", &target, Instant::now() + PATIENCE)
            .await
            .unwrap();
        let mut wrong = Vec::new();
        for (bucket, key, value) in expected {
            let found = match client.call_within(get(bucket, key), PATIENCE).await {
                Ok(kvnode::wire::Reply::Value(v)) if v.as_slice() == value.as_bytes() => continue,
                other => format!("{other:?}"),
            };
            wrong.push((bucket.clone(), key.clone(), value.clone(), found));
        }
        wrong
    })
}

#[test]
fn a_restarted_node_restores_every_bucket() {
    let home = Home::new();
    let mut foo = home.start("foo", &[]);
    for b in 0..5 {
        for k in 0..4 {
            home.run(&["put", &format!("bucket{b}"), &format!("key{k}"), &format!("{b}.{k}")])
                .ok();
        }
    }
    home.run(&["delete", "bucket0", "key0"]).ok();
    assert_eq!(foo.terminate().code(), Some(0));
    let foo = home.start("foo", &[]);
    for b in 0..5 {
        let keys = home.run(&["keys", &format!("bucket{b}")]).ok();
        let expected: Vec<String> = (0..4)
            .filter(|k| b != 0 || *k != 0)
            .map(|k| format!("key{k}"))
            .collect();
        assert_eq!(keys.lines().collect::<Vec<_>>(), expected);
    }
    assert_eq!(home.run(&["get", "bucket3", "key2"]).ok(), "3.2\n");
    home.run(&["get", "bucket0", "key0"]).expect(1);
    let expected: Vec<_> = (0..5)
        .flat_map(|b| (0..4).map(move |k| (b, k)))
        .filter(|&(b, k)| b != 0 || k != 0)
        .map(|(b, k)| (format!("bucket{b}"), format!("key{k}"), format!("{b}.{k}")))
        .collect();
    assert_eq!(values_differing(&home, foo.addr(), &expected), vec![]);
}

#[test]
fn in_memory_keeps_nothing_across_a_restart() {
    let home = Home::new();
    let mut foo = home.start("foo", &["--in-memory"]);
    home.run(&["put", "b", "k", "v"]).ok();
    foo.terminate();
    let _foo = home.start("foo", &["--in-memory"]);
    home.run(&["get", "b", "k"]).expect(1);
}

#[test]
fn a_second_node_on_the_same_data_directory_is_refused() {
    let home = Home::new();
    let dir = home.path().join("shared-data");
    let d = dir.to_str().unwrap();
    let _foo = home.start("foo", &["--data-dir", d]);
    let mut bar = home.spawn_node("bar", &["--name", "bar", "--data-dir", d]);
    assert_eq!(bar.wait_exit().code(), Some(2));
    let log = bar.stderr().join("\n");
    assert!(
        log.contains(&format!("the data directory {d} is in use by another kvnode process")),
        "{log}"
    );
    home.run(&["put", "b", "k", "v", "--via", "foo"]).ok();
}

/// Writes data, stops the node, damages one table file with `damage`, and starts it again;
/// gives back the damaged file too.
fn start_after_damage(damage: impl FnOnce(&std::path::Path)) -> (Home, Node, std::path::PathBuf) {
    let home = Home::new();
    let mut foo = home.start("foo", &[]);
    for k in 0..50 {
        home.run(&["put", "b", &format!("k{k}"), "some value to store"]).ok();
    }
    foo.terminate();
    let tables = home.path().join("foo/fjall/keyspaces");
    let table = walk(&tables)
        .into_iter()
        .find(|p| p.parent().is_some_and(|d| d.ends_with("tables")))
        .expect("a table file");
    damage(&table);
    let mut again = home.spawn_node("foo", &["--name", "foo"]);
    again.wait_exit();
    (home, again, table)
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_corrupt_data_file_is_a_clear_error_not_a_panic() {
    let (_home, mut node, table) = start_after_damage(|table| {
        let len = std::fs::metadata(table).unwrap().len() as usize;
        std::fs::write(table, vec![0xa5; len]).unwrap();
    });
    let log = node.stderr().join("\n");
    assert_eq!(node.wait_exit().code(), Some(6), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains(&format!("the table file {} is corrupt", table.display())),
        "{log}"
    );
    assert!(log.contains("restore the directory from a backup"), "{log}");
}

#[test]
fn a_truncated_data_file_is_a_clear_error_not_a_panic() {
    let (_home, mut node, table) = start_after_damage(|table| {
        let f = std::fs::OpenOptions::new().write(true).open(table).unwrap();
        f.set_len(f.metadata().unwrap().len() / 3).unwrap();
    });
    let log = node.stderr().join("\n");
    assert_eq!(node.wait_exit().code(), Some(6), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains(&format!("the table file {} is corrupt", table.display())),
        "{log}"
    );
}

#[test]
fn a_table_file_cut_to_a_few_bytes_is_named() {
    let (_home, mut node, table) = start_after_damage(|table| {
        let f = std::fs::OpenOptions::new().write(true).open(table).unwrap();
        f.set_len(10).unwrap();
    });
    let log = node.stderr().join("\n");
    assert_eq!(node.wait_exit().code(), Some(6), "{log}");
    assert!(
        log.contains(&format!("the table file {} is corrupt or truncated", table.display())),
        "{log}"
    );
}

#[test]
fn an_unusable_data_directory_is_named_at_start() {
    let home = Home::new();
    let file = home.write_file("not-a-directory", "x");
    let data = file.join("data");
    let mut node = home.spawn_node("foo", &["--name", "foo", "--data-dir", data.to_str().unwrap()]);
    // Bad input, exit 2, naming the directory and what to do (it used to blame the node
    // certificate, exit 6, and advise deleting a file).
    assert_eq!(node.wait_exit().code(), Some(2));
    let log = node.stderr().join("\n");
    assert!(
        log.contains(&format!("cannot use the data directory {}", data.display()))
            && log.contains("give --data-dir (or data_dir) a directory"),
        "{log}"
    );
    assert!(!log.contains("panicked") && !log.contains("delete the file"), "{log}");
    // A directory that exists but where no file can be made (read-only even for root).
    let mut node = home.spawn_node("foo", &["--name", "foo", "--data-dir", "/proc/self"]);
    assert_eq!(node.wait_exit().code(), Some(2));
    let log = node.stderr().join("\n");
    assert!(log.contains("cannot use the data directory /proc/self"), "{log}");
}

/// A small tmpfs mounted for one test (root only), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: mounting a small tmpfs to fill needs root (CI runs as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("skipped: this machine refuses to mount a tmpfs even as root");
            return None;
        }
        Some(Self { dir })
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// `len` hex digits that do not compress, different for each `seed`.
fn noise(seed: &str, len: usize) -> String {
    let mut x = seed.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x >> 60) as u32, 16).unwrap()
        })
        .collect()
}

/// Issue 6, and issue 22 point 12: on a full disk puts fail cleanly (exit 6) while reads go
/// on; once space is back, puts succeed again without a restart; nothing acknowledged is
/// lost, before or after a kill -9, and every value is the one acknowledged.
#[test]
fn a_full_disk_fails_puts_with_exit_6_keeps_reads_and_writes_resume_once_space_is_back() {
    let Some(disk) = SmallDisk::mount("3m") else { return };
    let home = Home::new();
    let data = disk.dir.path().join("foo");
    let d = data.to_str().unwrap();
    let mut foo = home.start("foo", &["--data-dir", d]);
    // Each value names its key, so a value read back under another key would show; the rest
    // does not compress, so that the journal fills the disk as real data would.
    let value = |key: &str| format!("{key}:{}", noise(key, 32 * 1024));
    let mut acked = Vec::new();
    let failure = loop {
        let key = format!("k{:05}", acked.len());
        let out = home.run_with(&["put", "b", &key, &value(&key)], |_| {});
        match out.code {
            Some(0) => acked.push(key),
            _ => break out,
        }
        assert!(acked.len() < 10_000, "the disk never filled up");
    };
    failure.expect(6);
    println!("the full disk said: {}", failure.stderr);
    assert!(
        failure.stderr.contains("storage failed") && failure.stderr.contains(d),
        "{}",
        failure.stderr
    );
    // Reads keep working on the full disk, and a second put fails the same way.
    assert!(!acked.is_empty());
    assert_eq!(home.run(&["get", "b", &acked[0]]).ok(), value(&acked[0]) + "\n");
    home.run(&["put", "b", "still-full", "v"]).expect(6);
    // Room again: writes resume by themselves, without a restart.
    disk.resize("64m");
    wait_for("a put to succeed once the disk has room again", PATIENCE, || {
        let out = home.run_with(&["put", "b", "after", &value("after")], |_| {});
        (out.code == Some(0)).then_some(())
    });
    acked.push("after".into());
    for _ in 0..20 {
        let key = format!("k{:05}", acked.len());
        let out = home.run_with(&["put", "b", &key, &value(&key)], |_| {});
        assert_eq!(out.code, Some(0), "{out:?}\n{}", foo.stderr().join("\n"));
        acked.push(key);
    }
    let check = |when: &str| {
        let keys = home.run(&["keys", "b"]).ok();
        let lost: Vec<_> = acked
            .iter()
            .filter(|k| !keys.lines().any(|l| l == k.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "{when}: {} of {} acknowledged writes lost: {lost:?}",
            lost.len(),
            acked.len()
        );
        for key in &acked {
            assert_eq!(home.run(&["get", "b", key]).ok(), value(key) + "\n", "{when}: {key}");
        }
    };
    check("after the disk had room again");
    // And after a crash, everything acknowledged is there, with its value.
    foo.kill9();
    let _foo = home.start("foo", &["--data-dir", d]);
    check("after a kill -9 and a restart");
}

/// The table `via` routes by, as `route --table` prints it.
fn table_via(home: &Home, via: &str) -> String {
    home.run(&["route", "--table", "--via", via]).stdout()
}

/// A node that stopped holding the newest table (one it made: here set through it while the
/// only other member was down) rejoins a cluster that went on with an older one: it takes
/// its table back once it has joined, and the cluster takes it from it, so that what the
/// node did by that table (its groups follow it) stands. Before, a joining node always took
/// the cluster's table, and a coordinator killed just after finishing a move came back to
/// the move's table with the range's group already gone from its disk: the range stalled
/// for good (found by the fault test, seed 1796449501). A saved table of another cluster
/// (one whose table does not name the node) is passed over.
#[test]
fn a_node_rejoining_with_the_newest_table_gives_it_to_the_cluster() {
    let home = Home::new();
    let dir = |name: &str| home.path().join(format!("{name}-data")).to_str().unwrap().to_string();
    let (foo_dir, bar_dir, baz_dir) = (dir("foo"), dir("bar"), dir("baz"));
    let table = ["--table", "a-z=foo"];
    let mut foo = home.start("foo", &[&table[..], &["--data-dir", &foo_dir]].concat());
    let mut bar = home.start(
        "bar",
        &[&table[..], &["--data-dir", &bar_dir, "--join", "foo"]].concat(),
    );
    wait_for("bar to join foo", PATIENCE, || {
        home.run(&["members", "--via", "foo"])
            .stdout()
            .contains("bar")
            .then_some(())
    });
    bar.kill9();
    wait_for("foo to find bar dead", PATIENCE, || {
        let members = home.run(&["members", "--via", "foo"]).stdout();
        members
            .lines()
            .any(|l| l.starts_with("bar") && l.contains("dead"))
            .then_some(())
    });
    // Set through foo while bar is down: foo alone holds version 2.
    let set = home.run(&["route", "--set", "a-m=foo,n-z=foo", "--via", "foo"]).ok();
    assert!(set.contains("version 2"), "{set}");
    foo.kill9();
    // bar starts the cluster again with the table it held (version 1); foo rejoins it.
    let mut bar = home.start("bar", &[&table[..], &["--data-dir", &bar_dir]].concat());
    assert!(table_via(&home, "bar").contains("version 1"));
    let mut foo = home.start(
        "foo",
        &[&table[..], &["--data-dir", &foo_dir, "--join", "bar"]].concat(),
    );
    foo.wait_log("foo to take its table back", |l| {
        l.contains("rejoined with the newer table")
    });
    wait_for("bar to take foo's table", PATIENCE, || {
        let t = table_via(&home, "bar");
        (t.contains("version 2") && t.contains("a-m=foo") && t.contains("n-z=foo")).then_some(())
    });
    foo.terminate();
    bar.terminate();
    // Another cluster, whose table does not name foo: foo's saved table (newer) stays out.
    let _baz = home.start("baz", &["--table", "a-z=baz", "--data-dir", &baz_dir]);
    let foo = home.start("foo", &["--data-dir", &foo_dir, "--join", "baz"]);
    foo.wait_log("foo to pass its table over", |l| {
        l.contains("the cluster's table does not name this node: passed over")
    });
    let t = table_via(&home, "baz");
    assert!(t.contains("a-z=baz") && t.contains("version 1"), "{t}");
    assert!(table_via(&home, "foo").contains("a-z=baz"));
}

#[test]
fn a_durable_node_restarts_with_the_table_it_held() {
    let home = Home::new();
    let data = home.path().join("foo-data");
    let d = data.to_str().unwrap();
    let start = ["--data-dir", d, "--table", "a-z=foo"];
    let mut foo = home.start("foo", &start);
    let set = home.run(&["route", "--set", "a-m=foo,n-z=bar", "--force"]).ok();
    assert!(set.contains("version 2"), "{set}");
    foo.kill9();
    // Restarted with its old --table (version 1): it routes by the newer one it held, at
    // once, not by the configured one until gossip catches up.
    let mut foo = home.start("foo", &start);
    let table = home.run(&["route", "--table"]).ok();
    assert!(
        table.contains("a-m=foo") && table.contains("n-z=bar") && table.contains("version 2"),
        "{table}"
    );
    assert_eq!(home.run(&["route", "hello"]).ok(), "foo\n");
    foo.wait_log("the restore named", |l| {
        l.contains("routing with the newer table this node held")
    });
    foo.terminate();
    // A node that joins a cluster takes the cluster's table, not its saved one: a data
    // directory reused elsewhere must not take over routing (nothing listens at the seed
    // here; the join is retried in the background).
    let mut foo = home.start("foo", &[&start[..], &["--join", "127.0.0.1:9"]].concat());
    let table = home.run(&["route", "--table"]).ok();
    assert!(table.contains("a-z=foo") && table.contains("version 1"), "{table}");
    foo.terminate();
    // An in-memory node keeps nothing on disk: it begins with its configured table.
    let _foo = home.start("foo", &["--in-memory", "--table", "a-z=foo"]);
    assert!(home.run(&["route", "--table"]).ok().contains("version 1"));
}
