//! Issue 2: one node over authenticated QUIC, driven by the CLI — each line of "what must
//! work" and "bad input", against the real binary.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use common::Home;

#[test]
fn the_briefs_lines_work_as_written() {
    let home = Home::new();
    let _foo = home.start("foo", &[]);
    assert_eq!(home.run(&["put", "shopping", "eggs", "3", "--via", "foo"]).ok(), "");
    assert_eq!(home.run(&["get", "shopping", "eggs", "--via", "foo"]).ok(), "3\n");
}

#[test]
fn put_get_delete_and_keys_with_their_exit_codes() {
    let home = Home::new();
    let _foo = home.start("foo", &[]);
    home.run(&["put", "b", "k1", "v1"]).ok();
    home.run(&["put", "b", "k2", "v2"]).ok();
    assert_eq!(home.run(&["keys", "b"]).ok(), "k1\nk2\n");
    home.run(&["delete", "b", "k1"]).ok();
    let gone = home.run(&["get", "b", "k1"]);
    gone.expect(1);
    assert!(
        gone.stderr.contains(r#"key "k1" not found in bucket "b""#),
        "{}",
        gone.stderr
    );
    home.run(&["delete", "b", "k1"]).expect(1);
    let no_bucket = home.run(&["get", "nothing", "k"]);
    no_bucket.expect(1);
    assert!(
        no_bucket.stderr.contains(r#"bucket "nothing" not found"#),
        "{}",
        no_bucket.stderr
    );
    assert!(no_bucket.stdout.is_empty(), "errors never go to stdout without --json");
    home.run(&["keys", "nothing"]).expect(1);
    // Buckets are isolated from each other.
    home.run(&["put", "other", "k2", "x"]).ok();
    assert_eq!(home.run(&["get", "b", "k2"]).ok(), "v2\n");
}

#[test]
fn json_prints_one_object_per_answer_and_errors_as_objects() {
    let home = Home::new();
    let _foo = home.start("foo", &[]);
    let put = home.run(&["put", "b", "k", "v", "--json"]).ok();
    assert_eq!(put.trim(), r#"{"bucket":"b","key":"k","ok":true}"#);
    let get = home.run(&["get", "b", "k", "--json"]).ok();
    assert_eq!(get.trim(), r#"{"bucket":"b","key":"k","value":"v"}"#);
    let err = home.run(&["get", "b", "missing", "--json"]);
    err.expect(1);
    let obj: serde_json::Value = serde_json::from_slice(&err.stdout).unwrap();
    assert_eq!(obj["code"], 1);
    assert!(obj["error"].as_str().unwrap().contains("not found"));
    assert_eq!(err.stderr, "", "with --json, the error is said once, on stdout");
    let usage = home.run(&["get", "--json"]);
    usage.expect(2);
    let obj: serde_json::Value = serde_json::from_slice(&usage.stdout).unwrap();
    assert_eq!(obj["code"], 2);
    // It says which arguments, or which value, as the message on stderr does.
    let said = obj["error"].as_str().unwrap();
    assert!(said.contains("<BUCKET> <KEY>"), "{said}");
    let usage = home.run(&["get", "b", "k", "--timeout", "soon", "--json"]);
    let obj: serde_json::Value = serde_json::from_slice(&usage.stdout).unwrap();
    let said = obj["error"].as_str().unwrap();
    assert!(said.contains("'soon'") && said.contains("--timeout"), "{said}");
}

#[test]
fn members_lists_the_node_itself_as_soon_as_it_is_up() {
    let home = Home::new();
    let foo = home.start("foo", &[]);
    // No wait: a script that starts a node and lists members must not see an empty cluster.
    let out = home.run(&["members", "--json"]).ok();
    let members: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(members.len(), 1, "{out}");
    assert_eq!(members[0]["name"], "foo");
    assert_eq!(members[0]["addr"], foo.addr().to_string());
    assert_eq!(members[0]["state"], "alive");
}

#[test]
fn a_slow_producer_on_stdin_does_not_use_up_the_timeout() {
    let home = Home::new();
    // In memory: a durable write's sync under a loaded machine must not eat the 1s.
    let _foo = home.start("foo", &["--in-memory"]);
    let mut put = home.command();
    put.args(["put", "slow", "k", "-", "--timeout", "1s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = put.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The producer (a dump, a download) takes longer than --timeout: not a sleep to wait
    // for something, but the slow writer itself.
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(b"hello").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(home.run(&["get", "slow", "k"]).ok(), "hello\n");
}

#[test]
fn get_prints_a_text_value_as_it_is_lines_and_all() {
    let home = Home::new();
    let _foo = home.start("foo", &[]);
    home.run(&["put", "notes", "poem", "roses\nviolets\tblue"]).ok();
    assert_eq!(home.run(&["get", "notes", "poem"]).ok(), "roses\nviolets\tblue\n");
    // A key listing is one key per line: a newline in a key is escaped there.
    home.run(&["put", "notes", "two\nlines", "x"]).ok();
    let keys = home.run(&["keys", "notes"]).ok();
    assert!(keys.lines().any(|l| l == "two\\nlines"), "{keys}");
}

#[test]
fn values_from_stdin_are_bytes_and_raw_prints_them_exactly() {
    let home = Home::new();
    let _foo = home.start("foo", &[]);
    let bytes: Vec<u8> = (0..=255u8).chain([b'\n', 0, b'\n']).collect();
    home.run_stdin(&["put", "files", "blob", "-"], &bytes).ok();
    let raw = home.run(&["get", "files", "blob", "--raw"]);
    raw.expect(0);
    assert_eq!(raw.stdout, bytes);
    // Without --raw, bytes that would upset a terminal are escaped and a newline ends it.
    let shown = home.run(&["get", "files", "blob"]).ok();
    assert!(shown.ends_with('\n') && shown.contains("\\x00") && !shown.contains('\u{1b}'));
    // A value that starts with '-' is a value, not a flag.
    home.run(&["put", "b", "k", "-5"]).ok();
    assert_eq!(home.run(&["get", "b", "k"]).ok(), "-5\n");
}

#[test]
fn via_accepts_a_name_a_full_name_and_an_address() {
    let home = Home::new();
    let foo = home.start("foo", &[]);
    home.run(&["put", "b", "k", "v", "--via", "foo"]).ok();
    assert_eq!(home.run(&["get", "b", "k", "--via", &foo.full()]).ok(), "v\n");
    assert_eq!(
        home.run(&["get", "b", "k", "--via", &foo.addr().to_string()]).ok(),
        "v\n"
    );
    let via_env = home.run_with(&["get", "b", "k"], |c| {
        c.env("KVNODE_VIA", "foo");
    });
    assert_eq!(via_env.ok(), "v\n");
    // Empty is unset (the only local node), as `KVNODE_VIA= kvnode ...` means; a bad one is
    // named as the variable, and --via still beats it.
    let with_via = |value: &'static str, args: &[&str]| {
        home.run_with(args, |c| {
            c.env("KVNODE_VIA", value);
        })
    };
    assert_eq!(with_via("", &["get", "b", "k"]).ok(), "v\n");
    let bad = with_via("no such!", &["get", "b", "k"]);
    bad.expect(2);
    assert!(bad.stderr.contains("invalid KVNODE_VIA"), "{}", bad.stderr);
    assert_eq!(with_via("nobody", &["get", "b", "k", "--via", "foo"]).ok(), "v\n");
    // Read only where it is used: not by a command given --via, nor by ping.
    assert_eq!(with_via("no such!", &["get", "b", "k", "--via", "foo"]).ok(), "v\n");
    assert_eq!(with_via("no such!", &["ping", "foo"]).ok(), "pong\n");
    // A full name that does not match the node at that address is refused.
    let wrong = home.run(&["get", "b", "k", "--via", &format!("bar@{}", foo.addr())]);
    wrong.expect(3);
    assert!(wrong.stderr.contains("is named foo, not bar"), "{}", wrong.stderr);
}

#[test]
fn an_unknown_via_name_lists_the_known_nodes() {
    let home = Home::new();
    let _foo = home.start("foo", &[]);
    let _bar = home.start("bar", &[]);
    let run = home.run(&["get", "b", "k", "--via", "fo"]);
    run.expect(3);
    assert!(
        run.stderr.contains(
            r#"no node named "fo" in KVNODE_HOME/nodes (known: bar, foo); give --via NAME, NAME@HOST:PORT or HOST:PORT"#
        ),
        "{}",
        run.stderr
    );
    // Without --via and with two local nodes, the client says which exist.
    let which = home.run(&["get", "b", "k"]);
    which.expect(2);
    assert!(
        which.stderr.contains("several nodes") && which.stderr.contains("bar, foo"),
        "{}",
        which.stderr
    );
}

#[test]
fn no_node_running_is_exit_3_with_how_to_start_one() {
    let home = Home::new();
    let run = home.run(&["get", "b", "k"]);
    run.expect(3);
    assert!(run.stderr.contains("kvnode start --name NAME"), "{}", run.stderr);
}

#[test]
fn a_node_that_is_not_running_is_exit_3_within_the_timeout() {
    let home = Home::new();
    let foo = home.start("foo", &[]);
    let addr = foo.addr();
    drop(foo); // killed: nothing listens on its port any more
    let run = home.run(&["get", "b", "k", "--via", &addr.to_string(), "--timeout", "1s"]);
    run.expect(3);
    assert!(run.stderr.contains(&addr.to_string()), "{}", run.stderr);
    // It names the --timeout it was given, not what was left of it when it connected.
    assert!(
        run.stderr.contains("no answer from node") && run.stderr.contains("within 1s;"),
        "{}",
        run.stderr
    );
    // Bounded by the deadline (with room for a slow machine), not by some internal wait.
    assert!(run.elapsed < Duration::from_secs(10), "took {:?}", run.elapsed);
    // The directory entry of the killed node is ignored.
    let by_name = home.run(&["get", "b", "k", "--via", "foo"]);
    by_name.expect(3);
    assert!(by_name.stderr.contains("no node named \"foo\""), "{}", by_name.stderr);
}

#[test]
fn the_node_creates_its_secret_with_mode_0600_and_clients_use_it() {
    let home = Home::new();
    let _foo = home.start("foo", &[]);
    let meta = std::fs::metadata(home.secret_path()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    home.run(&["put", "b", "k", "v"]).ok();
}

#[test]
fn secret_file_and_environment_secrets_are_honoured() {
    let home = Home::new();
    let file = home.write_file("cookie", "sesame\n");
    let _foo = home.start("foo", &["--secret-file", file.to_str().unwrap()]);
    // The same secret by file or by environment works; the default home secret does not.
    home.run(&["put", "b", "k", "v", "--secret-file", file.to_str().unwrap()])
        .ok();
    let env = home.run_with(&["get", "b", "k"], |c| {
        c.env("KVNODE_SECRET", "sesame");
    });
    assert_eq!(env.ok(), "v\n");
    // The flag beats the environment.
    let both = home.run_with(&["get", "b", "k", "--secret-file", file.to_str().unwrap()], |c| {
        c.env("KVNODE_SECRET", "wrong");
    });
    assert_eq!(both.ok(), "v\n");
}

#[test]
fn a_wrong_secret_is_exit_4_and_the_node_warns_once_and_keeps_serving() {
    let home = Home::new();
    let foo = home.start("foo", &[]);
    let run = home.run_with(&["get", "b", "k", "--via", "foo"], |c| {
        c.env("KVNODE_SECRET", "not the secret");
    });
    run.expect(4);
    let expected = format!(
        "error: authentication refused by node foo ({}): the secrets differ — check KVNODE_SECRET or --secret-file",
        foo.addr()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    let warning = foo.wait_log("the refusal", |l| l.contains("WARN") && l.contains("secret differs"));
    assert!(warning.contains("127.0.0.1:"), "names the peer's address: {warning}");
    home.run(&["put", "b", "k", "v"]).ok();
    let warnings = foo.stderr().iter().filter(|l| l.contains("secret differs")).count();
    assert_eq!(warnings, 1);
}

#[test]
fn a_group_readable_secret_file_is_refused_by_clients_and_nodes() {
    let home = Home::new();
    let file = home.write_file("cookie", "sesame");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let client = home.run(&[
        "get",
        "b",
        "k",
        "--via",
        "127.0.0.1:1",
        "--secret-file",
        file.to_str().unwrap(),
    ]);
    client.expect(2);
    assert!(
        client.stderr.contains("readable by group or others") && client.stderr.contains("chmod 600"),
        "{}",
        client.stderr
    );
    let mut node = home.spawn_node("foo", &["--name", "foo", "--secret-file", file.to_str().unwrap()]);
    let status = node.wait_exit();
    assert_eq!(status.code(), Some(2));
    assert!(node.stderr().join("\n").contains("chmod 600"), "{:?}", node.stderr());
}

#[test]
fn sigterm_and_sigint_stop_the_node_cleanly_and_unlist_it() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let home = Home::new();
        let mut foo = home.start("foo", &[]);
        home.run(&["put", "b", "k", "v"]).ok();
        foo.signal(sig);
        let status = foo.wait_exit();
        assert_eq!(status.code(), Some(0), "signal {sig}: {:?}", foo.stderr());
        assert!(!home.path().join("nodes/foo").exists(), "entry removed on clean exit");
        assert!(foo.stderr().iter().any(|l| l.contains("node stopped")));
    }
}

#[test]
fn two_nodes_with_the_same_name_in_one_home_are_refused() {
    let home = Home::new();
    let foo = home.start("foo", &[]);
    let mut second = home.spawn_node("foo", &["--name", "foo"]);
    let status = second.wait_exit();
    assert_eq!(status.code(), Some(2));
    let log = second.stderr().join("\n");
    assert!(
        log.contains("already running") && log.contains(&foo.addr().to_string()),
        "{log}"
    );
    home.run(&["put", "b", "k", "v", "--via", "foo"]).ok();
}

#[test]
fn a_config_file_with_a_typo_names_the_file_line_and_key() {
    let home = Home::new();
    let config = home.write_file(
        "foo.toml",
        "name = \"foo\"\nlisten = \"127.0.0.1:0\"\nin_memroy = true\n",
    );
    let mut node = home.spawn_node("foo", &["--config", config.to_str().unwrap()]);
    assert_eq!(node.wait_exit().code(), Some(2));
    let log = node.stderr().join("\n");
    assert!(log.contains(config.to_str().unwrap()), "{log}");
    assert!(log.contains("line 3") && log.contains("in_memroy"), "{log}");
}

#[test]
fn a_bad_tokio_worker_threads_is_exit_2_naming_it_not_a_panic() {
    let home = Home::new();
    for args in [&["start", "--name", "foo"][..], &["bench", "--via", "127.0.0.1:9"]] {
        let run = home.run_with(args, |c| {
            c.env("TOKIO_WORKER_THREADS", "two");
        });
        run.expect(2);
        assert!(
            run.stderr
                .contains("invalid TOKIO_WORKER_THREADS: \"two\" is not a number of threads"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_config_file_starts_a_node_and_flags_override_it() {
    let home = Home::new();
    let config = home.write_file(
        "foo.toml",
        "name = \"foo\"\nauto_reply = \"hi\"\nrouting_table = [\"a-z=foo\"]\n",
    );
    let _foo = home.start_raw(
        "bar",
        &[
            "--config",
            config.to_str().unwrap(),
            "--name",
            "bar",
            "--table",
            "a-z=bar",
        ],
    );
    assert_eq!(home.run(&["route", "hello"]).ok(), "bar\n");
}

#[test]
fn empty_and_oversized_buckets_keys_and_values_are_exit_2() {
    let home = Home::new();
    let _foo = home.start("foo", &[]);
    let long = "k".repeat(1025);
    for (args, says) in [
        (vec!["put", "", "k", "v"], "bucket name is empty"),
        (vec!["put", "b", "", "v"], "key is empty"),
        (vec!["get", &long, "k"], "bucket name is 1025 bytes; the limit is 1024"),
        (vec!["get", "b", &long], "key is 1025 bytes"),
    ] {
        let run = home.run(&args);
        run.expect(2);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    let big = vec![b'x'; 8 * 1024 * 1024 + 1];
    let run = home.run_stdin(&["put", "b", "k", "-"], &big);
    run.expect(2);
    assert!(run.stderr.contains("limit"), "{}", run.stderr);
    // The largest allowed value goes through.
    home.run_stdin(&["put", "b", "k", "-"], &big[1..]).ok();
    assert_eq!(
        home.run(&["get", "b", "k", "--raw"]).expect(0).stdout.len(),
        8 * 1024 * 1024
    );
}

#[test]
fn many_clients_at_once_are_all_served() {
    let home = Home::new();
    let _foo = home.start("foo", &[]);
    let runs: Vec<_> = (0..16)
        .map(|i| {
            let mut cmd = home.command();
            cmd.args(["put", "b", &format!("k{i}"), &format!("v{i}")]);
            cmd.spawn().unwrap()
        })
        .collect();
    for mut r in runs {
        assert!(r.wait().unwrap().success());
    }
    let keys = home.run(&["keys", "b"]).ok();
    assert_eq!(keys.lines().count(), 16);
}

#[test]
fn the_certificate_is_kept_in_the_data_directory_across_restarts() {
    let home = Home::new();
    let mut foo = home.start("foo", &[]);
    let cert = home.path().join("foo/tls/cert.der");
    let key = home.path().join("foo/tls/key.der");
    let first = std::fs::read(&cert).unwrap();
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    foo.terminate();
    let _again = home.start("foo", &[]);
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        first,
        "the same certificate after a restart"
    );
}

#[test]
fn random_datagrams_at_the_port_do_not_disturb_the_node() {
    let home = Home::new();
    let foo = home.start("foo", &[]);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..2000 {
        let len = 1 + (i * 37) % 1400;
        let datagram: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        socket.send_to(&datagram, foo.addr()).unwrap();
    }
    home.run(&["put", "b", "k", "v"]).ok();
    assert_eq!(home.run(&["get", "b", "k"]).ok(), "v\n");
}

#[test]
fn bench_gets_read_keys_it_put_however_many_the_keyspace_holds() {
    let home = Home::new();
    let _foo = home.start("foo", &["--in-memory"]);
    // Beyond 100,000 keys, the gets once read keys nobody had put, and the run failed.
    let n = "100001";
    let args = ["bench", "-t", "get", "-n", n, "--keyspace", n, "-c", "20", "--json"];
    let out = home.run(&args).ok();
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["test"], "get", "{out}");
    assert_eq!(home.run(&["keys", "bench"]).ok().lines().count(), 100_001);
}

#[test]
fn keys_lists_a_bucket_larger_than_one_answer_in_pieces() {
    let home = Home::new();
    let _foo = home.start("foo", &["--in-memory"]);
    // 220,000 keys of 16 bytes: more than one answer's 4 MiB of keys (about 210,000 of
    // them), which one answer carried before, until it refused at 16 MiB.
    let n = "220000";
    let fill = [
        "bench",
        "-t",
        "put",
        "-n",
        n,
        "--keyspace",
        n,
        "-c",
        "8",
        "-P",
        "32",
        "-d",
        "0",
        "--json",
    ];
    home.run(&fill).ok();
    // A long timeout: a debug build on a loaded 2-core machine lists 220,000 keys slowly.
    let listed = home.run(&["keys", "bench", "--timeout", "60s"]).ok();
    let keys: Vec<&str> = listed.lines().collect();
    assert_eq!(keys.len(), 220_000);
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
    assert_eq!((keys[0], keys[219_999]), ("key:000000000000", "key:000000219999"));
}

#[test]
fn a_rust_log_that_does_not_parse_is_named_and_the_default_level_kept() {
    let home = Home::new();
    // A node that stops at once, after logging a little: its data directory is a file.
    let file = home.write_file("not-a-dir", "");
    let out = home.run_with(&["start", "--name", "lj", "--data-dir", file.to_str().unwrap()], |c| {
        c.env("RUST_LOG", "bogus=[");
    });
    out.expect(2);
    assert!(
        out.stderr.contains("RUST_LOG=\"bogus=[\" is not a filter"),
        "{}",
        out.stderr
    );
    // Not errors only (what was left of the filter): the secret's creation is logged.
    assert!(out.stderr.contains("created a new shared secret"), "{}", out.stderr);
}

#[test]
fn help_for_every_subcommand_shows_an_example() {
    let home = Home::new();
    for sub in [
        "start", "put", "get", "delete", "route", "chat", "members", "ping", "keys", "bench",
    ] {
        let help = home.run(&[sub, "--help"]).ok();
        assert!(help.contains("kvnode "), "{sub}: {help}");
    }
}

#[test]
fn a_broken_pipe_on_stdout_is_not_an_error() {
    let home = Home::new();
    let _foo = home.start("foo", &[]);
    for i in 0..50 {
        home.run(&["put", "b", &format!("k{i:02}"), "v"]).ok();
    }
    let mut child = home
        .command()
        .args(["keys", "b"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away at once, like `| head -0`
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{out:?}");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn one_shot_clients_close_their_connection_so_the_limit_is_never_reached() {
    let home = Home::new();
    let config = home.write_file("foo.toml", "name = \"foo\"\n[limits]\nmax_connections = 2\n");
    let _foo = home.start_raw("foo", &["--config", config.to_str().unwrap()]);
    // Were a closed client's connection kept until its idle timeout, the third call would fail.
    for i in 0..12 {
        home.run(&["put", "b", &format!("k{i}"), "v"]).ok();
    }
}
