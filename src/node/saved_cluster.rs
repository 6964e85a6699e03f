//! Where a durable node was and whom it knew, kept in its data directory: restarted, it
//! listens on the port it had (when the port was left to chance) and rejoins its cluster
//! through the members it knew. Without this, the node that started a cluster (no `--join`)
//! came back on another random port, knowing nobody: the cluster stayed split for good.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::gossip::State;
use crate::names::NodeName;
use crate::transport::{self, TransportError};

/// The file's name under the data directory.
const FILE: &str = "cluster";

/// Bumped if the file's layout changes; a file of another format is ignored.
const FORMAT: u8 = 1;

/// The most members kept: enough that some are still up after a restart, few enough that
/// the file stays small and rejoining asks a handful of seeds, not a whole large cluster.
pub const MAX_MEMBERS: usize = 16;

/// What is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCluster {
    /// The address the node's socket was bound to.
    pub bound: Option<SocketAddr>,
    /// Other members, the likeliest to be up first, at most [`MAX_MEMBERS`].
    pub members: Vec<(NodeName, SocketAddr)>,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// What was saved at `path`, if anything sound. A damaged file is not a reason to refuse to
/// start (the node then starts as if for the first time): it is logged and passed over.
pub fn load(path: &Path) -> Option<SavedCluster> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read where this node was and whom it knew; starting afresh");
            return None;
        }
    };
    let saved = match bytes.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes::<SavedCluster>(rest).ok(),
        _ => None,
    };
    match saved {
        // A file written by hand or by a broken build must not make a restart join dozens.
        Some(mut s) => {
            s.members.truncate(MAX_MEMBERS);
            Some(s)
        }
        None => {
            tracing::warn!(path = %path.display(), "the file saying where this node was and whom it knew is damaged; starting afresh");
            None
        }
    }
}

/// Saves `saved` at `path`, crash-safe (see [`super::saved_table::write_atomically`]).
pub fn save(path: &Path, saved: &SavedCluster) -> std::io::Result<()> {
    let mut bytes = vec![FORMAT];
    bytes.extend(postcard::to_stdvec(saved).map_err(std::io::Error::other)?);
    super::saved_table::write_atomically(path, &bytes)
}

/// Where to bind: the address bound last time when the configured one leaves the port to
/// chance (port 0) on the same IP address; else the configured one.
pub fn listen_at(configured: SocketAddr, saved: Option<&SavedCluster>) -> SocketAddr {
    match saved.and_then(|s| s.bound) {
        Some(bound) if configured.port() == 0 && bound.ip() == configured.ip() && bound.port() != 0 => bound,
        _ => configured,
    }
}

/// What to save now: the address bound, and the other members known (alive first, then
/// suspect, dead, left; by name within a state), at most [`MAX_MEMBERS`]. Knowing no other
/// member (just restarted and not rejoined yet, or every other one forgotten), it keeps the
/// members saved before: a crash before rejoining must not lose them.
pub fn to_save<'a>(
    bound: SocketAddr,
    me: &NodeName,
    known: impl Iterator<Item = (&'a NodeName, SocketAddr, State)>,
    before: &SavedCluster,
) -> SavedCluster {
    let mut others: Vec<(State, &NodeName, SocketAddr)> = known
        .filter(|(name, ..)| *name != me)
        .map(|(n, a, s)| (s, n, a))
        .collect();
    let members = if others.is_empty() {
        before.members.clone()
    } else {
        others.sort_by_key(|&(state, name, _)| (state, name));
        others.truncate(MAX_MEMBERS);
        others.into_iter().map(|(_, name, addr)| (name.clone(), addr)).collect()
    };
    SavedCluster {
        bound: Some(bound),
        members,
    }
}

/// A record whose members only changed order (states flapping) is written at most this
/// often: it must not cost an fsync each time.
const SAVE_EVERY: Duration = Duration::from_secs(2);

