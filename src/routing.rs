//! The routing table: which node owns a bucket, by the first byte of its name (SPEC §5).
//!
//! Pure data and parsing; it knows no network and no gossip. Routing a request by this table,
//! and forwarding it to the owner, is the node's (`node::handler`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::{NodeName, escape_bytes};

/// One entry: buckets whose first byte is in `first..=last` belong to `node`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub first: u8,
    pub last: u8,
    pub node: NodeName,
}

/// An ordered list of entries plus the version that orders tables cluster-wide.
///
/// Two tables are compared by `(version, setter)`, then by their entries: the higher wins
/// everywhere, so every node settles on the same table however the updates arrive.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoutingTable {
    entries: Vec<Entry>,
    version: u64,
    setter: String,
}

/// Why a table specification was refused; every variant quotes the offending entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The specification holds no entry.
    #[error("the routing table is empty; give entries like 'a-m=foo,n-z=bar'")]
    Empty,
    /// Two commas in a row, or one at either end: an entry left out by mistake, perhaps.
    #[error("routing table {spec:?}: entry {position} is empty; remove the extra comma")]
    EmptyEntry { spec: String, position: usize },
    /// An entry is not `RANGE=NODE`.
    #[error("routing entry {entry:?} is not RANGE=NODE (like 'a-m=foo' or '0x00-0x60=baz')")]
    Malformed { entry: String },
    /// A range bound is not a single printable character or `0xNN`.
    #[error("routing entry {entry:?}: {bound:?} is not a byte; use one printable ASCII character or 0x00-0xff")]
    BadByte { entry: String, bound: String },
    /// `first` comes after `last`.
    #[error("routing entry {entry:?} is reversed: {first} comes after {last}")]
    Reversed { entry: String, first: String, last: String },
    /// The node name is not a valid name.
    #[error("routing entry {entry:?}: {reason}")]
    BadNode { entry: String, reason: String },
    /// Two entries cover a common byte.
    #[error("routing entries {first:?} and {second:?} overlap")]
    Overlap { first: String, second: String },
}

impl RoutingTable {
    /// The table of a lone node that owns everything, at version 0 so any configured
    /// table a cluster gossips wins over it.
    pub fn owns_everything(node: &NodeName) -> Self {
        Self {
            entries: vec![Entry {
                first: 0x00,
                last: 0xff,
                node: node.clone(),
            }],
            version: 0,
            setter: node.to_string(),
        }
    }

    /// Builds a table from entries, checking that no two overlap.
    pub fn new(entries: Vec<Entry>, version: u64, setter: impl Into<String>) -> Result<Self, TableError> {
        if entries.is_empty() {
            return Err(TableError::Empty);
        }
        for (i, a) in entries.iter().enumerate() {
            for b in &entries[..i] {
                if a.first <= b.last && b.first <= a.last {
                    return Err(TableError::Overlap {
                        first: b.to_string(),
                        second: a.to_string(),
                    });
                }
            }
        }
        Ok(Self {
            entries,
            version,
            setter: setter.into(),
        })
    }

