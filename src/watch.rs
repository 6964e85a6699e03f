//! `kvnode watch BUCKET [KEY]`: the bucket's changes as its owner acknowledges them.
//!
//! A watch is a sequence of long polls through one node (`BucketOp::Watch`), routed to the
//! bucket's owner like any bucket request. Each poll asks for the changes after the position
//! the last one ended at, so a broken connection is mended by connecting again and asking
//! from there: nothing printed is printed again, and a gap the owner cannot rule out (it
//! restarted, or the bucket has another owner, or the watch fell behind its feed) ends the
//! watch with exit 3 rather than going on as if nothing were missed.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::cli::WatchArgs;
use crate::client::{self, Client, ClientError, Settings};
use crate::commands::{arg_bytes, bucket_request, unexpected};
use crate::output::{Output, bytes_field, printable, printable_value};
use crate::wire::{self, BucketOp, RemoteError, Reply, WatchEvent, WatchPosition};

/// The longest a poll waits for a change before it is answered empty; it waits half the
/// `--timeout` when that is shorter (the rest is for the answer to come back in time).
const MAX_WAIT: Duration = Duration::from_secs(10);
/// The longest pause between two attempts to re-establish a broken watch.
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Runs the watch until `--count` changes are printed (exit 0), or it cannot go on.
pub async fn run(args: WatchArgs, settings: &Settings, out: &mut Output) -> Result<(), ClientError> {
    let bucket = arg_bytes(args.bucket);
    wire::check_bucket(&bucket).map_err(ClientError::Usage)?;
    let key = args.key.map(arg_bytes);
    if let Some(key) = &key {
        wire::check_key(key).map_err(ClientError::Usage)?;
    }
    let mut watch = Watch {
        bucket,
        key,
        from: None,
        left: args.count,
        wait_ms: (settings.timeout / 2).min(MAX_WAIT).as_millis() as u32,
    };
    // The first connection fails as any command's does.
    let mut client = connect(settings).await?;
    // Since when the watch has been broken, if it is: it is re-established for up to
    // --timeout from then.
    let mut broken_since: Option<Instant> = None;
    loop {
        let request = watch.request();
        match client.call_ref(&request, settings.timeout).await {
            Ok(Reply::Changes { events, upto }) => {
                if watch.from.is_none() {
                    tracing::info!(owner = %upto.node, "watching; changes from now on are printed");
                }
                broken_since = None;
                if watch.print(events, upto, out) {
                    client.close().await;
                    return Ok(());
                }
            }
            Ok(other) => {
                client.close().await;
                return unexpected(&other);
            }
            // Before the first answer there is no position to resume from: fail as a
            // command does.
            Err(e) if watch.from.is_some() && mendable(&e) => {
                let since = *broken_since.get_or_insert_with(Instant::now);
                tracing::info!(error = %e, "the watch broke; re-establishing it");
                client.close().await;
                client = reconnect(settings, since, e).await?;
            }
            Err(e) => {
                client.close().await;
                return Err(e);
            }
        }
    }
}

/// What a watch has printed and asks for next.
struct Watch {
    bucket: Vec<u8>,
    key: Option<Vec<u8>>,
    /// Where the last answer ended (`None` before the first).
    from: Option<WatchPosition>,
    /// Changes still to print before exiting, with `--count`.
    left: Option<u64>,
    wait_ms: u32,
}

impl Watch {
    fn request(&self) -> wire::Request {
        bucket_request(
            self.bucket.clone(),
            BucketOp::Watch {
                key: self.key.clone().map(serde_bytes::ByteBuf::from),
                from: self.from.clone().map(Box::new),
                wait_ms: self.wait_ms,
            },
        )
    }

    /// Prints the changes after the last one printed, and moves the position to `upto`;
    /// `true` once `--count` changes are printed.
    fn print(&mut self, events: Vec<WatchEvent>, upto: WatchPosition, out: &mut Output) -> bool {
        for event in events {
            // Never again: the owner gives only changes after the position asked, but a
            // change already printed is not printed twice whatever it says.
            let seen = self
                .from
                .as_ref()
                .is_some_and(|p| p.same_feed(&upto) && event.seq <= p.seq);
            if seen {
                continue;
            }
            self.from = Some(WatchPosition {
                seq: event.seq,
                ..upto.clone()
            });
            print_event(&self.bucket, &event, &upto, out);
            if let Some(left) = &mut self.left {
                *left -= 1;
                if *left == 0 {
                    return true;
                }
            }
        }
        if self
            .from
            .as_ref()
            .is_none_or(|p| !p.same_feed(&upto) || p.seq < upto.seq)
        {
            self.from = Some(upto);
        }
        false
    }
}