/// Where a durable node keeps its address and the members it knows, and what it last kept.
pub struct Saver {
    path: PathBuf,
    bound: SocketAddr,
    /// The members saved when the node started, to rejoin through: only for a node with no
    /// `join` of its own (a data directory reused in another cluster must not join the old).
    rejoin: Vec<(NodeName, SocketAddr)>,
    /// The latest record wanted on disk, and when it was last asked for.
    latest: Arc<Mutex<(SavedCluster, Option<Instant>)>>,
    /// Held while writing, so two writes never share the temporary file.
    writing: Arc<Mutex<()>>,
    /// Saved members a rejoin through has failed (bounded by `rejoin`).
    failed: Mutex<Vec<SocketAddr>>,
}

impl Saver {
    /// Keeps the address `bound` and the members known at `path`, starting from `before`
    /// (what was there); `rejoin`: rejoin through the members saved there. The address is
    /// written at once (a node killed in its first second keeps its port too): this runs
    /// before the node serves, and writes only when the address changed.
    pub fn new(path: PathBuf, bound: SocketAddr, before: Option<SavedCluster>, rejoin: bool) -> Self {
        let before = before.unwrap_or_default();
        let rejoin = if rejoin { before.members.clone() } else { Vec::new() };
        let mut latest = (before, None);
        if latest.0.bound != Some(bound) {
            latest.0.bound = Some(bound);
            match save(&path, &latest.0) {
                Ok(()) => latest.1 = Some(Instant::now()),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot save this node's address; after a restart it may listen elsewhere")
                }
            }
        }
        Self {
            path,
            bound,
            rejoin,
            latest: Arc::new(Mutex::new(latest)),
            writing: Default::default(),
            failed: Default::default(),
        }
    }

    /// The members to rejoin through.
    pub fn rejoin(&self) -> &[(NodeName, SocketAddr)] {
        &self.rejoin
    }

    pub fn rejoins_through(&self, seed: SocketAddr) -> bool {
        self.rejoin.iter().any(|(_, addr)| *addr == seed)
    }

    /// Whether this is the first failure to rejoin through `seed`; records it.
    pub fn first_failure(&self, seed: SocketAddr) -> bool {
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        let first = !failed.contains(&seed);
        if first {
            failed.push(seed);
        }
        first
    }

    /// Saves, off the event loop, the members `known` (this node `me` among them) when they
    /// changed: at once when one joined, went or moved; at most every [`SAVE_EVERY`] when
    /// only their order did.
    pub fn save<'a>(&self, me: &NodeName, known: impl Iterator<Item = (&'a NodeName, SocketAddr, State)>) {
        {
            let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
            let next = to_save(self.bound, me, known, &latest.0);
            if latest.1.is_some() && next == latest.0 {
                return;
            }
            let reordered = latest.0.bound == next.bound && same_members(&latest.0.members, &next.members);
            if reordered && latest.1.is_some_and(|at| at.elapsed() < SAVE_EVERY) {
                return;
            }
            *latest = (next, Some(Instant::now()));
        }
        let (path, latest, writing) = (self.path.clone(), Arc::clone(&self.latest), Arc::clone(&self.writing));
        tokio::task::spawn_blocking(move || {
            let _writing = writing.lock().unwrap_or_else(PoisonError::into_inner);
            // The latest wanted when this write runs: whichever write runs last leaves it.
            let record = latest.lock().unwrap_or_else(PoisonError::into_inner).0.clone();
            if let Err(e) = save(&path, &record) {
                tracing::warn!(path = %path.display(), error = %e, "cannot save this node's address and members; after a restart it may not find its cluster again");
            }
        });
    }
}

/// Whether `a` and `b` hold the same members at the same addresses, in any order.
fn same_members(a: &[(NodeName, SocketAddr)], b: &[(NodeName, SocketAddr)]) -> bool {
    a.len() == b.len() && a.iter().all(|m| b.contains(m))
}

