//! `kvnode route`: the owner of a bucket (and its range's replicas), the table a node holds,
//! or a new table for the cluster (a compare-and-set through the cluster's coordinator).

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::cli::RouteArgs;
use crate::client::{Client, ClientError, Settings};
use crate::commands::{arg_bytes, ask, bucket_request, connected, unexpected};
use crate::config::TableSpec;
use crate::output::{Output, bytes_field};
use crate::routing::RoutingTable;
use crate::wire::{self, BucketOp, Reply, Request};

pub(crate) async fn run(
    args: RouteArgs,
    settings: &Settings,
    deadline: Instant,
    out: &mut Output,
) -> Result<(), ClientError> {
    if let Some(bucket) = args.bucket {
        let bucket = arg_bytes(bucket);
        wire::check_bucket(&bucket).map_err(ClientError::Usage)?;
        let request = bucket_request(bucket.clone(), BucketOp::Route);
        let (reply, state) = connected(settings, None, deadline, async |client| {
            let reply = client.call(request).await?;
            let state = owner_state(client, &reply).await;
            Ok((reply, state))
        })
        .await?;
        let Reply::Owner { node, path, replicas } = reply else {
            return unexpected(&reply);
        };
        if out.is_json() {
            let mut o = Map::new();
            bytes_field(&mut o, "bucket", &bucket);
            o.insert("owner".into(), json!(node.as_str()));
            // Issue 25's fields: every node holding the range, and the one that leads it,
            // which is the owner for a one-node range (and, until replicated ranges are
            // built, for every range: no table names more than one node yet).
            o.insert(
                "replicas".into(),
                json!(replicas.iter().map(|n| n.as_str()).collect::<Vec<_>>()),
            );
            o.insert("leader".into(), json!(node.as_str()));
            o.insert(
                "path".into(),
                json!(path.iter().map(|n| n.as_str()).collect::<Vec<_>>()),
            );
            o.insert("hops".into(), json!(path.len().saturating_sub(1)));
            o.insert("state".into(), json!(state));
            out.object(Value::Object(o));
        } else if replicas.len() > 1 {
            // `foo* bar baz`: the range's nodes, the one answering for it marked.
            let shown: Vec<String> = replicas
                .iter()
                .map(|n| if *n == node { format!("{n}*") } else { n.to_string() })
                .collect();
            out.line(&shown.join(" "));
        } else {
            out.line(node.as_str());
            if state != "alive" {
                // The path starts at the node asked, which answered from its table.
                let asked = path.first().map_or("the node asked", |n| n.as_str());
                tracing::warn!(
                    "{node}, the owner of this bucket, {} (so says {asked}'s gossip membership); requests for the bucket fail (exit 3) until it is back",
                    match state.as_str() {
                        "unknown" => "is not a member",
                        state => crate::gossip::said(state),
                    }
                );
            }
        }
        return Ok(());
    }
    if args.balance {
        return connected(settings, None, deadline, async |client| {
            balance(client, &args, settings, out).await
        })
        .await;
    }
    let Some(spec) = &args.set else {
        let reply = ask(settings, deadline, Request::Table).await?;
        let Reply::Table(table) = reply else {
            return unexpected(&reply);
        };
        if args.status {
            let progress = Progress::gather(&table, settings, deadline).await;
            print_moves(&table, &progress, out);
        } else {
            print_table(&table, out);
        }
        return Ok(());
    };
    let entries = TableSpec::parse([spec.as_str()])
        .map_err(|e| ClientError::Usage(format!("invalid --set: {e}")))?
        .0;
    connected(settings, None, deadline, async |client| {
        let table = set_table(client, entries.clone(), &args, out).await?;
        match table {
            Some(table) if (!table.moves().is_empty() || !table.then().is_empty()) && !args.no_wait => {
                let table = wait_for_moves(client, table, &entries, settings, args.wait_for).await?;
                print_table(&table, out);
            }
            Some(table) => print_table(&table, out),
            None => {}
        }
        Ok(())
    })
    .await
}