    /// Parses `a-m=foo,n-z=bar` (or a list of such entries from a config file).
    pub fn parse<'a>(
        specs: impl IntoIterator<Item = &'a str>,
        version: u64,
        setter: impl Into<String>,
    ) -> Result<Self, TableError> {
        let specs: Vec<&str> = specs.into_iter().collect();
        if specs.iter().all(|s| s.trim().is_empty()) {
            return Err(TableError::Empty);
        }
        let mut entries = Vec::new();
        for spec in specs {
            if spec.trim().is_empty() {
                // An empty string in a config file's list, beside real entries.
                return Err(TableError::Malformed {
                    entry: spec.to_string(),
                });
            }
            for (i, entry) in spec.split(',').map(str::trim).enumerate() {
                if entry.is_empty() {
                    return Err(TableError::EmptyEntry {
                        spec: spec.to_string(),
                        position: i + 1,
                    });
                }
                entries.push(entry.parse()?);
            }
        }
        Self::new(entries, version, setter)
    }

    /// The node that owns `bucket`, by its first byte; the first matching entry wins.
    pub fn owner_of(&self, bucket: &[u8]) -> Option<&NodeName> {
        let first = *bucket.first()?;
        self.entries
            .iter()
            .find(|e| e.first <= first && first <= e.last)
            .map(|e| &e.node)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The node that set this version (`route --set` on it, or its config file).
    pub fn setter(&self) -> &str {
        &self.setter
    }

    /// Whether `self` should replace `other`: the higher `(version, setter)` wins, and two
    /// different tables under one pair (a node's config file edited between two starts,
    /// while the cluster still holds the old table) are ordered by their entries, so that
    /// every node still settles on one of them.
    pub fn supersedes(&self, other: &RoutingTable) -> bool {
        (self.version, &self.setter, &self.entries) > (other.version, &other.setter, &other.entries)
    }

    /// The same entries under a new version and setter (`route --set`).
    pub fn with_version(mut self, version: u64, setter: impl Into<String>) -> Self {
        self.version = version;
        self.setter = setter.into();
        self
    }

    /// Every node the table names, once each.
    pub fn nodes(&self) -> Vec<&NodeName> {
        let mut nodes: Vec<&NodeName> = self.entries.iter().map(|e| &e.node).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// The error text for a bucket the table does not cover: the tutorial's message, then
    /// the byte no entry covers (a bucket name shown escaped hides which byte counts) and
    /// how to cover it.
    pub fn no_entry_message(&self, bucket: &[u8]) -> String {
        let byte = match bucket.first() {
            Some(&b) if b.is_ascii_graphic() => format!("0x{b:02x} ('{}')", b as char),
            Some(&b) => format!("0x{b:02x}"),
            None => "(none: the name is empty)".into(),
        };
        format!(
            "could not find entry for \"{}\" in routing table {self} (version {}): no entry covers its first byte {byte}; \
             add a range for it, or use 0x00-0xff to cover every byte (`kvnode route --set`)",
            escape_bytes(bucket),
            self.version
        )
    }
}

impl fmt::Display for RoutingTable {
    /// `[a-m=foo, n-z=bar]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{e}")?;
        }
        f.write_str("]")
    }
}

impl Entry {
    /// The range alone: `a-m`, `0x00-0x60`, or `x` for a single byte.
    pub fn range(&self) -> String {
        if self.first == self.last {
            byte_to_string(self.first)
        } else {
            format!("{}-{}", byte_to_string(self.first), byte_to_string(self.last))
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.range(), self.node)
    }
}

impl FromStr for Entry {
    type Err = TableError;

    fn from_str(entry: &str) -> Result<Self, TableError> {
        let malformed = || TableError::Malformed {
            entry: entry.to_string(),
        };
        let (range, node) = entry.rsplit_once('=').ok_or_else(malformed)?;
        let (range, node) = (range.trim(), node.trim());
        let (first, last) = split_range(range).ok_or_else(malformed)?;
        let parse = |bound: &str| {
            if bound.len() > 1 && bound.contains('=') {
                // 'a-m=foo=bar', 'a-m=foo;n-z=bar': more than one '=' in the entry.
                return Err(malformed());
            }
            parse_byte(bound).ok_or_else(|| TableError::BadByte {
                entry: entry.to_string(),
                bound: bound.to_string(),
            })
        };
        let (first, last) = (parse(first)?, parse(last)?);
        // After the range, so that an entry with two '=' is malformed, not a bad name.
        let node = NodeName::new(node).map_err(|e| TableError::BadNode {
            entry: entry.to_string(),
            reason: e.to_string(),
        })?;
        if first > last {
            return Err(TableError::Reversed {
                entry: entry.to_string(),
                first: byte_to_string(first),
                last: byte_to_string(last),
            });
        }
        Ok(Entry { first, last, node })
    }
}

/// Splits `a-m`, `0x00-0x60`, `--0x7f` (from '-') or a single bound `x` into its two bounds.
fn split_range(range: &str) -> Option<(&str, &str)> {
    if range.is_empty() {
        return None;
    }
    if range.chars().count() == 1 || (range.starts_with("0x") && range.len() == 4) {
        return Some((range, range));
    }
    // The separator is the '-' after the first bound, which is one character or `0xNN`.
    let first_len = if range.starts_with("0x") {
        4
    } else {
        range.chars().next()?.len_utf8()
    };
    let (first, rest) = range.split_at_checked(first_len)?;
    let last = rest.strip_prefix('-')?;
    (!last.is_empty()).then_some((first, last))
}

