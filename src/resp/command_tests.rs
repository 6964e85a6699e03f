//! The command mapping's tests (beside `command.rs`, which they would double in length).

use super::*;
use serde_bytes::ByteBuf;

fn req(line: &str) -> Vec<Bytes> {
    line.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
}

fn session() -> Session {
    Session::new(7, b"redis".to_vec(), b"sesame")
}

fn authed() -> Session {
    let mut s = session();
    s.authenticated(AfterAuth::Ok);
    s
}

fn reply(s: &mut Session, line: &str) -> Frame {
    match s.handle(req(line)) {
        Action::Reply(f) | Action::ReplyAndClose(f) => f,
        other => panic!("{line}: {other:?}"),
    }
}

fn err(text: &str) -> Frame {
    Frame::Error(text.into())
}

#[test]
fn unknown_commands_and_wrong_arity_answer_redis_texts_even_before_auth() {
    let mut s = session();
    assert_eq!(
        reply(&mut s, "foo a b"),
        err("ERR unknown command 'foo', with args beginning with: 'a' 'b' ")
    );
    assert_eq!(
        reply(&mut s, "GET"),
        err("ERR wrong number of arguments for 'get' command")
    );
    // Pairs are counted by the command itself, after authentication, as in Redis.
    let mut s = authed();
    assert_eq!(
        reply(&mut s, "hset h a 1 b"),
        err("ERR wrong number of arguments for 'hset' command")
    );
    assert_eq!(
        reply(&mut s, "mset a"),
        err("ERR wrong number of arguments for 'mset' command")
    );
}

#[test]
fn only_ping_hello_quit_and_auth_work_before_auth() {
    let mut s = session();
    assert_eq!(reply(&mut s, "get a"), err("NOAUTH Authentication required."));
    assert_eq!(reply(&mut s, "client id"), err("NOAUTH Authentication required."));
    assert_eq!(reply(&mut s, "PING"), Frame::Simple("PONG"));
    assert!(matches!(reply(&mut s, "hello 3"), Frame::Error(e) if e.starts_with("NOAUTH HELLO must")));
    assert_eq!(s.handle(req("quit")), Action::ReplyAndClose(Frame::Simple("OK")));
}

#[test]
fn the_password_is_the_secret_and_a_user_must_be_default() {
    let mut s = session();
    let Action::Authenticate { password, then } = s.handle(req("AUTH sesame")) else {
        panic!()
    };
    assert!(s.check_password(&password) && !s.check_password(b"sesam") && !s.check_password(b"sesame2"));
    assert_eq!(s.authenticated(then), Frame::Simple("OK"));
    assert!(s.is_authenticated());
    assert!(matches!(s.handle(req("auth default x")), Action::Authenticate { .. }));
    assert_eq!(reply(&mut s, "auth bob x"), wrong_password());
}

#[test]
fn hello_3_with_auth_switches_to_resp3() {
    let mut s = session();
    let Action::Authenticate { password, then } = s.handle(req("HELLO 3 AUTH default sesame SETNAME me")) else {
        panic!()
    };
    assert!(s.check_password(&password));
    let Frame::Map(fields) = s.authenticated(then) else {
        panic!()
    };
    assert!(fields.contains(&(Frame::bulk("proto"), Frame::Integer(3))));
    assert_eq!(s.protocol, Protocol::Resp3);
    assert_eq!(reply(&mut s, "client getname"), Frame::bulk("me"));
    assert_eq!(reply(&mut s, "hello 4"), err("NOPROTO unsupported protocol version"));
    assert_eq!(
        reply(&mut s, "hello x"),
        err("ERR Protocol version is not an integer or out of range")
    );
    assert_eq!(
        reply(&mut s, "hello 3 auth"),
        err("ERR Syntax error in HELLO option 'auth'")
    );
}

