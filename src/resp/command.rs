//! Redis commands mapped onto bucket operations, per connection. Pure: a request's arguments
//! in, an [`Action`] out (a reply now, bucket operations to place, a hash to list, a password
//! to check); the answers of those operations in, the reply out.
//!
//! A Redis hash is a kvnode bucket (`HSET shopping milk 1` puts key `milk` in bucket
//! `shopping`); the string commands (`SET`, `GET`, ...) act on the one bucket the listener is
//! given (`resp_bucket`). What is not as in Redis:
//! - Nothing spanning several keys is atomic: `MSET`, `DEL a b`, `HSET h a 1 b 2` and `HDEL`
//!   place one operation per key, in order; another client may see some and not others.
//! - `HSET`'s count of new fields is the store's own: each field's put
//!   (`BucketOp::PutReporting`) says whether the key was there when it was written.
//! - `HLEN`, `HKEYS` and `HGETALL` list the bucket page by page, then (`HGETALL`) read each
//!   field: not a snapshot; a field deleted meanwhile is left out. Fields come in kvnode's
//!   (bytewise) key order.
//! - `DEL` and `EXISTS` act on the string bucket only: `DEL shopping` does not remove a hash
//!   (kvnode has no bucket deletion).
//! - On a durable node, a read placed behind a write of the same connection waits for that
//!   write's commit (the front session keeps a connection's reads after its writes).
//! - There are no types: `GET` of a hash's name, or `HGET` on the string bucket, just read
//!   keys (no `WRONGTYPE`); there are no expiries (`SET` options are refused) and one
//!   database (`SELECT 0`).
//! - Keys and bucket names are 1 to 1,024 bytes, values at most 8 MiB (kvnode's limits).

use bytes::Bytes;
use ring::hmac;

use super::encode::{Frame, Protocol};
use super::reply::command;
use crate::wire::{BucketOp, RemoteError, Reply};

/// One answer to a bucket operation, as the front session gives it.
pub type Answer = Result<Reply, RemoteError>;

/// What the listener does for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Reply(Frame),
    /// The reply, then the connection is closed (`QUIT`).
    ReplyAndClose(Frame),
    /// Bucket operations to place in this order; their answers, in order, go to
    /// [`Finish::reply`].
    Ops {
        ops: Vec<(Vec<u8>, BucketOp)>,
        finish: Finish,
    },
    /// A hash listed page by page ([`BucketOp::Keys`]); then [`Listing::reply`].
    List {
        bucket: Vec<u8>,
        listing: Listing,
    },
    /// A password to check with [`Session::check_password`] (after the listener's rate limit);
    /// then [`Session::authenticated`] or [`wrong_password`].
    Authenticate {
        password: Bytes,
        then: AfterAuth,
    },
    /// `INFO`: the listener gathers [`InfoStats`] (counting the string bucket's keys when
    /// `keyspace` is asked for) and calls [`Session::info`].
    Info {
        sections: Vec<String>,
    },
}

/// What a successful authentication answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterAuth {
    Ok,
    Hello {
        protocol: Option<Protocol>,
        name: Option<Vec<u8>>,
    },
}

/// How the answers of an [`Action::Ops`] make its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// `+OK` once all succeeded (`SET`, `MSET`).
    Ok,
    /// One value, or null (`GET`, `HGET`).
    Value,
    /// An array of values or nulls (`MGET`, `HMGET`).
    Values,
    /// How many were found (`EXISTS`, `HEXISTS`, `DEL`, `HDEL`).
    Found,
    /// How many puts stored a new key (`HSET`: new fields).
    NewFields,
}

/// What [`Action::List`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Len,
    Keys,
    /// Keys, then each one's value: the listener places a `Get` per key.
    All,
}

/// The node's figures for `INFO`.
#[derive(Debug, Clone, Default)]
pub struct InfoStats {
    pub node: String,
    pub port: u16,
    pub uptime_secs: u64,
    pub clients: usize,
    /// Keys in the string bucket, when counted.
    pub keys: Option<u64>,
}

/// The Redis version whose behaviour is followed, for clients that look at it.
pub const REDIS_VERSION: &str = "7.0.0";

/// One client connection's state.
pub struct Session {
    pub protocol: Protocol,
    authenticated: bool,
    name: Option<Vec<u8>>,
    id: u64,
    strings: Vec<u8>,
    /// The secret, kept as a MAC key and the MAC of itself: a password is checked by
    /// comparing MACs with `hmac::verify`, in constant time and whatever its length.
    key: hmac::Key,
    tag: hmac::Tag,
}

/// The reply to a wrong password, Redis's own.
pub fn wrong_password() -> Frame {
    Frame::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
}

