//! The node's side of its figures (issue 27): the [`Snapshot`] of what it counted and what
//! its state says (members, table, store, connections), served at `/metrics`
//! (`--metrics-listen`) and answered to `kvnode stats`; and the once-a-second reading kept
//! for the rates over the last 10 s.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;

use super::{Node, NodeError};
use crate::gossip::State;
use crate::metrics::{self, Labelled, Snapshot, StatsReport};

/// Files deeper than this under the data directory are not counted in its size (the store
/// keeps a shallow tree; the bound keeps a strange directory from costing a scrape much).
const MAX_DEPTH: usize = 4;

/// Binds the metrics listener, if there is one; a failure is a start error.
pub(super) async fn bind(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, NodeError> {
    let Some(addr) = addr else { return Ok(None) };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| NodeError::MetricsListen { addr, source })
}

/// Starts the once-a-second reading and, with a listener, `/metrics`; both stop with the
/// node's requests.
pub(super) fn start(node: &Arc<Node>, listener: Option<TcpListener>) {
    metrics::mark_start();
    let sampling = Arc::clone(node);
    node.tasks.spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = every.tick() => metrics::sample(sampling.name.as_str()),
                () = sampling.serve.stopping.cancelled() => return,
            }
        }
    });
    let Some(listener) = listener else { return };
    let addr = listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(%addr, "serving metrics at http://{addr}/metrics");
    let scraped = Arc::clone(node);
    let render = move || metrics::encode(scraped.snapshot());
    node.tasks.spawn(metrics::http::serve(
        listener,
        render,
        node.serve.stopping.clone(),
        node.tasks.clone(),
    ));
}

impl Node {
    /// Every figure now. Reads the data directory's size: call it where blocking is allowed.
    pub(super) fn snapshot(&self) -> Snapshot {
        let members = self.gossip.member_infos();
        let by_state = [State::Alive, State::Suspect, State::Dead, State::Left]
            .into_iter()
            .map(|state| Labelled {
                label: state.as_str().to_string(),
                count: members.iter().filter(|m| m.state == state).count() as u64,
            })
            .collect();
        let (led, held) = {
            let leaders = self.replicas.leaders();
            let leaders = leaders.borrow();
            let led = leaders
                .values()
                .filter(|v| v.leader.as_ref() == Some(&self.name))
                .count();
            (led as u64, leaders.len() as u64)
        };
        let ranges = [("leader", led), ("follower", held - led)]
            .into_iter()
            .map(|(label, count)| Labelled {
                label: label.to_string(),
                count,
            })
            .collect();
        Snapshot {
            connections_open: self.connections.load(Ordering::Relaxed) as u64,
            members: by_state,
            ranges,
            table_version: self.table().version(),
            store_disk_bytes: self.store.disk_path().map(|p| size_of_dir(p, MAX_DEPTH)),
            store_keys: self.store.key_count(),
            ..Snapshot::counted(self.name.as_str())
        }
    }

    /// The answer to `kvnode stats`.
    pub(super) async fn stats(self: &Arc<Self>) -> StatsReport {
        let node = Arc::clone(self);
        let now = match tokio::task::spawn_blocking(move || node.snapshot()).await {
            Ok(s) => s,
            // Only a panic gets here; the figures without the state's are still worth saying.
            Err(_) => Snapshot::counted(self.name.as_str()),
        };
        StatsReport {
            now,
            earlier: metrics::earlier(),
        }
    }
}

/// The bytes of the files under `dir`, `depth` levels down at most; what cannot be read
/// (a file removed by a compaction meanwhile) is left out.
fn size_of_dir(dir: &Path, depth: usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() && depth > 0 => size_of_dir(&e.path(), depth - 1),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_size_counts_its_files_down_to_the_depth_given() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir_all(dir.path().join("x/y")).unwrap();
        std::fs::write(dir.path().join("x/b"), [0u8; 5]).unwrap();
        std::fs::write(dir.path().join("x/y/c"), [0u8; 7]).unwrap();
        assert_eq!(size_of_dir(dir.path(), 4), 22);
        assert_eq!(size_of_dir(dir.path(), 1), 15);
        assert_eq!(size_of_dir(&dir.path().join("gone"), 4), 0);
    }
}
