//! Issue 5: chat between nodes (the Elixir School lesson), and supervised requests and parts.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use common::{Home, Node, PATIENCE, wait_for};
use kvnode::client::{Client, Target};
use kvnode::secret::SecretSource;
use kvnode::wire::Request;
use tokio::time::Instant;

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
        .display()
        .to_string()
}

/// kate, alex and moebi, started from the example configs as in the lesson.
fn lesson(home: &Home) -> (Node, Node, Node) {
    let kate = home.start_raw("kate", &["--config", &example("kate.toml")]);
    let alex = home.start_raw("alex", &["--config", &example("alex.toml")]);
    let moebi = home.start_raw("moebi", &["--config", &example("moebi.toml")]);
    (kate, alex, moebi)
}

#[test]
fn chat_through_a_node_reaches_an_addressee_it_knows_only_by_the_address_given() {
    // lone runs in another home and joined nobody: alex cannot find it by name.
    let (home, elsewhere, s) = common::two_homes_one_secret();
    let s = s.as_str();
    let _alex = home.start("alex", &["--in-memory", "--secret-file", s]);
    let lone = elsewhere.start("lone", &["--in-memory", "--secret-file", s]);
    let to = lone.full();
    let out = home.run(&["chat", &to, "hi", "--via", "alex", "--secret-file", s]);
    assert_eq!(out.ok(), "");
    lone.wait_stdout("alex's line", |l| l == "alex: hi");
    // By name alone, alex still cannot: the address was the hint.
    let out = home.run(&["chat", "lone", "hi", "--via", "alex", "--secret-file", s]);
    out.expect(3);
}

#[test]
fn chat_from_stdin_skips_blank_lines_and_names_the_line_it_cannot_send() {
    let home = Home::new();
    let kate = home.start("kate", &["--in-memory"]);
    let big = "x".repeat(70_000);
    let input = format!("one\n\n   \ntwo\n{big}\nthree\n");
    let out = home.run_stdin(&["chat", "kate", "--as", "zoe"], input.as_bytes());
    out.expect(2);
    assert!(
        out.stderr.contains("line 5 of stdin is 70000 bytes") && out.stderr.contains("nothing from it on was sent"),
        "{}",
        out.stderr
    );
    kate.wait_stdout("two", |l| l == "zoe: two");
    let printed = kate.stdout();
    assert_eq!(printed, ["zoe: one", "zoe: two"], "blank lines are no messages");
    let out = home.run_stdin(&["chat", "kate"], b"fine\n\xff\n");
    out.expect(2);
    assert!(
        out.stderr.contains("line 2 of stdin is not UTF-8 text"),
        "{}",
        out.stderr
    );
    // An empty message given as an argument is refused before anything is asked.
    let out = home.run(&["chat", "nobody", " "]);
    out.expect(2);
    assert!(out.stderr.contains("the message is blank"), "{}", out.stderr);
}

#[test]
fn a_sender_name_chat_cannot_send_is_a_usage_error_before_any_node_is_asked() {
    let home = Home::new();
    // No node: the name is refused before anything is looked up (it was "unreachable:
    // malformed handshake", exit 3, from the node).
    let out = home.run(&["chat", "kate", "hi", "--as", ""]);
    out.expect(2);
    assert!(out.stderr.contains("the sender's name is empty"), "{}", out.stderr);
    let long = "z".repeat(129);
    let out = home.run(&["chat", "kate", "hi", "--as", &long]);
    out.expect(2);
    assert!(out.stderr.contains("129 bytes"), "{}", out.stderr);
}

#[test]
fn kate_prints_a_message_sent_to_her_and_no_one_else_does() {
    let home = Home::new();
    let (kate, alex, moebi) = lesson(&home);
    let out = home.run(&["chat", "kate", "hi", "--via", "alex"]);
    assert_eq!(out.ok(), "", "kate has no auto-reply: nothing to print");
    assert_eq!(kate.wait_stdout("the message", |l| l.contains("hi")), "alex: hi");
    // A direct message, from a client named after its host.
    home.run(&["chat", "kate", "hello there"]).ok();
    let line = kate.wait_stdout("the direct message", |l| l.contains("hello there"));
    assert!(line.starts_with("client@") && line.ends_with(": hello there"), "{line}");
    home.run(&["chat", "kate", "as someone", "--as", "zoe"]).ok();
    kate.wait_stdout("the --as message", |l| l == "zoe: as someone");
    assert!(alex.stdout().is_empty(), "alex printed {:?}", alex.stdout());
    assert!(moebi.stdout().is_empty(), "moebi printed {:?}", moebi.stdout());
}

