//! The client subcommands: build a request, send it through `client`, print the answer.

use std::io::{BufRead, Read};
use std::os::unix::ffi::OsStringExt;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::cli::{ChatArgs, Command, GetArgs, KeyArgs, PingArgs, PutArgs, SecretAction};
use crate::client::{self, Client, ClientError, Settings};
use crate::names::NodeRef;
use crate::output::{Output, bytes_field, printable, printable_value};
use crate::wire::{self, BucketOp, BucketRequest, ChatMessage, MAX_VALUE, Reply, Request};

/// Runs one client subcommand to completion.
pub async fn run(command: Command, settings: Settings, out: &mut Output) -> Result<(), ClientError> {
    let timeout = settings.timeout;
    run_within(command, settings, out).await.map_err(|e| e.waited(timeout))
}

async fn run_within(command: Command, mut settings: Settings, out: &mut Output) -> Result<(), ClientError> {
    let deadline = Instant::now() + settings.timeout;
    match command {
        Command::Start(_) => unreachable!("`start` is not a client command"),
        Command::Create(args) => {
            settings.via = via_or_env(args.via.via.clone(), &settings)?;
            create(arg_bytes(args.bucket), &settings, deadline, out).await
        }
        Command::Put(args) => {
            settings.via = via_or_env(args.via.via.clone(), &settings)?;
            put(args, &settings, deadline, out).await
        }
        Command::Get(args) => {
            settings.via = via_or_env(args.key.via.via.clone(), &settings)?;
            get(args, &settings, deadline, out).await
        }
        Command::Delete(args) => {
            settings.via = via_or_env(args.via.via.clone(), &settings)?;
            delete(args, &settings, deadline, out).await
        }
        Command::Keys(args) => {
            settings.via = via_or_env(args.via.via.clone(), &settings)?;
            let bucket = arg_bytes(args.bucket);
            wire::check_bucket(&bucket).map_err(ClientError::Usage)?;
            connected(&settings, None, deadline, async |client| {
                keys(client, bucket, out).await
            })
            .await
        }
        Command::Route(args) => {
            settings.via = via_or_env(args.via.via.clone(), &settings)?;
            crate::route::run(args, &settings, deadline, out).await
        }
        Command::Members(args) => {
            settings.via = via_or_env(args.via, &settings)?;
            members(&settings, deadline, out).await
        }
        Command::Stats(args) => {
            settings.via = via_or_env(args.via, &settings)?;
            crate::stats::run(&settings, deadline, out).await
        }
        Command::Watch(args) => {
            settings.via = via_or_env(args.via.via.clone(), &settings)?;
            crate::watch::run(args, &settings, out).await
        }
        Command::Ping(args) => ping(args, &settings, deadline, out).await,
        Command::Stop(args) => crate::stop::run(args, &settings, deadline, out).await,
        Command::Chat(args) => chat(args, &settings, deadline, out).await,
        Command::Bench(args) => {
            settings.via = via_or_env(args.via.via.clone(), &settings)?;
            crate::bench::run(args.settings(), &settings, out).await
        }
        Command::Secret(args) => {
            let via = match &args.action {
                SecretAction::List(v) => v.via.clone(),
                SecretAction::Install(a) | SecretAction::Use(a) | SecretAction::Remove(a) => a.via.via.clone(),
            };
            settings.via = via_or_env(via, &settings)?;
            crate::secret_cmd::run(args, &settings, deadline, out).await
        }
        Command::Keygen(args) => crate::secret_cmd::keygen(args, out),
    }
}

/// Prints the keys of `bucket`, asked of `client` in pieces: a bucket's key list may be
/// larger than one answer carries. (Not a snapshot: keys written meanwhile may or may not
/// be listed, as with Redis's SCAN.)
async fn keys(client: &Client, bucket: Vec<u8>, out: &mut Output) -> Result<(), ClientError> {
    let mut after = None;
    loop {
        let op = BucketOp::Keys { after: after.take() };
        let reply = client.call(bucket_request(bucket.clone(), op)).await?;
        let Reply::Keys { keys, more } = reply else {
            return unexpected(&reply);
        };
        for key in &keys {
            if out.is_json() {
                let mut o = Map::new();
                bytes_field(&mut o, "key", key);
                out.object(Value::Object(o));
            } else {
                out.line(&printable(key));
            }
        }
        match keys.into_iter().last() {
            Some(last) if more => after = Some(last),
            _ => return Ok(()),
        }
    }
}