/// `put KEY VALUE` / `delete KEY`, or the JSON object of one change.
fn print_event(bucket: &[u8], event: &WatchEvent, at: &WatchPosition, out: &mut Output) {
    let op = if event.value.is_some() { "put" } else { "delete" };
    if out.is_json() {
        let mut o = Map::new();
        o.insert("op".into(), json!(op));
        bytes_field(&mut o, "bucket", bucket);
        bytes_field(&mut o, "key", &event.key);
        if let Some(value) = &event.value {
            bytes_field(&mut o, "value", value);
        }
        // The epoch in hex: a JSON number would lose its low bits in JavaScript. In a
        // replicated range, `seq` is the range's log index and `range` names it.
        let mut position = json!({"node": at.node.as_str(), "epoch": format!("{:016x}", at.epoch), "seq": event.seq});
        if let Some((first, last)) = at.range {
            position["range"] = json!(format!("{}-{}", char::from(first), char::from(last)));
        }
        o.insert("position".into(), position);
        out.object(Value::Object(o));
        return;
    }
    match &event.value {
        Some(value) => out.line(&format!("put {} {}", printable(&event.key), one_line(value))),
        None => out.line(&format!("delete {}", printable(&event.key))),
    }
}

/// A value as `get` prints it, escaped if it would take more than one line.
fn one_line(value: &[u8]) -> String {
    let shown = printable_value(value);
    if shown.contains(['\n', '\r']) {
        value.escape_ascii().to_string()
    } else {
        shown
    }
}

/// Whether the watch may be re-established after `e`: the node or the connection went away,
/// or was too slow this once. Not a routing or a usage error, and not a gap.
fn mendable(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. }
        | ClientError::Timeout { .. }
        | ClientError::NoSuchNode { .. }
        | ClientError::NoNodeRunning { .. }
        | ClientError::Resolve { .. } => true,
        ClientError::Remote(r) => matches!(
            r,
            RemoteError::Unreachable { .. }
                | RemoteError::DeadlineExceeded { .. }
                | RemoteError::ShuttingDown { .. }
                | RemoteError::Overloaded { .. }
        ),
        _ => false,
    }
}

/// Finds the watch's node (`--via`, looked up again: it may have come back elsewhere) and
/// connects to it within `--timeout`.
async fn connect(settings: &Settings) -> Result<Client, ClientError> {
    let deadline = Instant::now() + settings.timeout;
    let target = client::resolve(settings, deadline).await?;
    Client::connect(settings, &target, deadline).await
}

/// Connects again, pausing between attempts, until `--timeout` after the watch broke
/// (`since`); then gives up with the last error.
async fn reconnect(settings: &Settings, since: Instant, mut last: ClientError) -> Result<Client, ClientError> {
    let until = since + settings.timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        let now = Instant::now();
        if now >= until {
            return Err(ClientError::WatchBroken {
                after: settings.timeout,
                reason: Box::new(last),
            });
        }
        tokio::time::sleep(pause.min(until - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
        match connect(settings).await {
            Ok(client) => return Ok(client),
            Err(e) if mendable(&e) => last = e,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::NodeName;

    fn at(seq: u64) -> WatchPosition {
        WatchPosition {
            node: NodeName::new("n1").unwrap(),
            epoch: 7,
            seq,
            range: None,
        }
    }

    /// A position in the replicated range a-z's log, as `node` gave it.
    fn in_range(node: &str, seq: u64) -> WatchPosition {
        WatchPosition {
            node: NodeName::new(node).unwrap(),
            epoch: 0,
            seq,
            range: Some((b'a', b'z')),
        }
    }

    fn event(seq: u64) -> WatchEvent {
        WatchEvent {
            seq,
            key: b"k".to_vec().into(),
            value: None,
        }
    }

    fn watch(count: Option<u64>) -> Watch {
        Watch {
            bucket: b"b".to_vec(),
            key: None,
            from: None,
            left: count,
            wait_ms: 0,
        }
    }

    #[test]
    fn a_change_already_printed_is_never_printed_again() {
        let mut w = watch(None);
        let mut out = Output::new(true);
        assert!(!w.print(vec![event(1), event(2)], at(3), &mut out));
        assert_eq!(w.from, Some(at(3)), "the next poll asks after all it looked at");
        assert!(!w.print(vec![event(2), event(4)], at(4), &mut out));
        assert_eq!(w.from, Some(at(4)));
    }

    #[test]
    fn in_a_replicated_range_a_new_leader_continues_from_the_log_index_the_last_one_gave() {
        let mut w = watch(None);
        let mut out = Output::new(true);
        assert!(!w.print(vec![event(5), event(8)], in_range("n1", 9), &mut out));
        // n2 leads now; it resends 8 (the watch asked after 9, but a change printed is never
        // printed twice whatever the node says) and gives 11.
        assert!(!w.print(vec![event(8), event(11)], in_range("n2", 11), &mut out));
        assert_eq!(w.from, Some(in_range("n2", 11)));
        // A position of a single owner's feed is another feed: taken as given.
        assert!(!w.print(vec![event(1)], at(1), &mut out));
        assert_eq!(w.from, Some(at(1)));
    }

    #[test]
    fn count_stops_after_that_many_changes_at_the_last_printed() {
        let mut w = watch(Some(2));
        let mut out = Output::new(true);
        assert!(w.print(vec![event(1), event(2), event(3)], at(3), &mut out));
        assert_eq!(w.from, Some(at(2)));
    }

    #[test]
    fn a_value_that_would_break_the_line_is_escaped() {
        assert_eq!(one_line(b"3"), "3");
        assert_eq!(one_line("ünï\tcode".as_bytes()), "ünï\tcode");
        assert_eq!(one_line(b"two\nlines"), "two\\nlines");
        assert_eq!(one_line(b"\xff"), "\\xff");
    }
}