/// Binds the node's endpoint at [`listen_at`]; if that is the port of last time and it is
/// no longer free (another process took it), says so and binds the configured address.
pub fn bind(
    configured: SocketAddr,
    saved: Option<&SavedCluster>,
    setup: &transport::NodeSetup,
) -> Result<transport::Endpoint, TransportError> {
    let at = listen_at(configured, saved);
    if at == configured {
        return setup.bind(configured);
    }
    match setup.bind(at) {
        Ok(endpoint) => {
            tracing::info!(%at, "listening on the port this node had before, where its cluster knows it");
            Ok(endpoint)
        }
        Err(e) => {
            tracing::warn!(
                "{e}: the port this node had before is taken (by another process?); listening on a new \
                 random port instead (--listen {configured}); the members it rejoins learn the new address"
            );
            setup.bind(configured)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> NodeName {
        NodeName::new(n).unwrap()
    }

    #[test]
    fn what_was_saved_loads_back_and_damage_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        assert_eq!(load(&path), None, "nothing saved yet");
        let saved = SavedCluster {
            bound: Some("127.0.0.1:40411".parse().unwrap()),
            members: vec![(name("n2"), "127.0.0.1:40412".parse().unwrap())],
        };
        save(&path, &saved).unwrap();
        assert_eq!(load(&path), Some(saved.clone()));

        let sound = std::fs::read(&path).unwrap();
        std::fs::write(&path, &sound[..sound.len() - 3]).unwrap();
        assert_eq!(load(&path), None, "truncated");
        std::fs::write(&path, [&[FORMAT + 1][..], &sound[1..]].concat()).unwrap();
        assert_eq!(load(&path), None, "another format");
        // A name kvnode would refuse is refused here too.
        let mut bad = vec![FORMAT];
        let members = vec![("No Such Name".to_string(), "127.0.0.1:1".parse::<SocketAddr>().unwrap())];
        bad.extend(postcard::to_stdvec(&(None::<SocketAddr>, members)).unwrap());
        std::fs::write(&path, bad).unwrap();
        assert_eq!(load(&path), None, "an invalid name");
        // More members than kept: the first ones are.
        let many = SavedCluster {
            bound: None,
            members: (0..40)
                .map(|i| (name(&format!("m{i}")), SocketAddr::from(([127, 0, 0, 1], 1000 + i))))
                .collect(),
        };
        save(&path, &many).unwrap();
        assert_eq!(load(&path).unwrap().members, many.members[..MAX_MEMBERS]);
    }

    #[test]
    fn the_port_bound_last_time_is_taken_again_only_when_the_port_was_left_to_chance() {
        let saved = SavedCluster {
            bound: Some("127.0.0.1:40411".parse().unwrap()),
            members: Vec::new(),
        };
        let at =
            |configured: &str, saved: Option<&SavedCluster>| listen_at(configured.parse().unwrap(), saved).to_string();
        assert_eq!(at("127.0.0.1:0", Some(&saved)), "127.0.0.1:40411");
        // A port given is the port used; another address is another socket.
        assert_eq!(at("127.0.0.1:4040", Some(&saved)), "127.0.0.1:4040");
        assert_eq!(at("0.0.0.0:0", Some(&saved)), "0.0.0.0:0");
        assert_eq!(at("127.0.0.1:0", None), "127.0.0.1:0");
    }

    #[test]
    fn the_members_saved_are_the_likeliest_to_be_up_and_survive_a_restart_that_knows_nobody() {
        let bound: SocketAddr = "127.0.0.1:40411".parse().unwrap();
        let (me, a, b, c) = (name("me"), name("a"), name("b"), name("c"));
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let known = [
            (&c, at(3), State::Dead),
            (&me, bound, State::Alive),
            (&b, at(2), State::Alive),
            (&a, at(1), State::Left),
        ];
        let saved = to_save(bound, &me, known.into_iter(), &SavedCluster::default());
        assert_eq!(saved.bound, Some(bound));
        assert_eq!(
            saved.members,
            vec![(b.clone(), at(2)), (c.clone(), at(3)), (a.clone(), at(1))]
        );
        // Restarted, it knows only itself: what it knew is kept.
        let again = to_save(bound, &me, [(&me, bound, State::Alive)].into_iter(), &saved);
        assert_eq!(again, saved);
        // Bounded.
        let names: Vec<NodeName> = (0..40).map(|i| name(&format!("m{i:02}"))).collect();
        let many = names.iter().map(|n| (n, at(9), State::Alive));
        assert_eq!(to_save(bound, &me, many, &saved).members.len(), MAX_MEMBERS);
    }
}
