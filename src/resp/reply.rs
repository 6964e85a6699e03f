//! Replies made from the answers of bucket operations, and `COMMAND`'s description of the
//! commands. Pure.

use super::command::{Answer, Finish, Listing};
use super::encode::{Frame, Protocol};
use crate::wire::{RemoteError, Reply};

/// An answer that says "not there": nil, or not counted.
fn absent(answer: &Answer) -> bool {
    matches!(
        answer,
        Err(RemoteError::KeyNotFound { .. } | RemoteError::BucketNotFound { .. })
    )
}

/// kvnode's one-line reason as an `ERR` reply: routing failures, an unreachable owner, a
/// deadline, a key over the limits.
pub fn failure(error: &RemoteError) -> Frame {
    Frame::err(error)
}

impl Finish {
    /// The reply from the answers to an [`super::Action::Ops`], in the order placed. The first
    /// failure (other than "not there") is the reply: what succeeded before it stays done, as
    /// with a Redis command that fails half-way through a pipeline.
    pub fn reply(&self, answers: Vec<Answer>) -> Frame {
        if let Some(Err(e)) = answers.iter().find(|a| a.is_err() && !absent(a)) {
            return failure(e);
        }
        match self {
            Finish::Ok => Frame::Simple("OK"),
            Finish::Value => answers.into_iter().next().map_or(Frame::Null, value),
            Finish::Values => Frame::Array(answers.into_iter().map(value).collect()),
            Finish::Found => Frame::Integer(answers.iter().filter(|a| a.is_ok()).count() as i64),
            Finish::NewFields => Frame::Integer(
                answers
                    .iter()
                    .filter(|a| matches!(a, Ok(Reply::Stored { new: true })))
                    .count() as i64,
            ),
        }
    }
}

fn value(answer: Answer) -> Frame {
    match answer {
        Ok(Reply::Value(v)) => Frame::Bulk(v.into_vec()),
        _ => Frame::Null,
    }
}

impl Listing {
    /// The reply to `HLEN`, `HKEYS` or `HGETALL` from the listed keys and (`HGETALL`) the
    /// answers to reading each; a field deleted between the listing and its read is left out.
    pub fn reply(self, keys: Vec<Vec<u8>>, values: Vec<Answer>) -> Frame {
        match self {
            Listing::Len => Frame::Integer(keys.len() as i64),
            Listing::Keys => Frame::Array(keys.into_iter().map(Frame::Bulk).collect()),
            Listing::All => {
                if let Some(Err(e)) = values.iter().find(|a| a.is_err() && !absent(a)) {
                    return failure(e);
                }
                let pairs = keys.into_iter().zip(values).filter_map(|(key, answer)| match answer {
                    Ok(Reply::Value(v)) => Some((Frame::Bulk(key), Frame::Bulk(v.into_vec()))),
                    _ => None,
                });
                Frame::Map(pairs.collect())
            }
        }
    }
}

/// Each command `COMMAND` describes: name, arity, flags, first key, last key, key step.
type Described = (&'static str, i64, &'static [&'static str], i64, i64, i64);
const DESCRIBED: &[Described] = &[
    ("get", 2, &["readonly", "fast"], 1, 1, 1),
    ("set", -3, &["write", "denyoom"], 1, 1, 1),
    ("del", -2, &["write"], 1, -1, 1),
    ("exists", -2, &["readonly", "fast"], 1, -1, 1),
    ("mget", -2, &["readonly", "fast"], 1, -1, 1),
    ("mset", -3, &["write", "denyoom"], 1, -1, 2),
    ("hset", -4, &["write", "denyoom", "fast"], 1, 1, 1),
    ("hget", 3, &["readonly", "fast"], 1, 1, 1),
    ("hmget", -3, &["readonly", "fast"], 1, 1, 1),
    ("hdel", -3, &["write", "fast"], 1, 1, 1),
    ("hexists", 3, &["readonly", "fast"], 1, 1, 1),
    ("hlen", 2, &["readonly", "fast"], 1, 1, 1),
    ("hkeys", 2, &["readonly"], 1, 1, 1),
    ("hgetall", 2, &["readonly"], 1, 1, 1),
    ("ping", -1, &["fast"], 0, 0, 0),
    ("echo", 2, &["fast"], 0, 0, 0),
    (
        "auth",
        -2,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        0,
        0,
        0,
    ),
    (
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        0,
        0,
        0,
    ),
    ("select", 2, &["loading", "stale", "fast"], 0, 0, 0),
    (
        "quit",
        -1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        0,
        0,
        0,
    ),
    ("client", -2, &["noscript", "loading", "stale"], 0, 0, 0),
    ("command", -1, &["loading", "stale"], 0, 0, 0),
    ("info", -1, &["loading", "stale"], 0, 0, 0),
    ("config", -2, &["admin", "noscript", "loading", "stale"], 0, 0, 0),
];

fn describe(&(name, arity, flags, first, last, step): &Described) -> Frame {
    Frame::Array(vec![
        Frame::bulk(name),
        Frame::Integer(arity),
        Frame::Array(flags.iter().map(|f| Frame::Simple(f)).collect()),
        Frame::Integer(first),
        Frame::Integer(last),
        Frame::Integer(step),
        Frame::Array(Vec::new()),
        Frame::Array(Vec::new()),
        Frame::Array(Vec::new()),
        Frame::Array(Vec::new()),
    ])
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND DOCS [name...]` (no docs: an
/// empty map, which clients such as `redis-cli` take as "no hints").
pub fn command(args: Vec<Vec<u8>>, _protocol: Protocol) -> Frame {
    let Some(sub) = args.first() else {
        return Frame::Array(DESCRIBED.iter().map(describe).collect());
    };
    let sub = String::from_utf8_lossy(sub).to_ascii_lowercase();
    match sub.as_str() {
        "count" if args.len() == 1 => Frame::Integer(DESCRIBED.len() as i64),
        "info" => Frame::Array(
            args[1..]
                .iter()
                .map(|name| {
                    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                    DESCRIBED.iter().find(|d| d.0 == name).map_or(Frame::Null, describe)
                })
                .collect(),
        ),
        "docs" => Frame::Map(Vec::new()),
        "count" => Frame::err("wrong number of arguments for 'command|count' command"),
        _ => Frame::err(format!(
            "unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&args[0])
        )),
    }
}
