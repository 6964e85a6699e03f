//! Issue 27, part 3, with real processes: rotating the cluster's secret with `kvnode secret`
//! while clients use it, the keyring kept across restarts, `kvnode keygen`, and bad input.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{Home, Node, PATIENCE, wait_for};

const TABLE: &str = "a-h=foo,i-p=bar,q-z=baz";

fn alive(home: &Home, via: &str) -> usize {
    let out = home.run(&["members", "--via", via, "--json"]);
    out.stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["state"] == "alive")
        .count()
}

/// foo, bar and baz, each owning a third of the buckets, all seeing each other alive.
fn three_nodes(home: &Home) -> Vec<Node> {
    let foo = home.start("foo", &["--in-memory", "--table", TABLE]);
    let bar = home.start("bar", &["--in-memory", "--table", TABLE, "--join", "foo"]);
    let baz = home.start("baz", &["--in-memory", "--table", TABLE, "--join", "foo"]);
    for via in ["foo", "bar", "baz"] {
        wait_for(&format!("{via} to see three members alive"), PATIENCE, || {
            (alive(home, via) == 3).then_some(())
        });
    }
    vec![foo, bar, baz]
}

fn keygen(home: &Home, name: &str) -> PathBuf {
    let path = home.path().join(name);
    home.run(&["keygen", "--output", path.to_str().unwrap()]).ok();
    path
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A client loop until `stop`: put then get through each node in turn, with buckets each
/// node owns, so requests are forwarded too. Counts requests and failures (with the reason).
fn load(
    home: Arc<Home>,
    secret: PathBuf,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let via = ["foo", "bar", "baz"][i % 3];
            let bucket = ["apples", "lemons", "sugar"][(i / 3) % 3];
            let value = format!("v{i}");
            let key = format!("k{}", i % 7);
            let put = home.run(&["put", bucket, &key, &value, "--via", via, "--secret-file", s(&secret)]);
            let get = home.run(&["get", bucket, &key, "--via", via, "--secret-file", s(&secret)]);
            for (what, run) in [("put", &put), ("get", &get)] {
                if run.code != Some(0) {
                    failures.push(format!("{what} via {via}: {:?} {}", run.code, run.stderr));
                }
            }
            done.fetch_add(2, Ordering::Relaxed);
            i += 1;
        }
        failures
    })
}