fn parse_byte(bound: &str) -> Option<u8> {
    if let Some(hex) = bound.strip_prefix("0x") {
        return (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten();
    }
    match bound.as_bytes() {
        [b] if b.is_ascii_graphic() => Some(*b),
        _ => None,
    }
}

/// A bound as tables are shown: a letter or digit as itself, any other byte in hex (a
/// backtick or a brace reads badly, and pastes badly into a shell).
fn byte_to_string(b: u8) -> String {
    if b.is_ascii_alphanumeric() {
        (b as char).to_string()
    } else {
        format!("0x{b:02x}")
    }
}

/// The table gossip spreads (SPEC §6): the newest by version, then setter, wins everywhere.
impl kvnode_gossip::Table for RoutingTable {
    fn supersedes(&self, other: &Self) -> bool {
        RoutingTable::supersedes(self, other)
    }

    fn version(&self) -> u64 {
        RoutingTable::version(self)
    }

    /// Tables derive `Deserialize` without the overlap check [`RoutingTable::new`] makes.
    fn check(&self) -> Result<(), String> {
        RoutingTable::new(self.entries.clone(), self.version, self.setter.clone())
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(spec: &str) -> RoutingTable {
        RoutingTable::parse([spec], 1, "test").unwrap()
    }

    fn name(n: &str) -> NodeName {
        NodeName::new(n).unwrap()
    }

    #[test]
    fn the_tutorial_table_routes_hello_to_foo_and_world_to_bar() {
        let t = table("a-m=foo,n-z=bar");
        assert_eq!(t.owner_of(b"hello"), Some(&name("foo")));
        assert_eq!(t.owner_of(b"world"), Some(&name("bar")));
        assert_eq!(t.owner_of(b"\x00"), None);
        assert_eq!(t.owner_of(b""), None);
        assert!(
            t.no_entry_message(b"\x00")
                .starts_with(r#"could not find entry for "\x00" in routing table [a-m=foo, n-z=bar] (version 1)"#)
        );
    }

    #[test]
    fn a_bucket_outside_every_range_names_its_first_byte_and_how_to_cover_it() {
        let t = table("a-m=foo,n-z=bar");
        let said = t.no_entry_message(b"Apples");
        assert!(
            said.starts_with(r#"could not find entry for "Apples" in routing table [a-m=foo, n-z=bar] (version 1)"#),
            "the guide's words first: {said}"
        );
        assert!(said.contains("first byte 0x41 ('A')"), "{said}");
        assert!(said.contains("add a range") && said.contains("0x00-0xff"), "{said}");
        // A byte that is no printable character is given in hex alone.
        let said = t.no_entry_message(b"\x00");
        assert!(said.contains("first byte 0x00;"), "{said}");
    }

    #[test]
    fn byte_forms_single_characters_and_digits_parse() {
        let t = table("0x00-0x2f=baz, 0-9=qux, x=one, 0x7f=del");
        assert_eq!(t.owner_of(b"\x10"), Some(&name("baz")));
        assert_eq!(t.owner_of(b"5"), Some(&name("qux")));
        assert_eq!(t.owner_of(b"x"), Some(&name("one")));
        assert_eq!(t.owner_of(b"\x7f"), Some(&name("del")));
        assert_eq!(t.owner_of(b"a"), None);
    }

    #[test]
    fn digits_range_is_characters_not_bytes() {
        let t = table("0-9=digits");
        assert_eq!(t.owner_of(b"42"), Some(&name("digits")));
        assert_eq!(t.owner_of(b"\x00"), None);
    }

    #[test]
    fn overlapping_reversed_and_bad_entries_are_refused_with_the_entry_quoted() {
        let err = |s: &str| RoutingTable::parse([s], 1, "t").unwrap_err().to_string();
        assert_eq!(
            err("a-m=foo,k-z=bar"),
            r#"routing entries "a-m=foo" and "k-z=bar" overlap"#
        );
        assert!(err("z-a=foo").contains(r#""z-a=foo" is reversed"#));
        assert!(err("a-m=Foo").contains(r#""a-m=Foo""#));
        assert!(err("a-m").contains("is not RANGE=NODE"));
        assert!(err("a-m=foo=bar").contains(r#""a-m=foo=bar" is not RANGE=NODE"#));
        assert!(err("a-m=foo;n-z=bar").contains(r#""a-m=foo;n-z=bar" is not RANGE=NODE"#));
        assert!(err("a-m=foo=").contains(r#""a-m=foo=" is not RANGE=NODE"#));
        assert!(err("a-m=foo;n-z=Bar").contains(r#""a-m=foo;n-z=Bar" is not RANGE=NODE"#));
        // '=' itself is a byte a range may name.
        assert_eq!(table("==foo,a-z=bar").owner_of(b"=x"), Some(&name("foo")));
        assert_eq!(table("0-==foo").owner_of(b"5"), Some(&name("foo")));
        assert!(err("ab-m=foo").contains("\"ab-m=foo\""));
        assert!(err("0x1-0x20=foo").contains("\"0x1-0x20=foo\""));
        assert!(err("é=foo").contains("\"é\""));
        assert_eq!(err(""), TableError::Empty.to_string());
        assert_eq!(err("  "), TableError::Empty.to_string());
    }

    #[test]
    fn an_empty_entry_is_refused_with_its_place() {
        let err = |specs: &[&str]| {
            RoutingTable::parse(specs.iter().copied(), 1, "t")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&["a-m=foo,,n-z=bar"]),
            r#"routing table "a-m=foo,,n-z=bar": entry 2 is empty; remove the extra comma"#
        );
        assert!(err(&["a-m=foo,"]).contains("entry 2 is empty"));
        assert!(err(&[",a-m=foo"]).contains("entry 1 is empty"));
        // A config file's list: an empty string among entries.
        assert!(err(&["a-m=foo", ""]).contains(r#"routing entry "" is not RANGE=NODE"#));
    }

    #[test]
    fn display_round_trips_through_parse() {
        for spec in [
            "a-m=foo,n-z=bar",
            "0x00-0x2c=baz,0x2d=dash,0x80-0xff=hi",
            "0x00-0xff=solo",
        ] {
            let t = table(spec);
            let shown = t.to_string();
            let inner = shown.trim_start_matches('[').trim_end_matches(']');
            let again = RoutingTable::parse([inner.replace(", ", ",").as_str()], 1, "test").unwrap();
            assert_eq!(t, again, "{shown}");
        }
    }

    #[test]
    fn two_different_tables_never_tie() {
        let old = table("a-m=foo,n-z=bar");
        let edited = table("a-k=foo,l-z=bar");
        assert_eq!((old.version(), old.setter()), (edited.version(), edited.setter()));
        // Exactly one of the two wins, whichever node compares them: no split brain.
        assert!(old.supersedes(&edited) != edited.supersedes(&old));
        assert!(!old.supersedes(&old.clone()));
        // Version, then setter, still come first.
        assert!(old.clone().with_version(2, "a").supersedes(&edited));
        assert!(edited.clone().with_version(1, "zzz").supersedes(&old));
    }

    #[test]
    fn bounds_show_as_letters_and_digits_or_in_hex() {
        // As written by the user, not as the punctuation those bytes happen to be.
        let shown = table("0x00-0x60=m1,a-m=m2,n-z=m3,0x7b-0xff=m1").to_string();
        assert!(
            shown.starts_with("[0x00-0x60=m1, a-m=m2, n-z=m3, 0x7b-0xff=m1]"),
            "{shown}"
        );
        assert!(table("!-/=p,0-9=d").to_string().starts_with("[0x21-0x2f=p, 0-9=d]"));
    }

    #[test]
    fn higher_version_then_higher_setter_wins() {
        let a = table("a-z=foo").with_version(2, "alpha");
        let b = table("a-z=bar").with_version(2, "beta");
        let c = table("a-z=baz").with_version(3, "alpha");
        assert!(b.supersedes(&a));
        assert!(!a.supersedes(&b));
        assert!(c.supersedes(&b));
        assert!(!a.supersedes(&a));
    }

    #[test]
    fn a_lone_node_owns_every_first_byte() {
        let t = RoutingTable::owns_everything(&name("solo"));
        for b in 0..=255u8 {
            assert_eq!(t.owner_of(&[b, 1]), Some(&name("solo")));
        }
        assert_eq!(t.version(), 0);
    }

    #[test]
    fn gossip_refuses_an_overlapping_table_at_decode() {
        use std::sync::Arc;

        use kvnode_gossip::{Ident, Message, Sender, SharedTable, Update};
        // A table that could never be built through RoutingTable::new, smuggled through serde.
        let good = RoutingTable::parse(["a-m=foo,n-z=bar"], 4, "foo").unwrap();
        let from = Sender {
            id: Ident::new(name("foo"), "127.0.0.1:4000".parse().unwrap(), 7),
            incarnation: 3,
        };
        let msg: Message<RoutingTable> = Message::Gossip {
            from,
            piggyback: vec![Update::Table(SharedTable(Arc::new(good)))],
        };
        let mut bytes = msg.encode();
        assert!(Message::<RoutingTable>::decode(&bytes).is_ok());
        // Entries are (first, last, name); make n-z start at 'a' so it overlaps a-m.
        let pos = bytes.windows(2).position(|w| w == [b'n', b'z']).unwrap();
        bytes[pos] = b'a';
        assert!(matches!(
            Message::<RoutingTable>::decode(&bytes),
            Err(kvnode_gossip::DecodeError::InvalidTable(_))
        ));
    }
}
