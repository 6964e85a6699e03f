//! Member names: what the cluster knows a node by (SPEC §2).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest node name allowed (SPEC §2).
pub const MAX_NAME_LEN: usize = 64;

/// A validated node name: `[a-z0-9_-]{1,64}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NodeName(String);

/// Why a string is not a node name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("a node name cannot be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("node name {name:?} is {len} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong { name: String, len: usize },
    /// The name holds a character outside `[a-z0-9_-]`.
    #[error("node name {name:?} contains {bad:?}; names use only a-z, 0-9, '_' and '-'")]
    BadChar { name: String, bad: char },
}

impl NodeName {
    /// Validates `name` against `[a-z0-9_-]{1,64}`.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            let len = name.len();
            return Err(NameError::TooLong { name, len });
        }
        if let Some(bad) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-')) {
            return Err(NameError::BadChar { name, bad });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for NodeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for NodeName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NodeName::new(s).map_err(serde::de::Error::custom)
    }
}
