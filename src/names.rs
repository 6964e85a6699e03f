//! Node names and the ways a user can point at a node (`name`, `name@host:port`, `host:port`).
//!
//! Pure parsing: no directory lookups and no DNS here (see `directory` and `client`).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::Deserialize;

pub use kvnode_gossip::{MAX_NAME_LEN, NameError, NodeName};

/// How a user names a node on the command line or in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeRef {
    /// `foo`: looked up in the local directory, then in gossip membership.
    Name(NodeName),
    /// `foo@host:port`: an address, and the name the node there must have.
    NameAt(NodeName, HostPort),
    /// `host:port`: whatever node listens there.
    Addr(HostPort),
}

/// A `host:port` pair whose host may still need resolving (`localhost:4040`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// The address when the host is an IP literal, without touching DNS.
    pub fn as_socket_addr(&self) -> Option<SocketAddr> {
        format!("{self}").parse().ok()
    }

    /// The address, asking DNS (on a blocking thread, not the event loop) when the host is
    /// a name.
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        if let Some(addr) = self.as_socket_addr() {
            return Ok(addr);
        }
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address found"))
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // An address to reach a node at: port 0 is where nothing listens.
        let reachable = |port: u16| match port {
            0 => Err(format!(
                "port 0 in {s:?} is no node's port; give the port it listens on"
            )),
            port => Ok(port),
        };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self {
                host: addr.ip().to_string(),
                port: reachable(addr.port())?,
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} has no port; write HOST:PORT"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{port:?} in {s:?} is not a port number (1-65535)"))
            .and_then(reachable)?;
        if host.is_empty() || host.contains(['@', '/', ' ']) {
            return Err(format!("{host:?} in {s:?} is not a host name"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl FromStr for NodeRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const FORMS: &str = "give NAME, NAME@HOST:PORT or HOST:PORT";
        if let Some((name, addr)) = s.split_once('@') {
            let name = NodeName::new(name).map_err(|e| format!("{e}; {FORMS}"))?;
            let addr = addr.parse().map_err(|e| format!("{e}; {FORMS}"))?;
            return Ok(NodeRef::NameAt(name, addr));
        }
        if s.contains(':') {
            return s.parse().map(NodeRef::Addr).map_err(|e| format!("{e}; {FORMS}"));
        }
        NodeName::new(s).map(NodeRef::Name).map_err(|e| format!("{e}; {FORMS}"))
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeRef::Name(n) => write!(f, "{n}"),
            NodeRef::NameAt(n, a) => write!(f, "{n}@{a}"),
            NodeRef::Addr(a) => write!(f, "{a}"),
        }
    }
}

impl<'de> Deserialize<'de> for NodeRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Escapes bytes for display the way Rust writes byte strings: printable ASCII as is,
/// everything else as `\xNN` (so `<<0>>` shows as `"\x00"`). Used for buckets and chat lines
/// so no peer can put control characters on a terminal.
pub fn escape_bytes(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Escapes control characters in text while keeping printable Unicode as is.
pub fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_are_accepted() {
        for n in ["foo", "a", "node-1", "x_y", &"z".repeat(64)] {
            assert!(NodeName::new(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn invalid_names_say_why() {
        assert_eq!(NodeName::new(""), Err(NameError::Empty));
        assert!(matches!(
            NodeName::new("z".repeat(65)),
            Err(NameError::TooLong { len: 65, .. })
        ));
        assert!(matches!(NodeName::new("Foo"), Err(NameError::BadChar { bad: 'F', .. })));
        assert!(matches!(NodeName::new("a b"), Err(NameError::BadChar { bad: ' ', .. })));
    }

    #[test]
    fn node_refs_parse_in_all_three_forms() {
        assert_eq!(
            "foo".parse::<NodeRef>().unwrap(),
            NodeRef::Name(NodeName::new("foo").unwrap())
        );
        let NodeRef::NameAt(n, a) = "foo@127.0.0.1:4040".parse::<NodeRef>().unwrap() else {
            panic!()
        };
        assert_eq!((n.as_str(), a.as_socket_addr().unwrap().port()), ("foo", 4040));
        let NodeRef::Addr(a) = "localhost:99".parse::<NodeRef>().unwrap() else {
            panic!()
        };
        assert_eq!((a.host.as_str(), a.port), ("localhost", 99));
        let NodeRef::Addr(a) = "[::1]:7".parse::<NodeRef>().unwrap() else {
            panic!()
        };
        assert_eq!(a.to_string(), "[::1]:7");
        assert!("foo@".parse::<NodeRef>().is_err());
        assert!("host:notaport".parse::<NodeRef>().is_err());
        assert!("Foo".parse::<NodeRef>().is_err());
        // Port 0 is nowhere to connect to.
        for zero in ["127.0.0.1:0", "foo@127.0.0.1:0", "localhost:0"] {
            let err = zero.parse::<NodeRef>().unwrap_err();
            assert!(err.contains("port 0"), "{zero}: {err}");
        }
    }

    #[test]
    fn escaping_hides_control_characters() {
        assert_eq!(escape_bytes(b"\x00"), "\\x00");
        assert_eq!(escape_bytes(b"Apple"), "Apple");
        assert_eq!(escape_text("hi\x1b[2J"), "hi\\u{1b}[2J");
        assert_eq!(escape_text("héllo"), "héllo");
    }
}