/// `--via`, else `KVNODE_VIA` (read only then: a bad one matters only where it is used).
fn via_or_env(flag: Option<NodeRef>, settings: &Settings) -> Result<Option<NodeRef>, ClientError> {
    match (flag, &settings.via_env) {
        (Some(via), _) => Ok(Some(via)),
        (None, Some(env)) => env
            .parse()
            .map(Some)
            .map_err(|e| ClientError::Usage(format!("invalid KVNODE_VIA: {e}"))),
        (None, None) => Ok(None),
    }
}

pub(crate) fn arg_bytes(arg: std::ffi::OsString) -> Vec<u8> {
    arg.into_vec()
}

pub(crate) fn bucket_request(bucket: Vec<u8>, op: BucketOp) -> Request {
    Request::Bucket(BucketRequest {
        bucket,
        op,
        path: Vec::new(),
    })
}

pub(crate) fn unexpected<T>(reply: &Reply) -> Result<T, ClientError> {
    Err(ClientError::Unexpected {
        node: "the node".into(),
        answer: format!("{reply:?}"),
    })
}

/// Resolves the node, connects, asks one thing, and closes.
pub(crate) async fn ask(settings: &Settings, deadline: Instant, request: Request) -> Result<Reply, ClientError> {
    connected(settings, None, deadline, async |client| client.call(request).await).await
}

/// Resolves `node` (`None`: the command's node, `--via` or the only one running), connects,
/// runs `work` on the connection, and closes it.
pub(crate) async fn connected<T>(
    settings: &Settings,
    node: Option<&NodeRef>,
    deadline: Instant,
    work: impl AsyncFnOnce(&Client) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let target = match node {
        Some(node) => client::resolve_ref(node, settings, deadline).await?,
        None => client::resolve(settings, deadline).await?,
    };
    let client = Client::connect(settings, &target, deadline).await?;
    let done = work(&client).await;
    client.close().await;
    done
}

async fn create(bucket: Vec<u8>, settings: &Settings, deadline: Instant, out: &mut Output) -> Result<(), ClientError> {
    wire::check_bucket(&bucket).map_err(ClientError::Usage)?;
    let reply = ask(settings, deadline, bucket_request(bucket.clone(), BucketOp::Create)).await?;
    let Reply::Done = reply else { return unexpected(&reply) };
    if out.is_json() {
        let mut o = Map::new();
        o.insert("ok".into(), Value::Bool(true));
        bytes_field(&mut o, "bucket", &bucket);
        out.object(Value::Object(o));
    }
    Ok(())
}

async fn put(args: PutArgs, settings: &Settings, deadline: Instant, out: &mut Output) -> Result<(), ClientError> {
    let (bucket, key) = (arg_bytes(args.bucket), arg_bytes(args.key));
    wire::check_bucket(&bucket).map_err(ClientError::Usage)?;
    wire::check_key(&key).map_err(ClientError::Usage)?;
    let (value, deadline) = if args.value == "-" {
        // However long the producer on stdin takes is not the node's time: --timeout
        // bounds the request, from once the value is read.
        let value = read_stdin_value()?;
        (value, Instant::now() + settings.timeout)
    } else {
        (arg_bytes(args.value), deadline)
    };
    wire::check_value(&value).map_err(ClientError::Usage)?;
    let reply = ask(
        settings,
        deadline,
        bucket_request(
            bucket.clone(),
            BucketOp::Put {
                key: key.clone(),
                value,
            },
        ),
    )
    .await?;
    let Reply::Done = reply else { return unexpected(&reply) };
    if out.is_json() {
        let mut o = Map::new();
        o.insert("ok".into(), Value::Bool(true));
        bytes_field(&mut o, "bucket", &bucket);
        bytes_field(&mut o, "key", &key);
        out.object(Value::Object(o));
    }
    Ok(())
}

