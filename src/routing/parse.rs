//! The text form of table entries: `a-m=foo`, `0x00-0x60=baz`, `a-m=foo+bar+baz`.
//!
//! Pure parsing and printing; what an entry means is `routing`'s.

use std::str::FromStr;

use super::{Entry, TableError};
use crate::names::NodeName;

impl FromStr for Entry {
    type Err = TableError;

    fn from_str(entry: &str) -> Result<Self, TableError> {
        let malformed = || TableError::Malformed {
            entry: entry.to_string(),
        };
        let (range, nodes) = entry.rsplit_once('=').ok_or_else(malformed)?;
        let (range, nodes) = (range.trim(), nodes.trim());
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
        let replicas = parse_replicas(entry, nodes)?;
        if first > last {
            return Err(TableError::Reversed {
                entry: entry.to_string(),
                first: byte_to_string(first),
                last: byte_to_string(last),
            });
        }
        Entry::new(first, last, replicas)
    }
}

/// `foo`, or `foo+bar+baz`: one name, or several joined by '+' (an empty one between two
/// '+' is named by its place; a lone empty name is a bad name, as it always was).
fn parse_replicas(entry: &str, nodes: &str) -> Result<Vec<NodeName>, TableError> {
    let parts: Vec<&str> = nodes.split('+').map(str::trim).collect();
    let several = parts.len() > 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, node)| {
            if several && node.is_empty() {
                return Err(TableError::EmptyReplica {
                    entry: entry.to_string(),
                    position: i + 1,
                });
            }
            NodeName::new(node).map_err(|e| TableError::BadNode {
                entry: entry.to_string(),
                reason: e.to_string(),
            })
        })
        .collect()
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
pub(super) fn byte_to_string(b: u8) -> String {
    if b.is_ascii_alphanumeric() {
        (b as char).to_string()
    } else {
        format!("0x{b:02x}")
    }
}
