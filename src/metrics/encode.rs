//! A [`Snapshot`] as OpenMetrics text, written by prometheus-client's encoder (names, help,
//! units, `_total`, `le` buckets and `# EOF` as the format wants them).

use std::fmt::Error;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{Hist, Labelled, Snapshot};

/// `snapshot` as the body of a `/metrics` answer.
pub fn encode(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Figures(snapshot)));
    let mut text = String::new();
    // Writing to a String cannot fail, and every figure is a plain number.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

#[derive(Debug)]
struct Figures(Snapshot);

const NS_PER_S: f64 = 1e9;

fn counter(m: &mut MetricEncoder, v: u64) -> Result<(), Error> {
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(m: &mut MetricEncoder, v: u64) -> Result<(), Error> {
    m.encode_gauge(&v)
}

/// A histogram whose observations were in units of `1/scale` of the exported unit.
fn histogram(m: &mut MetricEncoder, h: &Hist, scale: f64) -> Result<(), Error> {
    let buckets: Vec<(f64, u64)> = h
        .counts
        .iter()
        .enumerate()
        .map(|(i, &c)| (h.bounds.get(i).map_or(f64::INFINITY, |&b| b as f64 / scale), c))
        .collect();
    m.encode_histogram::<NoLabelSet>(h.sum as f64 / scale, h.count(), &buckets, None)
}

fn labelled(
    d: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    key: &str,
    counts: &[Labelled],
) -> Result<(), Error> {
    let mut m = d.encode_descriptor(name, help, None, kind)?;
    for c in counts {
        let labels = [(key, c.label.as_str())];
        let mut f = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => counter(&mut f, c.count)?,
            _ => gauge(&mut f, c.count)?,
        }
    }
    Ok(())
}

fn family<'l, S: EncodeLabelSet>(m: &'l mut MetricEncoder, labels: &'l S) -> Result<MetricEncoder<'l>, Error> {
    m.encode_family(labels)
}