/// `route --balance`: the balanced table over the live members (`RoutingTable::balanced`),
/// its plan printed (a line per range that moves; `--json`: one object each), then set with
/// compare-and-set on the version read, and waited for as `--set` is.
async fn balance(client: &Client, args: &RouteArgs, settings: &Settings, out: &mut Output) -> Result<(), ClientError> {
    let reply = client.call(Request::Table).await?;
    let Reply::Table(table) = reply else {
        return unexpected(&reply);
    };
    let reply = client.call(Request::Members).await?;
    let Reply::Members(members) = reply else {
        return unexpected(&reply);
    };
    let live: Vec<crate::names::NodeName> = members.iter().filter(|m| m.is_live()).map(|m| m.name.clone()).collect();
    let wanted = table.balanced(&live, args.replicas).map_err(ClientError::Usage)?;
    let pairs: Vec<_> = table.entries().iter().zip(&wanted).collect();
    // What each range that moves holds, as its first node says (asked all at once).
    let sizes = futures_util::future::join_all(pairs.iter().map(|(old, new)| async {
        if old.same_nodes(new) {
            return None;
        }
        let node = crate::names::NodeRef::Name(old.preferred_leader().clone());
        let request = Request::RangeSize {
            first: old.first,
            last: old.last,
        };
        let deadline = Instant::now() + settings.timeout;
        match connected(settings, Some(&node), deadline, async |c| c.call(request).await).await {
            Ok(Reply::RangeSize { keys, bytes }) => Some((keys, bytes)),
            _ => None,
        }
    }))
    .await;
    let (mut moving, mut total) = (0, (0, 0));
    for ((old, new), size) in pairs.iter().zip(&sizes) {
        let moves = !old.same_nodes(new);
        moving += usize::from(moves);
        if let Some((k, b)) = size {
            total = (total.0 + k, total.1 + b);
        }
        if out.is_json() {
            let nodes =
                |e: &crate::routing::Entry| e.replicas().iter().map(|n| n.as_str().to_string()).collect::<Vec<_>>();
            let mut o = json!({ "range": old.range(), "from": nodes(old), "to": nodes(new), "moves": moves });
            if let Some((keys, bytes)) = size {
                o["keys"] = json!(keys);
                o["bytes"] = json!(bytes);
            }
            out.object(o);
        } else if moves {
            let size = size.map_or("size unknown".to_string(), |(k, b)| amount(k, b));
            out.line(&format!("{}: {} -> {} ({size})", old.range(), old, new));
        } else if old != new {
            out.line(&format!("{}: {} -> {} (first named only)", old.range(), old, new));
        }
    }
    if !out.is_json() {
        out.line(&format!(
            "# {moving} of {} ranges move ({}), over {} live members",
            wanted.len(),
            amount(total.0, total.1),
            live.len()
        ));
    }
    if args.dry_run || wanted.as_slice() == table.entries() {
        return Ok(());
    }
    let request = Request::SetTableIf {
        entries: wanted.clone(),
        expected: table.version(),
        forwarded: false,
        force: false,
        call_off: false,
    };
    let reply = client.call(request).await?;
    let Reply::Table(set) = reply else {
        return unexpected(&reply);
    };
    if !set.moves().is_empty() && !args.no_wait {
        let done = wait_for_moves(client, set, &wanted, settings, args.wait_for).await?;
        if !out.is_json() {
            out.line(&format!("# balanced: table version {}", done.version()));
        }
    }
    Ok(())
}