/// The reply to a request that is not a known command.
fn unknown_command(args: &[Bytes]) -> Frame {
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        lossy(&args[0], 128)
    );
    for arg in &args[1..] {
        text.push_str(&format!("'{}' ", lossy(arg, 128)));
    }
    Frame::Error(text)
}

fn arity(name: &str) -> Frame {
    Frame::err(format!("wrong number of arguments for '{name}' command"))
}

fn syntax() -> Frame {
    Frame::err("syntax error")
}

fn lossy(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned()
}

/// Commands and their arity as Redis counts it: exactly `n`, or at least `-n`.
const COMMANDS: &[(&str, i32)] = &[
    ("get", 2),
    ("set", -3),
    ("del", -2),
    ("exists", -2),
    ("mget", -2),
    ("mset", -3),
    ("hset", -4),
    ("hget", 3),
    ("hmget", -3),
    ("hdel", -3),
    ("hexists", 3),
    ("hlen", 2),
    ("hkeys", 2),
    ("hgetall", 2),
    ("ping", -1),
    ("echo", 2),
    ("auth", -2),
    ("hello", -1),
    ("select", 2),
    ("quit", -1),
    ("client", -2),
    ("command", -1),
    ("info", -1),
    ("config", -2),
];

/// Commands that need no authentication.
const OPEN: &[&str] = &["ping", "hello", "quit", "auth"];