#[test]
fn connection_commands_answer_as_redis_does() {
    let mut s = authed();
    assert_eq!(reply(&mut s, "ping hi"), Frame::bulk("hi"));
    assert_eq!(reply(&mut s, "echo x"), Frame::bulk("x"));
    assert_eq!(reply(&mut s, "select 0"), Frame::Simple("OK"));
    assert_eq!(reply(&mut s, "select 1"), err("ERR DB index is out of range"));
    assert_eq!(
        reply(&mut s, "select x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(reply(&mut s, "client id"), Frame::Integer(7));
    assert_eq!(reply(&mut s, "client getname"), Frame::Null);
    assert_eq!(reply(&mut s, "client setname a"), Frame::Simple("OK"));
    assert_eq!(reply(&mut s, "client getname"), Frame::bulk("a"));
    assert_eq!(reply(&mut s, "client setinfo lib-name x"), Frame::Simple("OK"));
    assert_eq!(
        reply(&mut s, "client foo"),
        err("ERR unknown subcommand 'foo'. Try CLIENT HELP.")
    );
    assert_eq!(
        reply(&mut s, "client id x"),
        err("ERR wrong number of arguments for 'client|id' command")
    );
    assert_eq!(reply(&mut s, "command count"), Frame::Integer(COMMANDS.len() as i64));
    assert_eq!(reply(&mut s, "command docs"), Frame::Map(Vec::new()));
    assert_eq!(reply(&mut s, "config get save"), Frame::Map(Vec::new()));
    assert_eq!(
        reply(&mut s, "config set a b"),
        err("ERR unknown subcommand 'set'. Try CONFIG HELP.")
    );
    assert_eq!(reply(&mut s, "set a b c"), err("ERR syntax error"));
    assert!(matches!(reply(&mut s, "set a b EX 1"), Frame::Error(e) if e.contains("not supported")));
}

#[test]
fn string_commands_act_on_the_string_bucket() {
    let mut s = authed();
    let put = |k: &str, v: &str| {
        (
            b"redis".to_vec(),
            BucketOp::Put {
                key: k.into(),
                value: v.into(),
            },
        )
    };
    assert_eq!(
        s.handle(req("MSET a 1 b 2")),
        Action::Ops {
            ops: vec![put("a", "1"), put("b", "2")],
            finish: Finish::Ok
        }
    );
    assert_eq!(
        s.handle(req("GET a")),
        Action::Ops {
            ops: vec![(b"redis".to_vec(), get(b"a".to_vec()))],
            finish: Finish::Value
        }
    );
}

#[test]
fn hset_puts_each_field_and_counts_the_new_ones() {
    let mut s = authed();
    let Action::Ops { ops, finish } = s.handle(req("HSET h a 1 b 2")) else {
        panic!()
    };
    assert_eq!(
        ops[1],
        (
            b"h".to_vec(),
            BucketOp::PutReporting {
                key: b"b".to_vec(),
                value: b"2".to_vec()
            }
        )
    );
    let answers = vec![Ok(Reply::Stored { new: false }), Ok(Reply::Stored { new: true })];
    assert_eq!(finish.reply(answers), Frame::Integer(1));
}

#[test]
fn missing_means_nil_or_zero_and_failures_are_err_lines() {
    let none = || {
        Err(RemoteError::BucketNotFound {
            bucket: ByteBuf::from("h"),
        })
    };
    assert_eq!(Finish::Value.reply(vec![none()]), Frame::Null);
    assert_eq!(Finish::Found.reply(vec![none(), Ok(Reply::Done)]), Frame::Integer(1));
    assert_eq!(Finish::Values.reply(vec![none()]), Frame::Array(vec![Frame::Null]));
    let down = RemoteError::DeadlineExceeded {
        node: "b".into(),
        waited_ms: 5,
    };
    assert_eq!(
        Finish::Ok.reply(vec![Ok(Reply::Done), Err(down.clone())]),
        Frame::err(&down)
    );
    assert_eq!(Listing::Len.reply(vec![b"a".to_vec()], Vec::new()), Frame::Integer(1));
    let all = Listing::All.reply(
        vec![b"a".to_vec(), b"gone".to_vec()],
        vec![Ok(Reply::Value(ByteBuf::from("1"))), none()],
    );
    assert_eq!(all, Frame::Map(vec![(Frame::bulk("a"), Frame::bulk("1"))]));
}

#[test]
fn info_shows_the_asked_sections() {
    let s = authed();
    let stats = InfoStats {
        node: "n1".into(),
        port: 6379,
        uptime_secs: 3,
        clients: 2,
        keys: Some(5),
    };
    let Frame::Bulk(all) = s.info(&[], &stats) else {
        panic!()
    };
    let all = String::from_utf8(all).unwrap();
    assert!(all.contains("# Server") && all.contains("connected_clients:2") && all.contains("db0:keys=5"));
    let Frame::Bulk(one) = s.info(&["clients".into()], &stats) else {
        panic!()
    };
    assert_eq!(one, b"# Clients\r\nconnected_clients:2\r\n");
}