/// Waits until every entry of `wanted` is in the table the node holds, with its nodes and
/// no move under way, and the table has nothing more to follow (a split or merge takes two
/// steps: `RoutingTable::then`), polling (a line on a terminal as each range arrives);
/// exit 3 past `wait_for`, the moves going on.
async fn wait_for_moves(
    client: &Client,
    set: RoutingTable,
    wanted: &[crate::routing::Entry],
    settings: &Settings,
    wait_for: std::time::Duration,
) -> Result<RoutingTable, ClientError> {
    use std::io::IsTerminal;
    let started = Instant::now();
    let until = started + wait_for;
    let tty = std::io::stderr().is_terminal();
    let placed = |table: &RoutingTable, m: &crate::routing::Entry| {
        table.move_of(m.first, m.last).is_none()
            && table
                .entries()
                .iter()
                .any(|e| (e.first, e.last) == (m.first, m.last) && e.same_nodes(m))
    };
    let mut pending: Vec<crate::routing::Entry> = wanted.iter().filter(|m| !placed(&set, m)).cloned().collect();
    if tty {
        for m in set.moves() {
            eprintln!("moving {} to {} ...", m.range(), m);
        }
        if !set.then().is_empty() {
            let recut: Vec<String> = pending
                .iter()
                .filter(|m| set.entry_for(m.first, m.last).is_none())
                .map(ToString::to_string)
                .collect();
            eprintln!(
                "then re-cutting them there into {}, and moving the pieces to their nodes ...",
                recut.join(", ")
            );
        }
    }
    let mut polls = 0u64;
    // On a terminal, one line redrawn with what the moves' new nodes took in so far.
    let mut drawn = false;
    loop {
        let reply = client.call_within(Request::Table, settings.timeout).await?;
        let Reply::Table(table) = reply else {
            return unexpected(&reply);
        };
        pending.retain(|m| {
            let moved = placed(&table, m);
            if moved && tty {
                if std::mem::take(&mut drawn) {
                    eprint!("\r\x1b[K");
                }
                eprintln!("moved {} ({:.1} s)", m, started.elapsed().as_secs_f64());
            }
            !moved
        });
        polls += 1;
        if tty && !pending.is_empty() && polls.is_multiple_of(10) {
            let progress = Progress::gather(&table, settings, Instant::now() + settings.timeout).await;
            let (mut keys, mut bytes) = (0, 0);
            for m in &pending {
                for n in m.replicas() {
                    if let Ok(Some(i)) = progress.of(n.as_str(), &m.range()) {
                        (keys, bytes) = (keys + i.keys, bytes + i.bytes);
                    }
                }
            }
            eprint!(
                "\r\x1b[K{} range(s) moving, {} copied so far ({:.0} s)",
                pending.len(),
                amount(keys, bytes),
                started.elapsed().as_secs_f64()
            );
            drawn = true;
        }
        if pending.is_empty() && table.then().is_empty() {
            return Ok(table);
        }
        // A range no longer moving, named on other nodes than asked, with no re-cut to come:
        // another table won (a group sealed onto one node before this move could take
        // effect, or a set of another coordinator). Waiting would not bring it.
        let overtaken = pending.iter().find(|m| {
            table.then().is_empty()
                && table.move_of(m.first, m.last).is_none()
                && table
                    .entry_for(m.first, m.last)
                    .is_some_and(|e| (e.first, e.last) == (m.first, m.last) && !e.same_nodes(m))
        });
        if overtaken.is_some() && table.version() > set.version() {
            if drawn {
                eprintln!();
            }
            return Err(ClientError::Remote(wire::RemoteError::TableChanged {
                node: client.describe(),
                expected: set.version(),
                found: table.version(),
                setter: table.setter().to_string(),
            }));
        }
        if Instant::now() >= until {
            if drawn {
                eprintln!();
            }
            return Err(ClientError::Remote(wire::RemoteError::DeadlineExceeded {
                node: format!(
                    "{} (the moves of {} are not done after {:.0?}; they go on: see `kvnode route --status`)",
                    client.describe(),
                    pending.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", "),
                    wait_for
                ),
                waited_ms: wait_for.as_millis() as u64,
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// What the nodes say of the moves (`Request::Moves`): the node asked (the moves it saw finish),
/// and each move's new nodes (what they took in so far).
struct Progress {
    done: Vec<wire::MoveDone>,
    /// Per new node of a move under way: its newest install of the range, `Err` if it did not
    /// answer.
    installs: std::collections::HashMap<String, Result<Vec<wire::InstallReport>, String>>,
}

impl Progress {
    /// Asks the node the command talks to, and every node a move under way adds, at once.
    async fn gather(table: &RoutingTable, settings: &Settings, deadline: Instant) -> Progress {
        let ask = async |node: Option<crate::names::NodeRef>| {
            let reply = connected(settings, node.as_ref(), deadline, async |c| {
                c.call(Request::Moves).await
            })
            .await;
            match reply {
                Ok(Reply::Moves(report)) => Ok(report),
                Ok(_) => Err("it answered something else (a node of an older version?)".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        let mut added: Vec<String> = table
            .moves()
            .iter()
            .flat_map(|m| {
                let from = table.entries().iter().find(|e| (e.first, e.last) == (m.first, m.last));
                m.replicas()
                    .iter()
                    .filter(move |n| from.is_none_or(|e| !e.replicas().contains(n)))
                    .map(|n| n.to_string())
            })
            .collect();
        added.sort();
        added.dedup();
        let there = added.iter().map(|name| async {
            let node = name
                .parse()
                .map(crate::names::NodeRef::Name)
                .map_err(|e| format!("{e}"));
            let report = match node {
                Ok(node) => ask(Some(node)).await.map(|r| r.installs),
                Err(e) => Err(e),
            };
            (name.clone(), report)
        });
        let (here, there) = tokio::join!(ask(None), futures_util::future::join_all(there));
        Progress {
            done: here.map(|r| r.done).unwrap_or_default(),
            installs: there.into_iter().collect(),
        }
    }

    /// What node `node` says of its copy of `range`: the newest install's state and counts.
    fn of(&self, node: &str, range: &str) -> Result<Option<&wire::InstallReport>, &str> {
        match self.installs.get(node) {
            Some(Ok(installs)) => Ok(installs.iter().rev().find(|i| i.range == range)),
            Some(Err(e)) => Err(e.as_str()),
            None => Ok(None),
        }
    }
}

/// Whether two lists name the same nodes, in any order (a move back to the nodes a range is
/// on: called off).
fn same_nodes<S: AsRef<str>>(a: &[S], b: &[S]) -> bool {
    fn sorted<S: AsRef<str>>(l: &[S]) -> Vec<&str> {
        let mut l: Vec<&str> = l.iter().map(AsRef::as_ref).collect();
        l.sort_unstable();
        l
    }
    sorted(a) == sorted(b)
}

/// `12,345 keys, 678.9 MB`.
fn amount(keys: u64, bytes: u64) -> String {
    let mut k = keys.to_string();
    let mut i = k.len();
    while i > 3 {
        i -= 3;
        k.insert(i, ',');
    }
    let noun = if keys == 1 { "key" } else { "keys" };
    format!("{k} {noun}, {:.1} MB", bytes as f64 / 1e6)
}

/// `route --status`: each move under way, `a-m: foo -> bar (moving; bar: 5,120 keys, 335.5 MB
/// received in 2.1 s)`, then the moves the node asked saw finish; in JSON one object each.
fn print_moves(table: &RoutingTable, progress: &Progress, out: &mut Output) {
    fn nodes(e: &crate::routing::Entry) -> Vec<&str> {
        e.replicas().iter().map(|n| n.as_str()).collect()
    }
    for m in table.moves() {
        let range = m.range();
        let from = table
            .entries()
            .iter()
            .find(|e| (e.first, e.last) == (m.first, m.last))
            .map(nodes)
            .unwrap_or_default();
        let added: Vec<&str> = nodes(m).into_iter().filter(|n| !from.contains(n)).collect();
        if out.is_json() {
            let each: Vec<Value> = added
                .iter()
                .map(|n| match progress.of(n, &range) {
                    Ok(Some(i)) => json!({
                        "node": n, "state": i.state.as_str(), "keys": i.keys, "bytes": i.bytes,
                        "took_ms": i.took_ms, "from": i.from,
                    }),
                    Ok(None) => json!({ "node": n, "state": "waiting" }),
                    Err(e) => json!({ "node": n, "state": "unknown", "error": e }),
                })
                .collect();
            out.object(json!({
                "range": range, "from": from, "to": nodes(m), "state": "moving",
                "version": table.version(), "progress": each,
            }));
            continue;
        }
        let each: Vec<String> = added
            .iter()
            .map(|n| match progress.of(n, &range) {
                Ok(Some(i)) => {
                    let secs = i.took_ms as f64 / 1000.0;
                    match &i.state {
                        wire::InstallState::Receiving => {
                            format!("{n}: {} received in {secs:.1} s", amount(i.keys, i.bytes))
                        }
                        wire::InstallState::Written => {
                            format!(
                                "{n}: {} written in {secs:.1} s, joining the group",
                                amount(i.keys, i.bytes)
                            )
                        }
                        wire::InstallState::Failed(why) => {
                            format!("{n}: a copy failed after {secs:.1} s ({why}); it is sent again")
                        }
                    }
                }
                Ok(None) => format!("{n}: waiting for the range's data"),
                Err(e) => format!("{n}: did not say ({e})"),
            })
            .collect();
        if same_nodes(&from, &nodes(m)) {
            out.line(&format!("{range}: back to {} (a move called off)", from.join("+")));
            continue;
        }
        let detail = if each.is_empty() {
            String::new()
        } else {
            format!("; {}", each.join("; "))
        };
        out.line(&format!(
            "{range}: {} -> {} (moving{detail})",
            from.join("+"),
            nodes(m).join("+")
        ));
    }
    // A split or merge's second step: the ranges re-cut once the moves are done.
    for e in table
        .then()
        .iter()
        .filter(|e| table.entry_for(e.first, e.last).is_none())
    {
        if out.is_json() {
            out.object(json!({
                "range": e.range(), "to": nodes(e), "state": "re-cut", "version": table.version(),
            }));
        } else {
            out.line(&format!(
                "{}: -> {} (a re-cut, once the moves above are done)",
                e.range(),
                nodes(e).join("+")
            ));
        }
    }
    if table.moves().is_empty() && table.then().is_empty() && !out.is_json() {
        out.line(&format!("no moves under way (table version {})", table.version()));
    }
    for d in &progress.done {
        if out.is_json() {
            out.object(json!({
                "range": d.range, "from": d.from, "to": d.to, "state": "done",
                "version": d.version, "ago_ms": d.ago_ms,
            }));
        } else if same_nodes(&d.from, &d.to) {
            out.line(&format!(
                "{}: {} (a move called off, back {:.0} s ago, table version {})",
                d.range,
                d.from.join("+"),
                d.ago_ms as f64 / 1000.0,
                d.version
            ));
        } else {
            out.line(&format!(
                "{}: {} -> {} (done {:.0} s ago, table version {})",
                d.range,
                d.from.join("+"),
                d.to.join("+"),
                d.ago_ms as f64 / 1000.0,
                d.version
            ));
        }
    }
}

/// `route --set`: a compare-and-set on the version read (or given with --if-version), of a
/// table whose nodes are members (unless --force); an equal table is no change, said so.
async fn set_table(
    client: &Client,
    entries: Vec<crate::routing::Entry>,
    args: &RouteArgs,
    out: &mut Output,
) -> Result<Option<RoutingTable>, ClientError> {
    let reply = client.call(Request::Table).await?;
    let Reply::Table(current) = reply else {
        return unexpected(&reply);
    };
    let expected = args.if_version.unwrap_or(current.version());
    let reply = client.call(Request::Members).await?;
    let Reply::Members(members) = reply else {
        return unexpected(&reply);
    };
    if !args.force {
        let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        let strangers: std::collections::BTreeSet<&str> = entries
            .iter()
            .flat_map(|e| e.replicas().iter().map(|n| n.as_str()))
            .filter(|n| !names.contains(n))
            .collect();
        if !strangers.is_empty() {
            let one = strangers.len() == 1;
            return Err(ClientError::Usage(format!(
                "the table names {}, which {} not in the membership of {} (members: {}); check the spelling, start and join {} first, or give --force to set it anyway",
                strangers.into_iter().collect::<Vec<_>>().join(", "),
                if one { "is" } else { "are" },
                client.describe(),
                names.join(", "),
                if one { "it" } else { "them" },
            )));
        }
    }
    let request = Request::SetTableIf {
        entries,
        expected,
        forwarded: false,
        force: args.force,
        call_off: args.call_off,
    };
    let reply = client.call(request).await?;
    let Reply::Table(table) = reply else {
        return unexpected(&reply);
    };
    if table.version() == expected {
        // The coordinator held these very entries at the version read: nothing was set.
        if out.is_json() {
            out.object(json!({ "changed": false, "version": table.version(), "setter": table.setter() }));
        } else {
            out.line(&format!(
                "no change: the routing table already is {table} (version {}, set by {})",
                table.version(),
                table.setter()
            ));
        }
        return Ok(None);
    }
    // Members that gossip knows but not as live: their buckets fail until they are back.
    for node in table.nodes() {
        let live = members.iter().any(|m| m.name == *node && m.is_live());
        if !live {
            tracing::warn!(
                "the table names {node}, which {} does not know as a live member; requests for its buckets fail until it joins",
                client.describe()
            );
        }
    }
    Ok(Some(table))
}

/// The gossip state of the owner `reply` names: `alive` when the owner answered itself (the
/// path ends with it), else as the node asked holds it (`route BUCKET` is answered from the
/// table when the owner is down), `unknown` when it is no member there.
async fn owner_state(client: &Client, reply: &Reply) -> String {
    let Reply::Owner { node, path, .. } = reply else {
        return "unknown".into();
    };
    if path.last() == Some(node) {
        return "alive".into();
    }
    match client.call(Request::Members).await {
        Ok(Reply::Members(members)) => members
            .into_iter()
            .find(|m| m.name == *node)
            .map_or_else(|| "unknown".into(), |m| m.state.as_str().into()),
        _ => "unknown".into(),
    }
}

/// `# version 3, set by foo` then one `range=node` (or `range=foo+bar+baz`) per line, so the
/// entries can be fed back to `route --set`; in JSON, one object per entry, `node` its first
/// node, and for a replicated entry `replicas` all of them (a one-node entry's object is as
/// it always was).
fn print_table(table: &RoutingTable, out: &mut Output) {
    if out.is_json() {
        for e in table.entries() {
            let mut o = json!({
                "range": e.range(), "first": e.first, "last": e.last, "node": e.preferred_leader().as_str(),
                "version": table.version(), "setter": table.setter(),
            });
            if e.is_replicated() {
                o["replicas"] = json!(e.replicas().iter().map(|n| n.as_str()).collect::<Vec<_>>());
            }
            if let Some(m) = table.move_of(e.first, e.last) {
                o["moving_to"] = json!(m.replicas().iter().map(|n| n.as_str()).collect::<Vec<_>>());
            }
            out.object(o);
        }
    } else {
        if table.setter().is_empty() {
            out.line("# no table set: the node's own until it joins a cluster or one is set with route --set");
        } else {
            out.line(&format!("# version {}, set by {}", table.version(), table.setter()));
        }
        for e in table.entries() {
            out.line(&e.to_string());
        }
        for m in table.moves() {
            out.line(&format!("# moving {m}"));
        }
        if !table.then().is_empty() {
            let then: Vec<String> = table.then().iter().map(ToString::to_string).collect();
            out.line(&format!("# then {} (once the moves are done)", then.join(",")));
        }
    }
}