/// The value from stdin, read as bytes; refused past the value limit without reading it all.
fn read_stdin_value() -> Result<Vec<u8>, ClientError> {
    let mut value = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_VALUE as u64 + 1)
        .read_to_end(&mut value)
        .map_err(|e| ClientError::Usage(format!("cannot read the value from stdin: {e}")))?;
    if value.len() > MAX_VALUE {
        return Err(ClientError::Usage(format!(
            "the value on stdin is over the limit of {MAX_VALUE} bytes"
        )));
    }
    Ok(value)
}

async fn get(args: GetArgs, settings: &Settings, deadline: Instant, out: &mut Output) -> Result<(), ClientError> {
    let (bucket, key) = (arg_bytes(args.key.bucket), arg_bytes(args.key.key));
    wire::check_bucket(&bucket).map_err(ClientError::Usage)?;
    wire::check_key(&key).map_err(ClientError::Usage)?;
    let reply = ask(
        settings,
        deadline,
        bucket_request(bucket.clone(), BucketOp::Get { key: key.clone() }),
    )
    .await?;
    let Reply::Value(value) = reply else {
        return unexpected(&reply);
    };
    if out.is_json() {
        let mut o = Map::new();
        bytes_field(&mut o, "bucket", &bucket);
        bytes_field(&mut o, "key", &key);
        bytes_field(&mut o, "value", &value);
        out.object(Value::Object(o));
    } else if args.raw {
        out.bytes(&value);
    } else {
        out.line(&printable_value(&value));
    }
    Ok(())
}

async fn delete(args: KeyArgs, settings: &Settings, deadline: Instant, out: &mut Output) -> Result<(), ClientError> {
    let (bucket, key) = (arg_bytes(args.bucket), arg_bytes(args.key));
    wire::check_bucket(&bucket).map_err(ClientError::Usage)?;
    wire::check_key(&key).map_err(ClientError::Usage)?;
    let reply = ask(
        settings,
        deadline,
        bucket_request(bucket.clone(), BucketOp::Delete { key: key.clone() }),
    )
    .await?;
    let Reply::Done = reply else { return unexpected(&reply) };
    if out.is_json() {
        let mut o = Map::new();
        o.insert("ok".into(), Value::Bool(true));
        bytes_field(&mut o, "bucket", &bucket);
        bytes_field(&mut o, "key", &key);
        out.object(Value::Object(o));
    }
    Ok(())
}

async fn members(settings: &Settings, deadline: Instant, out: &mut Output) -> Result<(), ClientError> {
    let reply = ask(settings, deadline, Request::Members).await?;
    let Reply::Members(mut members) = reply else {
        return unexpected(&reply);
    };
    members.sort_by(|a, b| a.name.cmp(&b.name));
    // With replicated ranges in the table, how many each live member leads and follows
    // (asked of each); without, the output is as it always was.
    let reply = ask(settings, deadline, Request::Table).await?;
    let Reply::Table(table) = reply else {
        return unexpected(&reply);
    };
    let roles = match table.entries().iter().any(|e| e.is_replicated()) {
        true => Some(ranges_held(&members, settings, deadline).await),
        false => None,
    };
    let role = |name: &str, which: &str| -> Option<u64> {
        let counts = roles.as_ref()?.get(name)?;
        counts.iter().find(|l| l.label == which).map(|l| l.count)
    };
    if out.is_json() {
        for m in &members {
            let mut o = json!({
                "name": m.name.as_str(), "addr": m.addr, "state": m.state.as_str(),
                "incarnation": m.incarnation, "last_seen_ms": m.last_seen_ms,
                "last_change_ms": m.last_change_ms,
            });
            if roles.is_some() {
                o["leads"] = json!(role(m.name.as_str(), "leader"));
                o["follows"] = json!(role(m.name.as_str(), "follower"));
            }
            out.object(o);
        }
        return Ok(());
    }
    let width = members.iter().map(|m| m.name.as_str().len()).max().unwrap_or(4).max(4);
    let addr_width = members.iter().map(|m| m.addr.len()).max().unwrap_or(7).max(7);
    let ranges_head = if roles.is_some() { "  LEADS  FOLLOWS" } else { "" };
    out.line(&format!(
        "{:width$}  {:addr_width$}  {:7}  {:>11}{ranges_head}  LAST SEEN",
        "NAME", "ADDRESS", "STATE", "INCARNATION"
    ));
    for m in &members {
        // Heard of only through other members so far: not seen.
        let seen = m
            .last_seen_ms
            .map_or_else(|| "-".to_string(), |ms| format!("{} ago", ago(ms)));
        let count = |which| role(m.name.as_str(), which).map_or_else(|| "-".to_string(), |n| n.to_string());
        let ranges = match roles {
            Some(_) => format!("  {:>5}  {:>7}", count("leader"), count("follower")),
            None => String::new(),
        };
        out.line(&format!(
            "{:width$}  {:addr_width$}  {:7}  {:>11}{ranges}  {seen}",
            m.name.as_str(),
            m.addr,
            m.state.as_str(),
            m.incarnation,
        ));
    }
    Ok(())
}

