//! Issue 24 part 2: RESP (Redis's protocol) on a node, driven by real clients: the `redis`
//! crate, raw sockets for what no client sends, and `redis-cli` where installed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Home, Node, wait_for};
use redis::{Commands, Value};

/// Starts a node serving RESP on an ephemeral loopback port; gives the node and the port.
fn start(home: &Home, name: &str, args: &[&str]) -> (Node, u16) {
    let mut all = vec!["--resp-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let node = home.start(name, &all);
    let line = node.wait_log("the RESP listener", |l| l.contains("serving RESP"));
    let port = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line}"));
    (node, port)
}

fn secret(home: &Home) -> String {
    std::fs::read_to_string(home.secret_path()).unwrap().trim().to_string()
}

fn client(home: &Home, port: u16, query: &str) -> redis::Connection {
    let url = format!("redis://:{}@127.0.0.1:{port}/{query}", secret(home));
    let client = redis::Client::open(url).unwrap();
    client.get_connection_with_timeout(Duration::from_secs(10)).unwrap()
}

/// A raw connection: what is written goes out as is.
fn raw(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Everything the node sends until it closes the connection.
fn until_closed(mut s: TcpStream) -> String {
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

fn lines(s: &TcpStream, n: usize) -> Vec<String> {
    let mut r = BufReader::new(s.try_clone().unwrap());
    (0..n)
        .map(|_| {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            l.trim_end().to_string()
        })
        .collect()
}

fn code(e: &redis::RedisError) -> String {
    format!("{} {}", e.code().unwrap_or(""), e.detail().unwrap_or(""))
}

#[test]
fn auth_is_required_wrong_passwords_are_refused_and_the_secret_works() {
    let home = Home::new();
    let (_n, port) = start(&home, "foo", &["--in-memory"]);
    let mut s = raw(port);
    s.write_all(b"PING\r\nGET a\r\nAUTH nope\r\nAUTH default nope\r\nHELLO 3\r\n")
        .unwrap();
    assert_eq!(
        lines(&s, 5),
        [
            "+PONG",
            "-NOAUTH Authentication required.",
            "-WRONGPASS invalid username-password pair or user is disabled.",
            "-WRONGPASS invalid username-password pair or user is disabled.",
            "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        ]
    );
    // Failures from one source are slowed down, as failed QUIC handshakes are.
    let mut refused = String::new();
    for _ in 0..10 {
        s.write_all(b"AUTH nope\r\n").unwrap();
        let line = lines(&s, 1).remove(0);
        if line.contains("slowed down") {
            refused = line;
            break;
        }
    }
    assert!(refused.starts_with("-ERR too many wrong passwords"), "{refused}");
    let mut ok = raw(port);
    ok.write_all(format!("AUTH {}\r\nGET a\r\nQUIT\r\n", secret(&home)).as_bytes())
        .unwrap();
    assert_eq!(until_closed(ok), "+OK\r\n$-1\r\n+OK\r\n");
    let mut c = client(&home, port, "");
    assert_eq!(c.ping::<String>().unwrap(), "PONG");
}

#[test]
fn every_mapped_command_answers_as_redis_does() {
    let home = Home::new();
    let (_n, port) = start(&home, "foo", &["--resp-bucket", "strings"]);
    let mut c = client(&home, port, "");
    // Strings live in the bucket `strings`.
    let _: () = c.set("a", "1").unwrap();
    assert_eq!(c.get::<_, Option<String>>("a").unwrap().as_deref(), Some("1"));
    assert_eq!(c.get::<_, Option<String>>("zz").unwrap(), None);
    let _: () = c.mset(&[("b", "2"), ("c", "3")]).unwrap();
    let got: Vec<Option<String>> = c.mget(&["a", "nope", "c"]).unwrap();
    assert_eq!(got, [Some("1".into()), None, Some("3".into())]);
    assert_eq!(c.exists::<_, i64>(&["a", "b", "nope"]).unwrap(), 2);
    assert_eq!(c.del::<_, i64>(&["a", "nope"]).unwrap(), 1);
    assert_eq!(home.run(&["get", "strings", "b"]).ok(), "2\n");
    // A hash is a bucket; HSET counts the new fields.
    let new: i64 = redis::cmd("HSET")
        .arg("shop")
        .arg("milk")
        .arg("1")
        .arg("eggs")
        .arg("3")
        .query(&mut c)
        .unwrap();
    assert_eq!(new, 2);
    let again: i64 = redis::cmd("HSET")
        .arg("shop")
        .arg("milk")
        .arg("2")
        .arg("tea")
        .arg("1")
        .query(&mut c)
        .unwrap();
    assert_eq!(again, 1);
    assert_eq!(c.hget::<_, _, String>("shop", "milk").unwrap(), "2");
    assert_eq!(c.hget::<_, _, Option<String>>("shop", "nope").unwrap(), None);
    assert_eq!(c.hget::<_, _, Option<String>>("no-such-hash", "x").unwrap(), None);
    let m: Vec<Option<String>> = redis::cmd("HMGET")
        .arg("shop")
        .arg("eggs")
        .arg("x")
        .query(&mut c)
        .unwrap();
    assert_eq!(m, [Some("3".into()), None]);
    assert!(c.hexists::<_, _, bool>("shop", "tea").unwrap());
    assert_eq!(c.hlen::<_, i64>("shop").unwrap(), 3);
    assert_eq!(c.hkeys::<_, Vec<String>>("shop").unwrap(), ["eggs", "milk", "tea"]);
    let all: Vec<(String, String)> = c.hgetall("shop").unwrap();
    assert_eq!(
        all,
        [
            ("eggs".into(), "3".into()),
            ("milk".into(), "2".into()),
            ("tea".into(), "1".into())
        ]
    );
    assert_eq!(c.hdel::<_, _, i64>("shop", &["tea", "nope"]).unwrap(), 1);
    assert_eq!(c.hlen::<_, i64>("no-such-hash").unwrap(), 0);
    assert_eq!(home.run(&["get", "shop", "milk"]).ok(), "2\n");
    // Connection commands.
    assert_eq!(redis::cmd("ECHO").arg("hi").query::<String>(&mut c).unwrap(), "hi");
    assert_eq!(redis::cmd("SELECT").arg(0).query::<String>(&mut c).unwrap(), "OK");
    let _: () = redis::cmd("CLIENT").arg("SETNAME").arg("me").query(&mut c).unwrap();
    assert_eq!(
        redis::cmd("CLIENT").arg("GETNAME").query::<String>(&mut c).unwrap(),
        "me"
    );
    assert!(redis::cmd("CLIENT").arg("ID").query::<i64>(&mut c).unwrap() > 0);
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    assert!(
        info.contains("connected_clients:1") && info.contains("db0:keys=2,"),
        "{info}"
    );
    assert!(redis::cmd("COMMAND").arg("COUNT").query::<i64>(&mut c).unwrap() > 20);
    let cmds: Vec<Value> = redis::cmd("COMMAND").query(&mut c).unwrap();
    assert!(cmds.len() > 20);
    // Redis's error texts.
    let e = |cmd: &mut redis::Cmd, c: &mut redis::Connection| code(&cmd.query::<Value>(c).unwrap_err());
    assert_eq!(
        e(redis::cmd("FLUSHALL").arg("x"), &mut c),
        "ERR unknown command 'FLUSHALL', with args beginning with: 'x' "
    );
    assert_eq!(
        e(&mut redis::cmd("GET"), &mut c),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(e(redis::cmd("SELECT").arg(1), &mut c), "ERR DB index is out of range");
    assert_eq!(
        e(redis::cmd("SET").arg("a").arg("b").arg("c"), &mut c),
        "ERR syntax error"
    );
    // kvnode's own limits are its one-line reasons.
    let long_key = "k".repeat(2000);
    let over = e(redis::cmd("SET").arg(&long_key).arg("v"), &mut c);
    assert!(over.starts_with("ERR invalid request"), "{over}");
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let home = Home::new();
    let (_n, port) = start(&home, "foo", &[]);
    let mut c = client(&home, port, "");
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
        pipe.cmd("GET").arg(format!("k{i}"));
        pipe.cmd("HSET").arg("h").arg(format!("f{i}")).arg(i);
    }
    let got: Vec<Value> = pipe.query(&mut c).unwrap();
    for (i, pair) in got.chunks(2).enumerate() {
        assert_eq!(pair[0], Value::BulkString(i.to_string().into_bytes()), "GET k{i}");
        assert_eq!(pair[1], Value::Int(1), "HSET f{i}");
    }
    // Raw: everything written at once is answered in order, inline commands too.
    let mut s = raw(port);
    s.write_all(
        format!(
            "AUTH {}\r\nSET x 1\r\nGET x\r\nDEL x\r\nGET x\r\nQUIT\r\n",
            secret(&home)
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(until_closed(s), "+OK\r\n+OK\r\n$1\r\n1\r\n:1\r\n$-1\r\n+OK\r\n");
}

#[test]
fn hello_3_speaks_resp3() {
    let home = Home::new();
    let (_n, port) = start(&home, "foo", &["--in-memory"]);
    let mut c = client(&home, port, "?protocol=resp3");
    let _: i64 = c.hset("h", "f", "v").unwrap();
    assert_eq!(
        redis::cmd("HGETALL").arg("h").query::<Value>(&mut c).unwrap(),
        Value::Map(vec![(
            Value::BulkString(b"f".to_vec()),
            Value::BulkString(b"v".to_vec())
        )])
    );
    assert_eq!(
        redis::cmd("GET").arg("none").query::<Value>(&mut c).unwrap(),
        Value::Nil
    );
    let mut s = raw(port);
    s.write_all(format!("HELLO 3 AUTH default {}\r\nGET none\r\nQUIT\r\n", secret(&home)).as_bytes())
        .unwrap();
    let out = until_closed(s);
    assert!(out.starts_with("%8\r\n$6\r\nserver\r\n$6\r\nkvnode\r\n"), "{out}");
    assert!(
        out.contains("$5\r\nproto\r\n:3\r\n") && out.ends_with("_\r\n+OK\r\n"),
        "{out}"
    );
}

#[test]
fn a_hash_owned_by_another_node_is_served_by_it() {
    let home = Home::new();
    let table = "a-m=foo,n-z=bar";
    let (_foo, port) = start(&home, "foo", &["--table", table]);
    let mut bar = home.start("bar", &["--table", table]);
    let mut c = client(&home, port, "");
    assert_eq!(c.hset::<_, _, _, i64>("zoo", "lion", "1").unwrap(), 1);
    assert_eq!(c.hget::<_, _, String>("zoo", "lion").unwrap(), "1");
    // Stored on bar: bar alone answers it, and with bar gone foo says why.
    let route = home.run(&["route", "zoo", "--via", "foo"]).ok();
    assert!(route.contains("bar"), "{route}");
    bar.terminate();
    let gone = code(&c.hget::<_, _, String>("zoo", "lion").unwrap_err());
    assert!(gone.starts_with("ERR ") && gone.contains("bar"), "{gone}");
    assert_eq!(
        c.hset::<_, _, _, i64>("apple", "a", "1").unwrap(),
        1,
        "foo's own buckets serve on"
    );
}

#[test]
fn over_the_limits_the_connection_closes_with_an_error_and_the_node_serves_on() {
    let home = Home::new();
    let (_n, port) = start(&home, "foo", &["--in-memory"]);
    let cases: [(Vec<u8>, &str); 4] = [
        (
            b"*2\r\n$3\r\nGET\r\n$8388609\r\n".to_vec(),
            "more than the 8388608-byte value limit",
        ),
        (b"*1025\r\n".to_vec(), "1025 arguments, more than the 1024"),
        (vec![b'x'; 70_000], "too big inline request"),
        (b"*2\r\n$3\r\nGET\r\nx\r\n".to_vec(), "expected '$', got 'x'"),
    ];
    for (bytes, said) in cases {
        let mut s = raw(port);
        s.write_all(&bytes).unwrap();
        let out = until_closed(s);
        assert!(out.starts_with("-ERR Protocol error: ") && out.contains(said), "{out}");
    }
    // A request whose bulk strings add up past 16 MiB, refused on its headers: the node
    // closes before all of it is sent.
    let mut s = raw(port);
    let mut huge = format!("AUTH {}\r\n", secret(&home)).into_bytes();
    huge.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$8388608\r\n");
    huge.extend(std::iter::repeat_n(b'v', 8 * 1024 * 1024));
    huge.extend_from_slice(b"\r\n$8388608\r\n");
    s.write_all(&huge).unwrap();
    let out = until_closed(s);
    assert!(
        out.starts_with("+OK\r\n") && out.contains("request of more than 16777216 bytes"),
        "{out}"
    );
    // Before AUTH, a request is at most 16 KiB: a client without the secret cannot make the
    // node buffer megabytes for it.
    let mut s = raw(port);
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20000\r\n").unwrap();
    let out = until_closed(s);
    assert!(out.contains("request of more than 16384 bytes before AUTH"), "{out}");
    let mut c = client(&home, port, "");
    assert_eq!(c.ping::<String>().unwrap(), "PONG");
    // A value at the limit passes.
    let big = vec![b'v'; 8 * 1024 * 1024];
    let _: () = c.set("big", &big).unwrap();
    assert_eq!(c.get::<_, Vec<u8>>("big").unwrap().len(), big.len());
}

/// The node's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_client_that_never_reads_is_paused_not_buffered_for() {
    let home = Home::new();
    let (node, port) = start(&home, "foo", &["--in-memory"]);
    let mut c = client(&home, port, "");
    let _: () = c.set("v", vec![b'x'; 64 * 1024]).unwrap();
    let before = rss_kib(node.pid());
    // 100,000 GETs of 64 KiB: 6.4 GB of replies that are never read.
    let mut s = raw(port);
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut batch = format!("AUTH {}\r\n", secret(&home)).into_bytes();
    for _ in 0..100_000 {
        batch.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$1\r\nv\r\n");
    }
    // Blocks once the node stops reading (a timeout), or ends if the kernel took it all.
    let written = s.write_all(&batch);
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < Duration::from_secs(2) {
        peak = peak.max(rss_kib(node.pid()));
        assert_eq!(c.ping::<String>().unwrap(), "PONG", "the node serves others meanwhile");
    }
    assert!(
        peak < before + 128 * 1024,
        "RSS grew from {before} KiB to {peak} KiB (written: {written:?})"
    );
    drop(s);
    wait_for(
        "the paused client's connection to be gone",
        Duration::from_secs(20),
        || {
            let info: String = redis::cmd("INFO").arg("clients").query(&mut c).unwrap();
            info.contains("connected_clients:1").then_some(())
        },
    );
}

#[test]
fn a_stopping_node_does_not_wait_for_a_client_that_never_reads() {
    let home = Home::new();
    let (mut node, port) = start(&home, "foo", &["--in-memory"]);
    let mut c = client(&home, port, "");
    let _: () = c.set("v", vec![b'x'; 64 * 1024]).unwrap();
    let mut s = raw(port);
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut batch = format!("AUTH {}\r\n", secret(&home)).into_bytes();
    for _ in 0..10_000 {
        batch.extend_from_slice(b"GET v\r\n");
    }
    let _ = s.write_all(&batch);
    let asked = Instant::now();
    assert!(node.terminate().success());
    // Well within the 10 s a stop waits for requests in flight.
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());
}

#[test]
fn redis_cli_works_with_the_secret() {
    if Command::new("redis-cli").arg("--version").output().is_err() {
        eprintln!("skipped: redis-cli is not installed");
        return;
    }
    let home = Home::new();
    let (_n, port) = start(&home, "foo", &["--in-memory"]);
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "-a", &secret(&home), "--no-auth-warning"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(cli(&["HSET", "shopping", "milk", "1", "eggs", "3"]), "2\n");
    assert_eq!(cli(&["HGET", "shopping", "milk"]), "1\n");
    assert_eq!(cli(&["HGETALL", "shopping"]), "eggs\n3\nmilk\n1\n");
    assert_eq!(cli(&["-3", "HGETALL", "shopping"]), "eggs 3\nmilk 1\n", "a RESP3 map");
    assert_eq!(cli(&["SET", "greeting", "hello world"]), "OK\n");
    assert_eq!(cli(&["GET", "greeting"]), "hello world\n");
    assert!(cli(&["INFO", "server"]).contains("kvnode_version:"));
    let wrong = Command::new("redis-cli")
        .args([
            "-p",
            &port.to_string(),
            "-a",
            "wrong",
            "--no-auth-warning",
            "GET",
            "greeting",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&wrong.stdout).into_owned() + &String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains("WRONGPASS") || said.contains("NOAUTH"), "{said}");
}

#[test]
fn off_loopback_needs_tls_and_tls_serves_redis_cli() {
    let home = Home::new();
    let refused = home.run(&["start", "--name", "foo", "--in-memory", "--resp-listen", "0.0.0.0:0"]);
    refused.expect(2);
    assert!(
        refused.stderr.contains("resp_listen") && refused.stderr.contains("resp_tls = true"),
        "{}",
        refused.stderr
    );
    let supports_tls = Command::new("redis-cli").arg("--help").output().is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout).contains("--tls") || String::from_utf8_lossy(&o.stderr).contains("--tls")
    });
    if !supports_tls {
        eprintln!("skipped the TLS half: redis-cli is not installed or was built without TLS");
        return;
    }
    let (_n, port) = start(&home, "foo", &["--in-memory", "--resp-tls"]);
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args([
                "--tls",
                "--insecure",
                "-p",
                &port.to_string(),
                "-a",
                &secret(&home),
                "--no-auth-warning",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(cli(&["HSET", "h", "f", "v"]), "1\n");
    assert_eq!(cli(&["HGET", "h", "f"]), "v\n");
    // In clear text, a TLS port answers nothing a Redis client can read.
    let mut s = raw(port);
    s.write_all(b"PING\r\n").unwrap();
    assert!(!until_closed(s).contains("PONG"));
}