impl Session {
    /// A session of connection `id`, whose string commands act on bucket `strings`.
    pub fn new(id: u64, strings: Vec<u8>, secret: &[u8]) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"kvnode resp password check");
        let tag = hmac::sign(&key, secret);
        Self {
            protocol: Protocol::Resp2,
            authenticated: false,
            name: None,
            id,
            strings,
            key,
            tag,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether `password` is the secret, in constant time.
    pub fn check_password(&self, password: &[u8]) -> bool {
        hmac::verify(&self.key, password, self.tag.as_ref()).is_ok()
    }

    /// The reply once [`Action::Authenticate`]'s password was right.
    pub fn authenticated(&mut self, then: AfterAuth) -> Frame {
        self.authenticated = true;
        match then {
            AfterAuth::Ok => Frame::Simple("OK"),
            AfterAuth::Hello { protocol, name } => self.hello(protocol, name),
        }
    }

    /// What to do for one request (`args` is never empty).
    pub fn handle(&mut self, args: Vec<Bytes>) -> Action {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let Some(&(name, arity_of)) = COMMANDS.iter().find(|(n, _)| *n == name) else {
            return Action::Reply(unknown_command(&args));
        };
        let n = args.len() as i32;
        if (arity_of > 0 && n != arity_of) || n < arity_of.abs() {
            return Action::Reply(arity(name));
        }
        if !self.authenticated && !OPEN.contains(&name) {
            return Action::Reply(Frame::Error("NOAUTH Authentication required.".into()));
        }
        let mut a: Vec<Vec<u8>> = args.into_iter().skip(1).map(Vec::from).collect();
        match name {
            "get" => ops(vec![(self.strings.clone(), get(a.swap_remove(0)))], Finish::Value),
            "set" => set(self.strings.clone(), a),
            "del" => each(&self.strings, a, delete, Finish::Found),
            "exists" => each(&self.strings, a, get, Finish::Found),
            "mget" => each(&self.strings, a, get, Finish::Values),
            "mset" if a.len() % 2 == 1 => Action::Reply(arity(name)),
            "mset" => {
                let bucket = &self.strings;
                let puts = pairs(a).map(|(key, value)| (bucket.clone(), BucketOp::Put { key, value }));
                ops(puts.collect(), Finish::Ok)
            }
            "hset" if a.len().is_multiple_of(2) => Action::Reply(arity(name)),
            "hset" => {
                let bucket = a.remove(0);
                // Each put says whether its field is new (the store knows, as it writes).
                let puts = pairs(a).map(|(key, value)| (bucket.clone(), BucketOp::PutReporting { key, value }));
                ops(puts.collect(), Finish::NewFields)
            }
            "hget" | "hexists" => {
                let finish = if name == "hget" { Finish::Value } else { Finish::Found };
                let key = a.pop().unwrap_or_default();
                ops(vec![(a.swap_remove(0), get(key))], finish)
            }
            "hmget" | "hdel" => {
                let bucket = a.remove(0);
                match name {
                    "hmget" => each(&bucket, a, get, Finish::Values),
                    _ => each(&bucket, a, delete, Finish::Found),
                }
            }
            "hlen" | "hkeys" | "hgetall" => Action::List {
                bucket: a.swap_remove(0),
                listing: match name {
                    "hlen" => Listing::Len,
                    "hkeys" => Listing::Keys,
                    _ => Listing::All,
                },
            },
            "ping" => match a.len() {
                0 => Action::Reply(Frame::Simple("PONG")),
                1 => Action::Reply(Frame::Bulk(a.swap_remove(0))),
                _ => Action::Reply(arity(name)),
            },
            "echo" => Action::Reply(Frame::Bulk(a.swap_remove(0))),
            "quit" => Action::ReplyAndClose(Frame::Simple("OK")),
            "auth" => match a.len() {
                1 => authenticate(a.swap_remove(0), AfterAuth::Ok),
                2 if a[0] == b"default" => authenticate(a.swap_remove(1), AfterAuth::Ok),
                2 => Action::Reply(wrong_password()),
                _ => Action::Reply(syntax()),
            },
            "hello" => self.hello_command(a),
            "select" => Action::Reply(match integer(&a[0]) {
                Some(0) => Frame::Simple("OK"),
                Some(_) => Frame::err("DB index is out of range"),
                None => Frame::err("value is not an integer or out of range"),
            }),
            "client" => Action::Reply(self.client(a)),
            "command" => Action::Reply(command(a, self.protocol)),
            // kvnode has none of Redis's settings: `CONFIG GET` answers as Redis does for a
            // pattern that matches none (tools such as redis-benchmark ask, and go on).
            "config" => Action::Reply(match a[0].to_ascii_lowercase().as_slice() {
                b"get" if a.len() >= 2 => Frame::Map(Vec::new()),
                b"get" => arity("config|get"),
                _ => Frame::err(format!("unknown subcommand '{}'. Try CONFIG HELP.", lossy(&a[0], 128))),
            }),
            "info" => Action::Info {
                sections: a
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
                    .collect(),
            },
            // Every command of COMMANDS is matched above.
            _ => Action::Reply(Frame::err(format!("unknown command '{name}'"))),
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    fn hello_command(&mut self, args: Vec<Vec<u8>>) -> Action {
        let mut args = args.into_iter();
        let protocol = match args.next() {
            None => None,
            Some(v) => match integer(&v) {
                Some(2) => Some(Protocol::Resp2),
                Some(3) => Some(Protocol::Resp3),
                Some(_) => return Action::Reply(Frame::Error("NOPROTO unsupported protocol version".into())),
                None => return Action::Reply(Frame::err("Protocol version is not an integer or out of range")),
            },
        };
        let (mut password, mut name) = (None, None);
        while let Some(option) = args.next() {
            match option.to_ascii_lowercase().as_slice() {
                b"auth" => match (args.next(), args.next()) {
                    (Some(user), Some(pass)) if user == b"default" => password = Some(pass),
                    (Some(_), Some(_)) => return Action::Reply(wrong_password()),
                    _ => return Action::Reply(hello_syntax(&option)),
                },
                b"setname" => match args.next() {
                    Some(n) if valid_name(&n) => name = Some(n),
                    Some(_) => return Action::Reply(bad_name()),
                    None => return Action::Reply(hello_syntax(&option)),
                },
                _ => return Action::Reply(hello_syntax(&option)),
            }
        }
        let then = AfterAuth::Hello { protocol, name };
        match password {
            Some(password) => authenticate(password, then),
            None if self.authenticated => Action::Reply(self.authenticated(then)),
            None => Action::Reply(Frame::Error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into(),
            )),
        }
    }

    fn hello(&mut self, protocol: Option<Protocol>, name: Option<Vec<u8>>) -> Frame {
        if let Some(p) = protocol {
            self.protocol = p;
        }
        if name.is_some() {
            self.name = name;
        }
        let proto = match self.protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        Frame::Map(vec![
            (Frame::bulk("server"), Frame::bulk("kvnode")),
            (Frame::bulk("version"), Frame::bulk(REDIS_VERSION)),
            (Frame::bulk("kvnode_version"), Frame::bulk(env!("CARGO_PKG_VERSION"))),
            (Frame::bulk("proto"), Frame::Integer(proto)),
            (Frame::bulk("id"), Frame::Integer(self.id as i64)),
            (Frame::bulk("mode"), Frame::bulk("standalone")),
            (Frame::bulk("role"), Frame::bulk("master")),
            (Frame::bulk("modules"), Frame::Array(Vec::new())),
        ])
    }

    /// `CLIENT SETNAME|GETNAME|SETINFO|ID`.
    fn client(&mut self, mut args: Vec<Vec<u8>>) -> Frame {
        let sub = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let wrong = || arity(&format!("client|{sub}"));
        match (sub.as_str(), args.len()) {
            ("setname", 2) if valid_name(&args[1]) => {
                self.name = Some(args.swap_remove(1)).filter(|n| !n.is_empty());
                Frame::Simple("OK")
            }
            ("setname", 2) => bad_name(),
            ("getname", 1) => self.name.clone().map_or(Frame::Null, Frame::Bulk),
            ("id", 1) => Frame::Integer(self.id as i64),
            ("setinfo", 3) => match args[1].to_ascii_lowercase().as_slice() {
                b"lib-name" | b"lib-ver" => Frame::Simple("OK"),
                _ => Frame::err(format!("Unrecognized option '{}'", lossy(&args[1], 128))),
            },
            ("setname" | "getname" | "id" | "setinfo", _) => wrong(),
            _ => Frame::err(format!(
                "unknown subcommand '{}'. Try CLIENT HELP.",
                lossy(&args[0], 128)
            )),
        }
    }

    /// The reply to `INFO [section ...]`: `server`, `clients` and `keyspace` (all three when
    /// none, `all` or `default` is asked for).
    pub fn info(&self, sections: &[String], stats: &InfoStats) -> Frame {
        let mut text = String::new();
        if info_wants(sections, "server") {
            text.push_str(&format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nkvnode_version:{}\r\nkvnode_node:{}\r\nredis_mode:standalone\r\nos:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                stats.node,
                std::env::consts::OS,
                std::process::id(),
                stats.port,
                stats.uptime_secs,
            ));
        }
        if info_wants(sections, "clients") {
            text.push_str(&format!("# Clients\r\nconnected_clients:{}\r\n\r\n", stats.clients));
        }
        if info_wants(sections, "keyspace") {
            text.push_str("# Keyspace\r\n");
            if let Some(keys) = stats.keys.filter(|&k| k > 0) {
                text.push_str(&format!("db0:keys={keys},expires=0,avg_ttl=0\r\n"));
            }
        }
        // Sections are separated by an empty line, and the last line ends like the others.
        let text = format!("{}\r\n", text.trim_end());
        Frame::Bulk(text.into_bytes())
    }
}