/// The replicated ranges each live member holds, by role, as it says itself (`kvnode
/// stats`'s figures), asked of all at once; a member that does not answer by the deadline is
/// left out (shown as `-`).
async fn ranges_held(
    members: &[wire::MemberInfo],
    settings: &Settings,
    deadline: Instant,
) -> std::collections::HashMap<String, Vec<crate::metrics::Labelled>> {
    let asks = members
        .iter()
        .filter(|m| m.state == crate::gossip::State::Alive)
        .filter_map(|m| Some((m.name.clone(), m.addr.parse().ok()?)))
        .map(|(name, addr)| async move {
            let node = NodeRef::NameAt(name.clone(), addr);
            let reply = connected(settings, Some(&node), deadline, async |c| c.call(Request::Stats).await).await;
            match reply {
                Ok(Reply::Stats(report)) => Some((name.to_string(), report.now.ranges)),
                _ => None,
            }
        });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn ago(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..120_000 => format!("{:.1}s", ms as f64 / 1000.0),
        120_000..7_200_000 => format!("{}m", ms / 60_000),
        _ => format!("{}h", ms / 3_600_000),
    }
}

/// `pong` when the node answers, `pang` when it does not (like Erlang's `net_adm:ping`, a wrong
/// cookie included): exit 3 (SPEC §1), or 4 when it refused our secret (§3: every client);
/// the reason is said once, as it is. A mistake of our own (no usable secret) pings nobody:
/// it is the usage error any command gives, with no pang.
async fn ping(args: PingArgs, settings: &Settings, deadline: Instant, out: &mut Output) -> Result<(), ClientError> {
    let result = connected(settings, Some(&args.node), deadline, async |client| {
        client.call(Request::Ping).await
    })
    .await
    .map_err(|e| e.waited(settings.timeout));
    match result {
        Ok(Reply::Pong { name }) => {
            if out.is_json() {
                out.object(json!({ "node": name.as_str(), "answer": "pong" }));
            } else {
                out.line("pong");
            }
            Ok(())
        }
        Ok(other) => unexpected(&other),
        Err(e @ (ClientError::Secret(_) | ClientError::Usage(_) | ClientError::WhichNode { .. })) => Err(e),
        Err(e) => {
            // With --json, the pang is the error object itself (one line for one outcome).
            if !out.is_json() {
                out.line("pang");
            }
            Err(ClientError::Pang {
                node: args.node.to_string(),
                reason: Box::new(e),
            })
        }
    }
}

