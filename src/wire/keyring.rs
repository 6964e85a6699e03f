//! The messages of `kvnode secret` (issue 27, part 3): a change to the keyring, and what
//! each node reports of its keyring — fingerprints only, never a secret.

use serde::{Deserialize, Serialize};

use super::RemoteError;
use crate::names::NodeName;
use crate::secret::Secret;

/// What `kvnode secret` asks of a node's keyring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyringOp {
    /// The keyring as it is.
    List,
    /// Accept this secret too.
    Install(Secret),
    /// Prove this node's own connections with this installed secret.
    Use(Secret),
    /// Accept this secret no more (refused for the one in use).
    Remove(Secret),
}

impl KeyringOp {
    /// The command's word, for logs and reports.
    pub fn verb(&self) -> &'static str {
        match self {
            KeyringOp::List => "list",
            KeyringOp::Install(_) => "install",
            KeyringOp::Use(_) => "use",
            KeyringOp::Remove(_) => "remove",
        }
    }
}

/// One node's keyring, by fingerprint (`keyring::fingerprint`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringView {
    /// The secret the node proves its own connections with.
    pub in_use: String,
    /// Every secret it accepts, in the order installed (the one in use among them).
    pub installed: Vec<String>,
    /// Whether the request changed the keyring (false: it was so already, or a list).
    pub changed: bool,
}

/// One member's outcome of a `kvnode secret` request applied across the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKeyring {
    pub node: NodeName,
    pub result: Result<KeyringView, RemoteError>,
}
