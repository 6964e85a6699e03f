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
    let Some(spec) = &args.set else {
        let reply = ask(settings, deadline, Request::Table).await?;
        let Reply::Table(table) = reply else {
            return unexpected(&reply);
        };
        print_table(&table, out);
        return Ok(());
    };
    let entries = TableSpec::parse([spec.as_str()])
        .map_err(|e| ClientError::Usage(format!("invalid --set: {e}")))?
        .0;
    connected(settings, None, deadline, async |client| {
        set_table(client, entries, &args, out).await
    })
    .await
}

/// `route --set`: a compare-and-set on the version read (or given with --if-version), of a
/// table whose nodes are members (unless --force); an equal table is no change, said so.
async fn set_table(
    client: &Client,
    entries: Vec<crate::routing::Entry>,
    args: &RouteArgs,
    out: &mut Output,
) -> Result<(), ClientError> {
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
        return Ok(());
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
    print_table(&table, out);
    Ok(())
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
    }
}