#[test]
fn moebis_reply_reaches_both_the_client_and_alex() {
    let home = Home::new();
    let (kate, alex, moebi) = lesson(&home);
    let out = home.run(&["chat", "moebi", "hi", "--via", "alex"]);
    assert_eq!(out.ok(), "moebi: chicken?\n");
    assert_eq!(moebi.wait_stdout("the message", |l| l.contains("hi")), "alex: hi");
    assert_eq!(
        alex.wait_stdout("the reply", |l| l.contains("chicken")),
        "moebi: chicken?"
    );
    assert!(kate.stdout().is_empty());
    let json = home.run(&["chat", "moebi", "again", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["reply"]["from"], "moebi");
    assert_eq!(v["reply"]["text"], "chicken?");
}

#[test]
fn a_chat_whose_node_stops_says_so_in_words() {
    let home = Home::new();
    let mut k2 = home.start("k2", &["--in-memory"]);
    let mut chat = home.command();
    chat.args(["chat", "k2", "--as", "pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut chat = chat.spawn().unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    stdin.write_all(b"one\n").unwrap();
    k2.wait_stdout("the first line", |l| l == "pipe: one");
    k2.terminate();
    stdin.write_all(b"two\n").unwrap();
    drop(stdin);
    let out = chat.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    // Not quinn's "closed by peer: 0" (which words depends on whether the node let go of
    // the connection before closing its endpoint).
    assert!(
        stderr.contains("node k2")
            && (stderr.contains("the node closed the connection (it stopped or restarted)")
                || stderr.contains("the node is shutting down")),
        "{stderr}"
    );
}

#[test]
fn without_a_message_each_stdin_line_is_one_message() {
    let home = Home::new();
    let (kate, _alex, moebi) = lesson(&home);
    home.run_stdin(&["chat", "kate", "--as", "pipe"], b"one\ntwo\nthree\n")
        .ok();
    wait_for("three lines on kate's stdout", PATIENCE, || {
        (kate.stdout().len() >= 3).then_some(())
    });
    assert_eq!(kate.stdout(), vec!["pipe: one", "pipe: two", "pipe: three"]);
    // Replies are printed as they arrive, one per line sent.
    let out = home.run_stdin(&["chat", "moebi"], b"a\nb\n").ok();
    assert_eq!(out, "moebi: chicken?\nmoebi: chicken?\n");
    // moebi printed both before answering, but the test reads its stdout on another thread.
    wait_for("two lines on moebi's stdout", PATIENCE, || {
        (moebi.stdout().len() >= 2).then_some(())
    });
    let lines = moebi.stdout();
    assert!(
        lines.len() == 2 && lines[0].ends_with(": a") && lines[1].ends_with(": b"),
        "{lines:?}"
    );
}

#[test]
fn control_characters_cannot_reach_a_nodes_terminal() {
    let home = Home::new();
    let (kate, _alex, _moebi) = lesson(&home);
    home.run(&["chat", "kate", "\u{1b}[2Jgotcha\u{7}", "--as", "evil\nname"])
        .ok();
    let line = kate.wait_stdout("the escaped line", |l| l.contains("gotcha"));
    assert_eq!(line, "evil\\nname: \\u{1b}[2Jgotcha\\u{7}");
}

#[test]
fn a_message_to_a_dead_node_exits_3_within_the_timeout() {
    let home = Home::new();
    let (mut kate, _alex, _moebi) = lesson(&home);
    kate.kill9();
    let via = home.run(&["chat", "kate", "hi", "--via", "alex", "--timeout", "2s"]);
    via.expect(3);
    assert!(via.stderr.contains("node kate"), "{}", via.stderr);
    assert!(via.elapsed < Duration::from_secs(12), "{:?}", via.elapsed);
    let direct = home.run(&["chat", "kate", "hi", "--timeout", "2s"]);
    direct.expect(3);
}

fn connect(home: &Home, node: &Node) -> (tokio::runtime::Runtime, Client) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secret = SecretSource::Home(home.secret_path()).load().unwrap();
    let target = Target {
        addr: node.addr(),
        name: None,
    };
    let client = rt
        .block_on(Client::connect_with(
            &secret,
            "test",
            &target,
            Instant::now() + Duration::from_secs(60),
        ))
        .unwrap();
    (rt, client)
}

#[test]
fn a_panicking_request_is_exit_6_and_the_next_request_succeeds() {
    let home = Home::new();
    let foo = home.start("foo", &[]);
    home.run(&["put", "b", "k", "before"]).ok();
    let (rt, client) = connect(&home, &foo);
    let err = rt.block_on(client.call(Request::Panic)).unwrap_err();
    assert_eq!(err.exit_code(), 6, "{err}");
    assert!(err.to_string().contains("internal error on node foo"), "{err}");
    // The same connection, and new ones, keep working; no data was lost.
    assert!(rt.block_on(client.call(Request::Ping)).is_ok());
    assert_eq!(home.run(&["get", "b", "k"]).ok(), "before\n");
    home.run(&["put", "b", "k2", "after"]).ok();
    foo.wait_log("the logged panic", |l| {
        l.contains("request task panicked") && l.contains("request=\"panic\"")
    });
}

#[test]
fn a_crashed_part_is_restarted_and_the_node_still_serves() {
    let home = Home::new();
    let foo = home.start("foo", &[]);
    home.run(&["put", "b", "k", "v"]).ok();
    let (rt, client) = connect(&home, &foo);
    rt.block_on(client.call(Request::CrashPart {
        part: "listener".into(),
    }))
    .unwrap();
    foo.wait_log("the restart", |l| {
        l.contains("part failed; restarting it") && l.contains("part=\"listener\"")
    });
    // New connections are accepted by the restarted listener.
    assert_eq!(home.run(&["get", "b", "k"]).ok(), "v\n");
}

#[test]
fn a_part_that_keeps_crashing_stops_the_node_with_a_clear_log() {
    let home = Home::new();
    let mut foo = home.start("foo", &[]);
    let (rt, client) = connect(&home, &foo);
    // The restart budget is 3 in 5 s by default; the fourth failure is one too many.
    let seen = || {
        foo.stderr()
            .iter()
            .filter(|l| l.contains("restarting it") || l.contains("giving up"))
            .count()
    };
    for _ in 0..4 {
        let before = seen();
        let crash = Request::CrashPart {
            part: "listener".into(),
        };
        rt.block_on(client.call(crash)).unwrap();
        wait_for("the crash to be seen", PATIENCE, || (seen() > before).then_some(()));
    }
    rt.block_on(client.close());
    let status = foo.wait_exit();
    assert_eq!(status.code(), Some(6));
    let log = foo.stderr().join("\n");
    assert!(
        log.contains("part listener failed 4 times within 5s (the limit is 3 restarts)"),
        "{log}"
    );
    assert!(!home.path().join("nodes/foo").exists(), "unlisted on the way out");
}

#[test]
fn a_chat_line_a_node_cannot_print_is_an_error_for_the_sender() {
    let home = Home::new();
    // kate's stdout is closed: the line cannot be printed, and the sender is told so.
    let mut kate = home.start_with_stdout_unread("kate", &["--in-memory"]);
    kate.close_stdout();
    let out = home.run(&["chat", "kate", "hello"]);
    out.expect(6);
    assert!(out.stderr.contains("the message was not printed"), "{}", out.stderr);
    kate.wait_log("the node's warning", |l| {
        l.contains("cannot write chat lines to stdout")
    });
}

#[test]
fn a_node_whose_stdout_nobody_reads_still_serves() {
    let home = Home::new();
    // kate's stdout is a pipe nobody reads: once its buffer (64 KiB) is full, no chat line
    // can be written. On its one thread the node must still serve.
    let _kate = home.start_with_stdout_unread("kate", &["--in-memory", "--threads", "1"]);
    let text = "x".repeat(8 * 1024);
    let mut last = None;
    for _ in 0..12 {
        // 96 KiB in all; the later ones cannot be printed by their deadline.
        last = Some(home.run(&["chat", "kate", &text, "--as", "flood", "--timeout", "500ms"]));
    }
    // The sender hears why (not "no answer; is it running?" from a node that is).
    let last = last.unwrap();
    last.expect(6);
    assert!(last.stderr.contains("stdout is not being read"), "{}", last.stderr);
    home.run(&["put", "b", "k", "v", "--via", "kate"]).ok();
    assert_eq!(home.run(&["get", "b", "k", "--via", "kate"]).ok(), "v\n");
    assert_eq!(home.run(&["ping", "kate"]).ok(), "pong\n");
}
