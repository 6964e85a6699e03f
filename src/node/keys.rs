//! The node's keyring (issue 27, part 3): which one it starts with, and `kvnode secret`
//! requests, applied here and on every live member.
//!
//! A node proves its own connections with the secret in use and accepts any installed one
//! (see `auth::server_handshake`), so installing a new secret everywhere, then using it
//! everywhere, then removing the old one keeps every connection working at each step.

use std::path::Path;
use std::sync::Arc;

use tokio::time::Instant;

use super::{Node, NodeError};
use crate::config::NodeConfig;
use crate::keyring::{self, Change, Keyring, KeyringError};
use crate::secret::SecretSource;
use crate::wire::{KeyringOp, KeyringView, NodeKeyring, RemoteError, Reply, Request};

type Answer = Result<Reply, RemoteError>;

/// The keyring a node starts with: the one in its data directory if there is one (whatever
/// secret it is given: that is how a rotation survives a restart, as Consul's keyring file
/// does), else a keyring of the secret it is given, kept in memory until a `kvnode secret`
/// change writes it. A keyring file that cannot be used is an error, never a fallback.
pub(super) fn starting_keyring(config: &NodeConfig, file: &Path) -> Result<Keyring, NodeError> {
    let Some(ring) = Keyring::load(file)? else {
        return Ok(Keyring::new(config.secret.load_or_create()?));
    };
    let given = match &config.secret {
        SecretSource::File(path) => format!("the secret file {}", path.display()),
        SecretSource::Env(_) => "KVNODE_SECRET".to_string(),
        SecretSource::Home(path) => path.display().to_string(),
    };
    // The secret given is only read to say how it relates to the keyring; a missing one
    // is no matter now.
    let relation = match config.secret.load() {
        Ok(s) if s == *ring.in_use() => "the secret in use".to_string(),
        Ok(s) if ring.holds(&s) => format!("installed ({}), not in use", keyring::fingerprint(&s)),
        Ok(s) => format!("not in the keyring ({}): it is not accepted", keyring::fingerprint(&s)),
        Err(_) => "not read".to_string(),
    };
    tracing::info!(
        keyring = %file.display(),
        in_use = %keyring::fingerprint(ring.in_use()),
        secrets = ring.all().len(),
        "using the keyring {} (changed by `kvnode secret`), not {given}, which is {relation}",
        file.display()
    );
    Ok(ring)
}

fn view(ring: &Keyring, changed: bool) -> KeyringView {
    KeyringView {
        in_use: keyring::fingerprint(ring.in_use()),
        installed: ring.all().iter().map(keyring::fingerprint).collect(),
        changed,
    }
}

impl Node {
    /// Answers `kvnode secret`: here alone, or (`fan_out`, from a client) on every member.
    pub(super) async fn keyring_request(self: &Arc<Self>, op: KeyringOp, fan_out: bool, deadline: Instant) -> Answer {
        if !fan_out {
            return self.keyring_here(op).await.map(Reply::KeyringState);
        }
        // Before `use` or `remove` goes anywhere: every live member must hold the secret to
        // be used, and none may be using the one to be removed, or members would lock each
        // other out. Members that cannot be asked are reported by the change itself.
        if matches!(op, KeyringOp::Use(_) | KeyringOp::Remove(_)) {
            let lists = self.on_every_member(KeyringOp::List, deadline).await;
            self.check_cluster_may(&op, &lists)?;
        }
        Ok(Reply::KeyringReport(self.on_every_member(op, deadline).await))
    }

    /// Refuses a `use` of a secret some live member lacks, or a `remove` of one some live
    /// member uses, naming them and what to do.
    fn check_cluster_may(&self, op: &KeyringOp, lists: &[NodeKeyring]) -> Result<(), RemoteError> {
        let (secret, bad): (_, fn(&KeyringView, &str) -> bool) = match op {
            KeyringOp::Use(s) => (s, |v, f| !v.installed.iter().any(|i| i == f)),
            KeyringOp::Remove(s) => (s, |v, f| v.in_use == f),
            _ => return Ok(()),
        };
        let fp = keyring::fingerprint(secret);
        let blocking: Vec<&str> = lists
            .iter()
            .filter(|n| n.result.as_ref().is_ok_and(|v| bad(v, &fp)))
            .map(|n| n.node.as_str())
            .collect();
        if blocking.is_empty() {
            return Ok(());
        }
        let nodes = blocking.join(", ");
        Err(RemoteError::invalid(match op {
            KeyringOp::Use(_) => format!(
                "the secret {fp} is not installed on {nodes}; nothing was changed: run `kvnode secret install FILE` first (a node using a secret others lack would be locked out)"
            ),
            _ => format!(
                "the secret {fp} is in use on {nodes}; nothing was changed: `kvnode secret use` another installed secret first, then remove this one"
            ),
        }))
    }