impl Collector for Figures {
    fn encode(&self, mut d: DescriptorEncoder) -> Result<(), Error> {
        use MetricType::{Counter, Gauge, Histogram};
        let s = &self.0;
        let (seconds, bytes) = (Unit::Seconds, Unit::Bytes);

        let mut m = d.encode_descriptor(
            "kvnode_requests",
            "Bucket requests taken in by this node, by command and outcome.",
            None,
            Counter,
        )?;
        for r in &s.requests {
            let labels = [("command", r.command.as_str()), ("outcome", r.outcome.as_str())];
            counter(&mut family(&mut m, &labels)?, r.count)?;
        }
        let mut m = d.encode_descriptor(
            "kvnode_request_duration",
            "Bucket request latency on this node, by command and path (applied here: local; sent on to the owner: forwarded).",
            Some(&seconds),
            Histogram,
        )?;
        for l in &s.latency {
            let labels = [("command", l.command.as_str()), ("path", l.path.as_str())];
            histogram(&mut family(&mut m, &labels)?, &l.nanos, NS_PER_S)?;
        }
        let mut m = d.encode_descriptor(
            "kvnode_forwarded_requests",
            "Bucket requests this node sent on to their owner.",
            None,
            Counter,
        )?;
        counter(&mut m, s.forwarded)?;
        let mut m = d.encode_descriptor(
            "kvnode_request_hops",
            "Nodes a bucket request had crossed before this one.",
            None,
            Histogram,
        )?;
        histogram(&mut m, &s.hops, 1.0)?;
        let mut m = d.encode_descriptor(
            "kvnode_connections_open",
            "Authenticated QUIC connections open.",
            None,
            Gauge,
        )?;
        gauge(&mut m, s.connections_open)?;
        let mut m = d.encode_descriptor(
            "kvnode_watches_waiting",
            "Watches waiting at this node, their bucket's owner, for a change.",
            None,
            Gauge,
        )?;
        gauge(&mut m, s.watches_waiting)?;
        labelled(
            &mut d,
            "kvnode_handshakes_refused",
            "Connections refused before or during their handshake, by cause.",
            Counter,
            "cause",
            &s.handshakes_refused,
        )?;
        labelled(
            &mut d,
            "kvnode_members",
            "Members this node knows, itself included, by state.",
            Gauge,
            "state",
            &s.members,
        )?;
        labelled(
            &mut d,
            "kvnode_member_transitions",
            "Members this node saw become suspect or dead.",
            Counter,
            "to",
            &s.transitions,
        )?;
        labelled(
            &mut d,
            "kvnode_ranges",
            "Replicated ranges this node holds, by its role: leader or follower.",
            Gauge,
            "role",
            &s.ranges,
        )?;
        let mut m = d.encode_descriptor(
            "kvnode_routing_table_version",
            "Version of the routing table this node holds.",
            None,
            Gauge,
        )?;
        gauge(&mut m, s.table_version)?;
        let mut m = d.encode_descriptor(
            "kvnode_commit_batch_writes",
            "Writes sharing one group commit (durable store).",
            None,
            Histogram,
        )?;
        histogram(&mut m, &s.commit_batch, 1.0)?;
        let mut m = d.encode_descriptor(
            "kvnode_commit_duration",
            "Time a group commit took to write and sync its batch (durable store).",
            Some(&seconds),
            Histogram,
        )?;
        histogram(&mut m, &s.commit_nanos, NS_PER_S)?;
        if let Some(b) = s.store_disk_bytes {
            let mut m = d.encode_descriptor(
                "kvnode_store_disk",
                "Size of the store's data directory.",
                Some(&bytes),
                Gauge,
            )?;
            gauge(&mut m, b)?;
        }
        if let Some(k) = s.store_keys {
            let mut m = d.encode_descriptor("kvnode_store_keys", "Keys stored (in-memory store).", None, Gauge)?;
            gauge(&mut m, k)?;
        }
        let mut m = d.encode_descriptor(
            "kvnode_gossip_sent",
            "Gossip messages sent, encoded.",
            Some(&bytes),
            Counter,
        )?;
        counter(&mut m, s.gossip_sent_bytes)?;
        let mut m = d.encode_descriptor(
            "kvnode_gossip_received",
            "Gossip messages received, encoded.",
            Some(&bytes),
            Counter,
        )?;
        counter(&mut m, s.gossip_received_bytes)?;
        let mut m = d.encode_descriptor("kvnode_uptime", "Time since the node started.", Some(&seconds), Gauge)?;
        m.encode_gauge(&(s.uptime_ms as f64 / 1e3))?;
        if let Some(rss) = s.process.rss_bytes {
            let mut m = d.encode_descriptor("process_resident_memory", "Resident memory size.", Some(&bytes), Gauge)?;
            gauge(&mut m, rss)?;
        }
        if let Some(cpu) = s.process.cpu_ms {
            let mut m = d.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent.",
                Some(&seconds),
                Counter,
            )?;
            m.encode_counter::<NoLabelSet, _, u64>(&(cpu as f64 / 1e3), None)?;
        }
        if let Some(t) = s.process.threads {
            let mut m = d.encode_descriptor("process_threads", "OS threads in the process.", None, Gauge)?;
            gauge(&mut m, t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Latency, RequestCount};

    #[test]
    fn a_snapshot_encodes_as_openmetrics_with_labels_units_and_eof() {
        let s = Snapshot {
            node: "foo".into(),
            requests: vec![RequestCount {
                command: "get".into(),
                outcome: "not_found".into(),
                count: 3,
            }],
            latency: vec![Latency {
                command: "get".into(),
                path: "local".into(),
                nanos: Hist {
                    bounds: vec![1_000_000],
                    counts: vec![2, 1],
                    sum: 4_000_000,
                },
            }],
            members: vec![Labelled {
                label: "alive".into(),
                count: 1,
            }],
            ..Snapshot::default()
        };
        let text = encode(s);
        assert!(
            text.contains("kvnode_requests_total{command=\"get\",outcome=\"not_found\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("kvnode_request_duration_seconds_bucket{le=\"0.001\",command=\"get\",path=\"local\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("kvnode_request_duration_seconds_bucket{le=\"+Inf\",command=\"get\",path=\"local\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("kvnode_members{state=\"alive\"} 1\n"), "{text}");
        assert!(!text.contains("kvnode_store_disk"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