/// Whether `INFO` with these sections shows `section`.
pub fn info_wants(sections: &[String], section: &str) -> bool {
    sections.is_empty()
        || sections
            .iter()
            .any(|s| s == section || s == "all" || s == "default" || s == "everything")
}

fn authenticate(password: Vec<u8>, then: AfterAuth) -> Action {
    Action::Authenticate {
        password: Bytes::from(password),
        then,
    }
}

fn hello_syntax(option: &[u8]) -> Frame {
    Frame::err(format!("Syntax error in HELLO option '{}'", lossy(option, 128)))
}

fn bad_name() -> Frame {
    Frame::err("Client names cannot contain spaces, newlines or special characters.")
}

/// A client name as Redis takes one: printable ASCII without spaces (or empty, to clear it).
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

fn integer(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn ops(ops: Vec<(Vec<u8>, BucketOp)>, finish: Finish) -> Action {
    Action::Ops { ops, finish }
}

fn get(key: Vec<u8>) -> BucketOp {
    BucketOp::Get { key }
}

fn delete(key: Vec<u8>) -> BucketOp {
    BucketOp::Delete { key }
}

/// One operation per key, all on `bucket`.
fn each(bucket: &[u8], keys: Vec<Vec<u8>>, op: fn(Vec<u8>) -> BucketOp, finish: Finish) -> Action {
    ops(keys.into_iter().map(|key| (bucket.to_vec(), op(key))).collect(), finish)
}

fn pairs(args: Vec<Vec<u8>>) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
    let mut args = args.into_iter();
    std::iter::from_fn(move || Some((args.next()?, args.next()?)))
}

/// `SET key value`; the options need expiries or conditions kvnode does not have.
fn set(bucket: Vec<u8>, mut a: Vec<Vec<u8>>) -> Action {
    const OPTIONS: &[&[u8]] = &[b"ex", b"px", b"exat", b"pxat", b"nx", b"xx", b"keepttl", b"get"];
    if let Some(option) = a.get(2) {
        return Action::Reply(if OPTIONS.contains(&option.to_ascii_lowercase().as_slice()) {
            Frame::err(format!(
                "SET option '{}' is not supported by kvnode (no expiries, no conditional writes)",
                lossy(option, 16)
            ))
        } else {
            syntax()
        });
    }
    let value = a.swap_remove(1);
    let key = a.swap_remove(0);
    ops(vec![(bucket, BucketOp::Put { key, value })], Finish::Ok)
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