    /// `op` on this node and on every other member at once, each answer by the deadline.
    /// A member gossip holds dead is not tried: it is reported as having missed the change.
    /// (One that has left is not a member any more: a node that comes back is given the
    /// cluster's secret as any new one is.)
    async fn on_every_member(self: &Arc<Self>, op: KeyringOp, deadline: Instant) -> Vec<NodeKeyring> {
        let members = self.gossip.member_infos();
        let others = members
            .iter()
            .filter(|m| m.name != self.name && m.state.as_str() != "left");
        let asks = others.map(|m| {
            let (node, op, name, state) = (Arc::clone(self), op.clone(), m.name.clone(), m.state);
            async move {
                let result = if state.is_live() {
                    node.keyring_there(&name, op, deadline).await
                } else {
                    Err(RemoteError::Unreachable {
                        node: name.to_string(),
                        addr: "-".into(),
                        reason: format!(
                            "gossip membership says it {}, so it missed this change; once it is back, run this command again (if it cannot rejoin, its keyring is outdated: see README, \"Operating: rotating the secret\")",
                            state.said()
                        ),
                    })
                };
                NodeKeyring { node: name, result }
            }
        });
        let here = async {
            NodeKeyring {
                node: self.name.clone(),
                result: self.keyring_here(op.clone()).await,
            }
        };
        let (here, mut there) = tokio::join!(here, futures_util::future::join_all(asks));
        there.push(here);
        there.sort_by(|a, b| a.node.cmp(&b.node));
        there
    }

    async fn keyring_there(
        self: &Arc<Self>,
        name: &crate::names::NodeName,
        op: KeyringOp,
        deadline: Instant,
    ) -> Result<KeyringView, RemoteError> {
        let addr = self.locate(name).await?;
        let peer = Box::pin(self.peer(name, addr, deadline)).await?;
        match peer.call(&Request::Keyring { op, fan_out: false }, deadline).await? {
            Reply::KeyringState(view) => Ok(view),
            other => Err(RemoteError::Internal {
                node: name.to_string(),
                reason: format!("answered a keyring request with {other:?}"),
            }),
        }
    }

    /// `op` on this node's keyring: a change is saved (atomically, mode 0600) before it is
    /// used, so what the node accepts is always what a restart would.
    async fn keyring_here(&self, op: KeyringOp) -> Result<KeyringView, RemoteError> {
        let change = match op {
            KeyringOp::List => return Ok(view(&self.keys.current(), false)),
            KeyringOp::Install(s) => Change::Install(s),
            KeyringOp::Use(s) => Change::Use(s),
            KeyringOp::Remove(s) => Change::Remove(s),
        };
        // One change at a time, each from the keyring the last one left.
        let _one = self.keyring_change.lock().await;
        let current = self.keys.current();
        let next = match current.changed(&change) {
            Ok(Some(next)) => next,
            Ok(None) => return Ok(view(&current, false)),
            Err(e) => return Err(RemoteError::invalid(e)),
        };
        let (file, saved) = (self.keyring_file.clone(), next.clone());
        let written = tokio::task::spawn_blocking(move || saved.save(&file))
            .await
            .unwrap_or_else(|e| {
                Err(KeyringError::Io {
                    path: self.keyring_file.display().to_string(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
        if let Err(e) = written {
            tracing::error!(error = %e, "the keyring was not changed: it could not be saved");
            return Err(RemoteError::Internal {
                node: self.name.to_string(),
                reason: format!("the keyring was not changed: {e}"),
            });
        }
        let (verb, fp) = match &change {
            Change::Install(s) => ("installed", keyring::fingerprint(s)),
            Change::Use(s) => ("now proving with", keyring::fingerprint(s)),
            Change::Remove(s) => ("removed", keyring::fingerprint(s)),
        };
        tracing::info!(secret = %fp, in_use = %keyring::fingerprint(next.in_use()), secrets = next.all().len(), "keyring changed: {verb} secret {fp}");
        let shown = view(&next, true);
        self.keys.replace(next);
        Ok(shown)
    }
}
