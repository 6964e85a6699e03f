//! Issue 24, part 1: the guide's `kv_server` text protocol, tested as the guide tests it: a
//! TCP connection, the conversation sent line by line, each answer checked.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{Home, Node, PATIENCE};

/// `kvnode start --name NAME --text-listen 127.0.0.1:0 ARGS...`, and the text port it got.
fn start_text(home: &Home, name: &str, args: &[&str]) -> (Node, SocketAddr) {
    let mut all = vec!["--text-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let node = home.start(name, &all);
    let line = node.wait_log("the text listener", |l| l.contains("serving the guide's text protocol"));
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr=")?.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (node, addr)
}

/// A telnet-like client: writes lines, reads answer lines (without their `\r\n`).
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// The next answer line; panics on a line not ended by `\r\n`, or none in time.
    fn line(&mut self) -> String {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).unwrap();
        let text = String::from_utf8_lossy(&line).into_owned();
        assert!(text.ends_with("\r\n"), "not a whole answer line: {text:?}");
        text.trim_end_matches("\r\n").to_string()
    }

    /// Sends one command line and checks its answer lines.
    #[track_caller]
    fn say(&mut self, command: &str, answer: &[&str]) {
        self.send(format!("{command}\r\n").as_bytes());
        for expected in answer {
            assert_eq!(self.line(), *expected, "answer to {command:?}");
        }
    }

    /// Reads until the node closes the connection; what came. A node that closes with bytes
    /// of ours still unread (a half-sent line it had not taken in yet) resets the connection,
    /// as TCP does: that is a close too.
    fn rest(&mut self) -> String {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("reading until the node closes: {e}"),
        }
        String::from_utf8_lossy(&rest).into_owned()
    }
}

#[test]
fn the_guides_conversation() {
    let home = Home::new();
    let (_foo, text) = start_text(&home, "foo", &[]);
    let mut c = Conn::open(text);
    c.say("CREATE shopping", &["OK"]);
    c.say("PUT shopping milk 1", &["OK"]);
    c.say("PUT shopping eggs 3", &["OK"]);
    c.say("GET shopping milk", &["1", "OK"]);
    c.say("DELETE shopping eggs", &["OK"]);
    // As the guide's server answers: a missing key is an empty value; deleting one is OK.
    c.say("GET shopping eggs", &["", "OK"]);
    c.say("DELETE shopping eggs", &["OK"]);
    // A bucket never created.
    c.say("GET pantry milk", &["NOT FOUND"]);
    c.say("PUT pantry milk 1", &["NOT FOUND"]);
    c.say("DELETE pantry milk", &["NOT FOUND"]);
    // Creating a bucket that exists keeps what it holds.
    c.say("CREATE shopping", &["OK"]);
    c.say("GET shopping milk", &["1", "OK"]);
    c.say("HELLO", &["UNKNOWN COMMAND"]);
    c.say("get shopping milk", &["UNKNOWN COMMAND"]);
    c.say("GET shopping", &["UNKNOWN COMMAND"]);
    // A bare \n ends a line too.
    c.send(b"GET shopping milk\n");
    assert_eq!((c.line(), c.line()), ("1".into(), "OK".into()));
    // Past the limits of SPEC §4: one ERROR line.
    let long_key = "k".repeat(1025);
    c.send(format!("GET shopping {long_key}\r\n").as_bytes());
    let said = c.line();
    assert!(
        said.starts_with("ERROR invalid request: the key is 1025 bytes"),
        "{said}"
    );
    c.say("GET shopping milk", &["1", "OK"]);
}