#[test]
fn rotating_the_secret_of_three_nodes_under_load_fails_no_request() {
    let home = Arc::new(Home::new());
    let _nodes = three_nodes(&home);
    let old = home.secret_path();
    let new = keygen(&home, "new.secret");
    let done = Arc::new(AtomicUsize::new(0));
    let stop_old = Arc::new(AtomicBool::new(false));
    let stop_new = Arc::new(AtomicBool::new(false));
    let wait_some = |n: usize| {
        let from = done.load(Ordering::Relaxed);
        wait_for("some client requests", PATIENCE, || {
            (done.load(Ordering::Relaxed) >= from + n).then_some(())
        });
    };
    let old_clients = load(Arc::clone(&home), old.clone(), Arc::clone(&stop_old), Arc::clone(&done));
    wait_some(40);

    let out = home.run(&["secret", "install", s(&new), "--via", "bar"]).ok();
    assert_eq!(out.matches("ok: installed").count(), 3, "{out}");
    let new_clients = load(Arc::clone(&home), new.clone(), Arc::clone(&stop_new), Arc::clone(&done));
    wait_some(40);
    let list = home.run(&["secret", "list", "--via", "baz"]).ok();
    assert!(list.lines().filter(|l| l.contains("3/3")).count() == 2, "{list}");

    let out = home.run(&["secret", "use", s(&new), "--via", "baz"]).ok();
    assert_eq!(out.matches("ok: now uses").count(), 3, "{out}");
    wait_some(40);
    // Clients move to the new secret before the old one goes.
    stop_old.store(true, Ordering::Relaxed);
    let old_failures = old_clients.join().unwrap();

    // The secret in use cannot be removed, here or anywhere.
    let refused = home.run(&["secret", "remove", s(&new), "--via", "foo"]);
    refused.expect(2);
    assert!(
        refused.stderr.contains("is in use on bar, baz, foo"),
        "{}",
        refused.stderr
    );

    let out = home.run(&["secret", "remove", s(&old), "--via", "foo"]).ok();
    assert_eq!(out.matches("ok: removed").count(), 3, "{out}");
    wait_some(40);
    stop_new.store(true, Ordering::Relaxed);
    let new_failures = new_clients.join().unwrap();
    assert!(
        old_failures.is_empty(),
        "clients of the old secret failed: {old_failures:#?}"
    );
    assert!(
        new_failures.is_empty(),
        "clients of the new secret failed: {new_failures:#?}"
    );
    eprintln!(
        "{} client requests during the rotation, none failed",
        done.load(Ordering::Relaxed)
    );

    let list = home
        .run(&["secret", "list", "--via", "foo", "--json", "--secret-file", s(&new)])
        .ok();
    let secrets: Vec<serde_json::Value> = list.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(secrets.len(), 1, "{list}");
    assert_eq!(
        (secrets[0]["members"].as_u64(), secrets[0]["of"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(!list.contains(&std::fs::read_to_string(&new).unwrap().trim().to_string()));

    // A client holding only the removed secret is refused, with exit 4 and the reason.
    for via in ["foo", "bar", "baz"] {
        let run = home.run(&["get", "apples", "k1", "--via", via, "--secret-file", s(&old)]);
        run.expect(4);
        assert!(run.stderr.contains("authentication refused"), "{}", run.stderr);
    }
}

#[test]
fn the_keyring_survives_a_restart_and_beats_an_old_secret_file() {
    let home = Home::new();
    let old = home.write_file("old.secret", "the old secret of this cluster");
    let new = keygen(&home, "new.secret");
    let mut foo = home.start("foo", &["--secret-file", s(&old)]);
    // Each step with the client secret that works then: the old one until the new one is in.
    for (verb, file, client) in [("install", &new, &old), ("use", &new, &new), ("remove", &old, &new)] {
        home.run(&["secret", verb, s(file), "--via", "foo", "--secret-file", s(client)])
            .ok();
    }
    let keyring = home.path().join("foo").join("keyring");
    assert_eq!(std::fs::metadata(&keyring).unwrap().permissions().mode() & 0o777, 0o600);
    foo.terminate();

    let foo = home.start("foo", &["--secret-file", s(&old)]);
    foo.wait_log("the keyring being used", |l| {
        l.contains("using the keyring") && l.contains("not in the keyring")
    });
    home.run(&["put", "b", "k", "v", "--via", "foo", "--secret-file", s(&new)])
        .ok();
    home.run(&["put", "b", "k", "v", "--via", "foo", "--secret-file", s(&old)])
        .expect(4);
}

#[test]
fn keygen_prints_a_secret_that_nodes_and_clients_accept() {
    let home = Home::new();
    let printed = home.run(&["keygen"]).ok();
    let hex = printed.trim_end();
    assert_eq!((hex.len(), printed.len()), (64, 65), "{printed:?}");
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{printed:?}");
    assert_ne!(home.run(&["keygen"]).ok(), printed, "two keys alike");
    // `kvnode keygen > file`, with the file private as a secret file must be.
    let file = home.write_file("k", &printed);
    let _foo = home.start("foo", &["--in-memory", "--secret-file", s(&file)]);
    home.run(&["put", "b", "k", "v", "--via", "foo", "--secret-file", s(&file)])
        .ok();
    // --output never overwrites a file.
    let run = home.run(&["keygen", "--output", s(&file)]);
    run.expect(2);
    assert!(run.stderr.contains("never overwritten"), "{}", run.stderr);
}

#[test]
fn a_missing_empty_short_or_open_secret_file_is_refused_with_exit_2() {
    let home = Home::new();
    let missing = home.path().join("nope");
    let empty = home.write_file("empty", "");
    let short = home.write_file("short", "cookie\n");
    let open = home.write_file("open", "a secret long enough for a cluster");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cases = [
        ("install", &missing, "does not exist"),
        ("use", &empty, "is empty"),
        ("install", &short, "is 6 bytes; a new secret must be at least 16"),
        ("remove", &open, "chmod 600"),
    ];
    for (verb, file, said) in cases {
        let run = home.run(&["secret", verb, s(file), "--via", "127.0.0.1:9"]);
        run.expect(2);
        assert!(run.stderr.contains(said), "{verb} {}: {}", file.display(), run.stderr);
    }
}

#[test]
fn a_corrupt_keyring_is_a_start_error_naming_it() {
    let home = Home::new();
    std::fs::create_dir_all(home.path().join("foo")).unwrap();
    let keyring = home.write_file("foo/keyring", "use not-hex\n");
    let mut foo = home.spawn_node("foo", &["--name", "foo", "--in-memory"]);
    assert_eq!(foo.wait_exit().code(), Some(2));
    let log = foo.stderr().join("\n");
    assert!(
        log.contains(&format!("the keyring {} is corrupt", keyring.display())),
        "{log}"
    );
}

#[test]
fn a_member_down_during_a_change_is_named_and_the_command_fails() {
    let home = Home::new();
    let _foo = home.start("foo", &["--in-memory"]);
    let mut bar = home.start("bar", &["--in-memory", "--join", "foo"]);
    wait_for("foo to see bar", PATIENCE, || (alive(&home, "foo") == 2).then_some(()));
    bar.kill9();
    let new = keygen(&home, "new.secret");
    let run = home.run(&["secret", "install", s(&new), "--via", "foo", "--timeout", "2s"]);
    run.expect(3);
    let out = run.stdout();
    assert!(
        out.lines()
            .any(|l| l.starts_with("foo ") && l.contains("ok: installed")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("bar ") && l.contains("FAILED")),
        "{out}"
    );
    assert!(
        run.stderr.contains("1 of 2 members did not make the change"),
        "{}",
        run.stderr
    );
}

/// The RESP listener's AUTH takes any installed secret, as the QUIC handshake does.
#[test]
fn a_redis_client_may_auth_with_any_installed_secret() {
    use std::io::{BufRead, BufReader, Write};
    let home = Home::new();
    let foo = home.start("foo", &["--in-memory", "--resp-listen", "127.0.0.1:0"]);
    let line = foo.wait_log("the RESP listener", |l| l.contains("serving RESP"));
    let port: u16 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line}"));
    let auth = |password: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        s.write_all(format!("AUTH {password}\r\n").as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        answer.trim_end().to_string()
    };
    let old = std::fs::read_to_string(home.secret_path()).unwrap().trim().to_string();
    let new = keygen(&home, "new.secret");
    let new_text = std::fs::read_to_string(&new).unwrap().trim().to_string();
    assert!(auth(&new_text).starts_with("-WRONGPASS"));
    home.run(&["secret", "install", s(&new), "--via", "foo"]).ok();
    assert_eq!((auth(&old), auth(&new_text)), ("+OK".to_string(), "+OK".to_string()));
    home.run(&["secret", "use", s(&new), "--via", "foo"]).ok();
    let old_file = home.secret_path();
    home.run(&[
        "secret",
        "remove",
        s(&old_file),
        "--via",
        "foo",
        "--secret-file",
        s(&new),
    ])
    .ok();
    assert!(auth(&old).starts_with("-WRONGPASS"));
    assert_eq!(auth(&new_text), "+OK");
}