/// A chat message as given (stdin's line `line`, if from there), if it can be one: not
/// empty, and within the node's limit (said here with its size, before anything is sent).
fn chat_text(text: String, line: Option<usize>) -> Result<String, ClientError> {
    let what = line.map_or_else(|| "the message".to_string(), |n| format!("line {n} of stdin"));
    if text.trim().is_empty() {
        // As from stdin, where a blank line is no message.
        return Err(ClientError::Usage(format!("{what} is blank; give some text")));
    }
    if text.len() > wire::MAX_CHAT {
        return Err(ClientError::Usage(format!(
            "{what} is {} bytes; chat messages are at most {} bytes{}",
            text.len(),
            wire::MAX_CHAT,
            if line.is_some() {
                " (nothing from it on was sent)"
            } else {
                ""
            }
        )));
    }
    Ok(text)
}

/// Sends one message, or one per stdin line, to the chat target; prints any reply.
async fn chat(args: ChatArgs, settings: &Settings, deadline: Instant, out: &mut Output) -> Result<(), ClientError> {
    let message = args.message.clone().map(|text| chat_text(text, None)).transpose()?;
    // Through --via when given; else straight to the addressee.
    let via = args.via.as_ref().unwrap_or(&args.node);
    connected(settings, Some(via), deadline, async |client| {
        let to = match (&args.node, &args.via) {
            (NodeRef::Name(n) | NodeRef::NameAt(n, _), _) => n.clone(),
            (NodeRef::Addr(_), None) => client.node.parse().map_err(|e| ClientError::Usage(format!("{e}")))?,
            (NodeRef::Addr(a), Some(_)) => {
                return Err(ClientError::Usage(format!(
                    "with --via, name the addressee (NAME or NAME@{a}), not only its address"
                )));
            }
        };
        let from = args.as_name.clone().unwrap_or_else(|| match &args.via {
            Some(_) => client.node.clone(),
            None => settings.name.clone(),
        });
        if from.is_empty() || from.len() > 128 {
            return Err(ClientError::Usage("--as takes a name of 1 to 128 bytes".into()));
        }
        let send = |text: String| {
            let msg = ChatMessage {
                to: to.clone(),
                at: match &args.node {
                    NodeRef::NameAt(_, at) => Some(at.to_string()),
                    _ => None,
                },
                from: from.clone(),
                text,
                path: Vec::new(),
            };
            client.call_within(Request::Chat(msg), settings.timeout)
        };
        let print_reply = |reply: Reply, out: &mut Output| match reply {
            Reply::ChatAck { reply: Some(line) } => {
                if out.is_json() {
                    out.object(json!({ "delivered": true, "reply": { "from": line.from, "text": line.text } }));
                } else {
                    out.line(&format!(
                        "{}: {}",
                        crate::names::escape_text(&line.from),
                        crate::names::escape_text(&line.text)
                    ));
                }
                Ok(())
            }
            Reply::ChatAck { reply: None } => {
                if out.is_json() {
                    out.object(json!({ "delivered": true }));
                }
                Ok(())
            }
            other => unexpected(&other),
        };
        match message {
            Some(text) => send(text).await.and_then(|reply| print_reply(reply, out)),
            None => {
                // One message per line, read on a blocking thread so replies print as they come.
                let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(16);
                std::thread::spawn(move || {
                    for line in std::io::stdin().lock().lines() {
                        if tx.blocking_send(line).is_err() {
                            break;
                        }
                    }
                });
                let mut result = Ok(());
                let mut n = 0;
                while let Some(line) = rx.recv().await {
                    n += 1;
                    let text = match line {
                        // A blank line is no message.
                        Ok(l) if l.trim().is_empty() => continue,
                        Ok(l) => chat_text(l, Some(n)),
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(ClientError::Usage(format!(
                            "line {n} of stdin is not UTF-8 text, and chat messages are text; nothing from it on was sent"
                        ))),
                        Err(e) => Err(ClientError::Usage(format!("cannot read line {n} of stdin: {e}"))),
                    };
                    if let Err(e) = async { send(text?).await.and_then(|r| print_reply(r, out)) }.await {
                        result = Err(e);
                        break;
                    }
                }
                result
            }
        }
    })
    .await
}