#[test]
fn pipelined_lines_are_answered_in_order_beyond_the_cap_on_commands_in_flight() {
    let home = Home::new();
    // A durable node (writes wait for their sync) with a small cap, so that a burst of
    // commands fills it many times over.
    let config = home.write_file("foo.toml", "[limits]\nmax_requests_per_stream = 4\n");
    let (_foo, text) = start_text(&home, "foo", &["--config", config.to_str().unwrap()]);
    let mut c = Conn::open(text);
    let mut burst = String::from("CREATE burst\r\n");
    for i in 0..500 {
        burst.push_str(&format!("PUT burst k{i} v{i}\r\nGET burst k{i}\r\nnonsense {i}\r\n"));
    }
    c.send(burst.as_bytes());
    assert_eq!(c.line(), "OK");
    for i in 0..500 {
        assert_eq!(c.line(), "OK", "put {i}");
        assert_eq!((c.line(), c.line()), (format!("v{i}"), "OK".into()), "get {i}");
        assert_eq!(c.line(), "UNKNOWN COMMAND", "line {i}");
    }
}

#[test]
fn a_command_sent_to_one_node_is_served_by_the_other() {
    let home = Home::new();
    let table = ["--table", "a-m=foo,n-z=bar", "--timeout", "3s"];
    let (_foo, foo_text) = start_text(&home, "foo", &table);
    let (mut bar, bar_text) = start_text(&home, "bar", &table);
    assert_eq!(home.run(&["route", "world", "--via", "foo"]).ok(), "bar\n");
    let mut to_foo = Conn::open(foo_text);
    to_foo.say("CREATE world", &["OK"]);
    to_foo.say("PUT world hello from-foo", &["OK"]);
    to_foo.say("GET world hello", &["from-foo", "OK"]);
    // Pipelined through foo to bar's durable store: in order, and each GET sees the PUT
    // sent just before it.
    let mut burst = String::new();
    for i in 0..200 {
        burst.push_str(&format!(
            "PUT world k{i} v{i}\r\nGET world k{i}\r\nDELETE world k{i}\r\n"
        ));
    }
    to_foo.send(burst.as_bytes());
    for i in 0..200 {
        let answers = [to_foo.line(), to_foo.line(), to_foo.line(), to_foo.line()];
        assert_eq!(
            answers,
            ["OK".to_string(), format!("v{i}"), "OK".into(), "OK".into()],
            "pair {i}"
        );
    }
    // It lives on bar: read there through bar's own text port, and by the CLI.
    Conn::open(bar_text).say("GET world hello", &["from-foo", "OK"]);
    assert_eq!(home.run(&["get", "world", "hello", "--via", "bar"]).ok(), "from-foo\n");
    // A bucket outside the table: the routing error, on one line.
    to_foo.send(b"GET Apple k\r\n");
    let said = to_foo.line();
    let expected = r#"ERROR could not find entry for "Apple" in routing table [a-m=foo, n-z=bar] (version 1)"#;
    assert!(said.starts_with(expected), "{said}");
    // The owner is gone: an error naming it, within the deadline; foo serves on.
    bar.kill9();
    to_foo.send(b"GET world hello\r\n");
    let said = to_foo.line();
    assert!(said.starts_with("ERROR ") && said.contains("bar"), "{said}");
    to_foo.say("CREATE apple", &["OK"]);
    to_foo.say("GET apple k", &["", "OK"]);
}

#[test]
fn garbage_an_overlong_line_and_a_half_written_line_leave_the_node_serving() {
    let home = Home::new();
    let (foo, text) = start_text(&home, "foo", &["--in-memory"]);
    let mut c = Conn::open(text);
    c.say("CREATE shopping", &["OK"]);
    c.send(b"\x00\xff\xfe garbage \x1b[2J\r\n\r\n");
    assert_eq!(
        (c.line(), c.line()),
        ("UNKNOWN COMMAND".into(), "UNKNOWN COMMAND".into())
    );
    // A panic while a request is routed, or while its answer is awaited, is an internal
    // error; the connection goes on.
    for bucket in ["fault-injection-panic", "fault-injection-panic-later"] {
        c.send(format!("GET {bucket} k\r\n").as_bytes());
        let said = c.line();
        assert!(
            said.starts_with("ERROR internal error on node foo: the get request failed"),
            "{said}"
        );
    }
    c.say("PUT shopping milk 1", &["OK"]);

    // A line over the limit (the value limit plus room for the rest): an error naming the
    // limit, then the node closes the connection.
    let mut long = Conn::open(text);
    long.send(b"PUT shopping big ");
    let chunk = vec![b'x'; 1024 * 1024];
    for _ in 0..9 {
        if long.writer.write_all(&chunk).is_err() {
            break; // closed on us already: the answer is in what we read below
        }
    }
    let rest = long.rest();
    assert!(
        rest.starts_with("ERROR line too long: lines are at most 8392704 bytes (a value is at most 8388608 bytes); closing the connection\r\n"),
        "{rest:.200}"
    );

    // Half a line, then gone.
    let mut half = Conn::open(text);
    half.send(b"PUT shopping eggs");
    drop(half);

    // The node serves on, on a fresh connection and on the old one.
    let mut fresh = Conn::open(text);
    fresh.say("GET shopping milk", &["1", "OK"]);
    fresh.say("GET shopping eggs", &["", "OK"]);
    fresh.say("GET shopping big", &["", "OK"]);
    c.say("GET shopping milk", &["1", "OK"]);
    assert!(
        foo.stderr()
            .iter()
            .any(|l| l.contains("fault injection: a bucket request that panics")),
        "the panic is logged"
    );
}

#[test]
fn a_text_listener_off_loopback_is_refused_at_start() {
    let home = Home::new();
    for wide in ["0.0.0.0:0", "[::]:0"] {
        let mut node = home.spawn_node("foo", &["--name", "foo", "--text-listen", wide]);
        let status = node.wait_exit();
        assert_eq!(status.code(), Some(2), "{wide}");
        let said = node.stderr().join("\n");
        assert!(
            said.contains("invalid text_listen (--text-listen)")
                && said.contains("not a loopback address")
                && said.contains("no authentication"),
            "{said}"
        );
    }
    // A port already taken is a start error too, naming the setting.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut node = home.spawn_node("foo", &["--name", "foo", "--text-listen", &addr]);
    assert_eq!(node.wait_exit().code(), Some(2));
    let said = node.stderr().join("\n");
    assert!(
        said.contains("cannot listen for the text protocol on") && said.contains(&addr),
        "{said}"
    );
}

#[test]
fn a_bucket_made_by_kvnode_create_is_found_by_a_text_get_and_survives_kill_9() {
    let home = Home::new();
    let (mut foo, text) = start_text(&home, "foo", &[]);
    home.run(&["create", "shopping", "--via", "foo"]).ok();
    Conn::open(text).say("GET shopping milk", &["", "OK"]);
    // Creating it again is no error, and keeps what it holds.
    home.run(&["put", "shopping", "milk", "1"]).ok();
    assert_eq!(
        home.run(&["create", "shopping", "--json"]).ok(),
        "{\"bucket\":\"shopping\",\"ok\":true}\n"
    );
    assert_eq!(home.run(&["get", "shopping", "milk"]).ok(), "1\n");
    home.run(&["create", "empty"]).ok();
    assert_eq!(
        home.run(&["keys", "empty"]).ok(),
        "",
        "an empty bucket, not \"not found\""
    );
    home.run(&["get", "empty", "k"]).expect(1);
    home.run(&["keys", "never"]).expect(1);
    let bad = home.run(&["create", ""]);
    bad.expect(2);
    assert!(bad.stderr.contains("the bucket name is empty"), "{}", bad.stderr);
    // Acknowledged means durable: an empty bucket made just before a kill -9 is there after.
    home.run(&["create", "made-last"]).ok();
    foo.kill9();
    let (_foo, text) = start_text(&home, "foo", &[]);
    assert_eq!(home.run(&["keys", "made-last"]).ok(), "");
    Conn::open(text).say("GET empty k", &["", "OK"]);
}

#[test]
fn a_stopping_node_ends_its_text_connections_and_exits() {
    let home = Home::new();
    let (mut foo, text) = start_text(&home, "foo", &["--in-memory"]);
    let mut idle = Conn::open(text);
    idle.say("CREATE shopping", &["OK"]);
    let mut half = Conn::open(text);
    half.send(b"GET shopping mi");
    assert!(foo.terminate().success());
    assert_eq!(idle.rest(), "", "closed, with nothing more to say");
    assert_eq!(half.rest(), "", "a half-written line is never answered");
}
