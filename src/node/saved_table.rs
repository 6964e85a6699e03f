//! The routing table a durable node last held, kept in its data directory: restarted, the
//! node routes by the cluster's table from its first request, rather than by its start-up
//! table until gossip brings the newer one (meanwhile writes it took could land on a node
//! that no longer owns their bucket).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::names::NodeName;
use crate::routing::{Entry, RoutingTable};

/// The file's name under the data directory.
const FILE: &str = "routing-table";

/// Bumped if the file's layout changes; a file of an older format is read as it was written.
const FORMAT: u8 = 5;
/// The layout before tables carried the table to follow once their moves are done (wire
/// version 16): read with none to follow.
const FORMAT_NO_THEN: u8 = 4;
/// The layout before tables carried their groups' generations (wire version 15): every group
/// of such a table has `Generation::LEGACY`, as its groups' records have.
const FORMAT_NO_GENERATIONS: u8 = 3;
/// The layout before tables carried moves (wire version 12), read as it was written.
const FORMAT_NO_MOVES: u8 = 2;
/// The layout before entries held replicas (wire version 5): one node per entry. A node
/// upgraded over its data directory keeps the table it saved then.
const FORMAT_ONE_NODE: u8 = 1;

/// A table as [`FORMAT_NO_THEN`] laid it out.
#[derive(Deserialize)]
struct NoThenTable {
    entries: Vec<Entry>,
    version: u64,
    setter: String,
    moves: Vec<Entry>,
    generations: Vec<(u8, u8, kvnode_replica::Generation)>,
    ended: Vec<(u8, u8, kvnode_replica::Generation)>,
}

/// A table as [`FORMAT_NO_GENERATIONS`] laid it out.
#[derive(Deserialize)]
struct NoGenerationsTable {
    entries: Vec<Entry>,
    version: u64,
    setter: String,
    moves: Vec<Entry>,
}

/// A table as [`FORMAT_NO_MOVES`] laid it out.
#[derive(Deserialize)]
struct NoMovesTable {
    entries: Vec<Entry>,
    version: u64,
    setter: String,
}

/// A table as [`FORMAT_ONE_NODE`] laid it out.
#[derive(Deserialize)]
struct OneNodeTable {
    entries: Vec<(u8, u8, NodeName)>,
    version: u64,
    setter: String,
}

impl From<OneNodeTable> for (Vec<Entry>, u64, String) {
    fn from(t: OneNodeTable) -> Self {
        let entries = t
            .entries
            .into_iter()
            .map(|(first, last, node)| Entry::single(first, last, node));
        (entries.collect(), t.version, t.setter)
    }
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The table saved at `path`, if there is a sound one. A damaged file is not a reason to
/// refuse to start (the cluster gossips its table anyway): it is logged and passed over.
pub fn load(path: &Path) -> Option<RoutingTable> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the saved routing table; starting with the configured one");
            return None;
        }
    };
    let decoded = match bytes.split_first() {
        Some((&FORMAT, rest)) => {
            // `Deserialize` skips the whole table's checks: made here.
            let table = postcard::from_bytes::<RoutingTable>(rest)
                .ok()
                .filter(|t| kvnode_gossip::Table::check(t).is_ok());
            if table.is_none() {
                tracing::warn!(path = %path.display(), "the saved routing table is damaged; starting with the configured one");
            }
            return table;
        }
        Some((&FORMAT_NO_THEN, rest)) => {
            let table = postcard::from_bytes::<NoThenTable>(rest).ok().and_then(|t| {
                RoutingTable::restored(t.entries, t.version, t.setter, t.moves, t.generations, t.ended).ok()
            });
            if table.is_none() {
                tracing::warn!(path = %path.display(), "the saved routing table is damaged; starting with the configured one");
            }
            return table;
        }
        Some((&FORMAT_NO_GENERATIONS, rest)) => postcard::from_bytes::<NoGenerationsTable>(rest)
            .ok()
            .map(|t| (t.entries, t.version, t.setter, t.moves)),
        Some((&FORMAT_NO_MOVES, rest)) => postcard::from_bytes::<NoMovesTable>(rest)
            .ok()
            .map(|t| (t.entries, t.version, t.setter, Vec::new())),
        Some((&FORMAT_ONE_NODE, rest)) => postcard::from_bytes::<OneNodeTable>(rest).ok().map(|t| {
            let (entries, version, setter) = t.into();
            (entries, version, setter, Vec::new())
        }),
        _ => None,
    };
    // Built again through `new`: `Deserialize` skips its overlap check.
    let table = decoded.and_then(|(entries, version, setter, moves)| {
        RoutingTable::new(entries, version, setter)
            .and_then(|t| t.with_moves(moves))
            .ok()
    });
    if table.is_none() {
        tracing::warn!(path = %path.display(), "the saved routing table is damaged; starting with the configured one");
    }
    table
}

/// The saved table, if a starting node should route by it rather than by `configured`: when
/// it is newer, and not a table of the same version by the same setter (the node's own
/// configured table, edited since it was saved: the edit is the user's latest word).
pub fn restores(saved: Option<RoutingTable>, configured: &RoutingTable) -> Option<RoutingTable> {
    saved.filter(|s| {
        s.supersedes(configured) && (s.version(), s.setter()) != (configured.version(), configured.setter())
    })
}

/// Saves `table` at `path`, crash-safe (see [`write_atomically`]).
pub fn save(path: &Path, table: &RoutingTable) -> std::io::Result<()> {
    let mut bytes = vec![FORMAT];
    bytes.extend(postcard::to_stdvec(table).map_err(std::io::Error::other)?);
    write_atomically(path, &bytes)
}

/// Writes `bytes` beside `path`, syncs them, then renames them over it, so a crash leaves
/// the old content or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_saved_table_is_restored_but_not_over_an_edited_config() {
        let configured = RoutingTable::parse(["a-k=foo,l-z=bar"], 1, "foo").unwrap();
        let set_later = RoutingTable::parse(["a-z=bar"], 2, "foo").unwrap();
        assert_eq!(restores(Some(set_later.clone()), &configured), Some(set_later));
        // The same (version, setter) with the old entries: the edited configuration wins,
        // whichever way the entries happen to order.
        for old in ["a-m=foo,n-z=bar", "0-9=foo,a-z=bar"] {
            let old = RoutingTable::parse([old], 1, "foo").unwrap();
            assert_eq!(restores(Some(old), &configured), None);
        }
        let older = RoutingTable::parse(["a-z=foo"], 0, "foo").unwrap();
        assert_eq!(restores(Some(older), &configured), None);
        assert_eq!(restores(None, &configured), None);
    }

    #[test]
    fn a_saved_table_loads_back_and_damage_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        assert_eq!(load(&path), None, "nothing saved yet");
        let table = RoutingTable::parse(["a-m=foo,n-z=bar"], 7, "foo").unwrap();
        save(&path, &table).unwrap();
        assert_eq!(load(&path), Some(table.clone()));
        let newer = RoutingTable::parse(["0x00-0xff=bar"], 8, "bar").unwrap();
        save(&path, &newer).unwrap();
        assert_eq!(load(&path), Some(newer));

        let sound = std::fs::read(&path).unwrap();
        std::fs::write(&path, &sound[..sound.len() / 2]).unwrap();
        assert_eq!(load(&path), None, "truncated");
        std::fs::write(&path, [&[FORMAT + 1][..], &sound[1..]].concat()).unwrap();
        assert_eq!(load(&path), None, "another format");
        // Overlapping entries that serde alone would accept.
        let mut overlapping = vec![FORMAT];
        let entries = [table.entries(), table.entries()].concat();
        let (moves, none) = (Vec::<Entry>::new(), Vec::<(u8, u8, kvnode_replica::Generation)>::new());
        let then = Vec::<Entry>::new();
        overlapping.extend(postcard::to_stdvec(&(entries, 9u64, "foo", moves, none.clone(), none, then)).unwrap());
        std::fs::write(&path, overlapping).unwrap();
        assert_eq!(load(&path), None, "overlapping");
    }

    #[test]
    fn a_table_keeps_its_groups_generations_and_one_saved_before_them_has_the_legacy_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        // a-m's group born at version 7 (after a single owner's), n-z's ended.
        let before = RoutingTable::parse(["a-m=foo,n-z=bar+foo"], 6, "foo").unwrap();
        let table = RoutingTable::parse(["a-m=foo+bar+baz,n-z=bar"], 7, "foo")
            .unwrap()
            .with_generations(Some(&before));
        let generation = table.generation_of(b'a', b'm');
        assert_ne!(generation, kvnode_replica::Generation::LEGACY);
        assert!(table.has_ended(b'n', b'z', kvnode_replica::Generation::LEGACY));
        save(&path, &table).unwrap();
        assert_eq!(load(&path), Some(table.clone()));
        // Format 3, as wire version 14 wrote it: no generations.
        let mut old = vec![FORMAT_NO_GENERATIONS];
        old.extend(postcard::to_stdvec(&(table.entries(), 7u64, "foo", Vec::<Entry>::new())).unwrap());
        std::fs::write(&path, old).unwrap();
        let loaded = load(&path).expect("an older format loads");
        assert_eq!(loaded.entries(), table.entries());
        assert_eq!(loaded.generation_of(b'a', b'm'), kvnode_replica::Generation::LEGACY);
        // A generation given to a range that runs no group is damage.
        let mut bad = vec![FORMAT];
        let (generations, ended) = (
            vec![(b'n', b'z', generation)],
            Vec::<(u8, u8, kvnode_replica::Generation)>::new(),
        );
        let fields = (table.entries(), 7u64, "foo", Vec::<Entry>::new(), generations, ended);
        bad.extend(postcard::to_stdvec(&(fields.clone(), Vec::<Entry>::new())).unwrap());
        std::fs::write(&path, bad).unwrap();
        assert_eq!(load(&path), None);
        // Format 4, as wire version 15 wrote it: generations, nothing to follow.
        let mut old = vec![FORMAT_NO_THEN];
        let sound = (
            table.entries(),
            7u64,
            "foo",
            Vec::<Entry>::new(),
            vec![(b'a', b'm', generation)],
            vec![(b'n', b'z', kvnode_replica::Generation::LEGACY)],
        );
        old.extend(postcard::to_stdvec(&sound).unwrap());
        std::fs::write(&path, old).unwrap();
        assert_eq!(load(&path), Some(table.clone()));
        let mut old = vec![FORMAT_NO_THEN];
        old.extend(postcard::to_stdvec(&fields).unwrap());
        std::fs::write(&path, old).unwrap();
        assert_eq!(load(&path), None, "a generation for a range without a group, format 4");
    }

    #[test]
    fn a_table_keeps_the_table_it_is_to_follow() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let then = RoutingTable::parse(["a-f=foo+bar+baz,g-m=foo+bar+baz"], 0, "").unwrap();
        let table = RoutingTable::parse(["a-m=foo+bar+baz"], 7, "foo")
            .unwrap()
            .with_moves(vec!["a-m=foo".parse().unwrap()])
            .unwrap()
            .with_then(then.entries().to_vec())
            .unwrap();
        save(&path, &table).unwrap();
        assert_eq!(load(&path), Some(table.clone()));
        // Overlapping entries to follow are damage.
        let mut bad = vec![FORMAT];
        let none = Vec::<(u8, u8, kvnode_replica::Generation)>::new();
        let then = [then.entries(), then.entries()].concat();
        let fields = (table.entries(), 7u64, "foo", table.moves(), none.clone(), none, then);
        bad.extend(postcard::to_stdvec(&fields).unwrap());
        std::fs::write(&path, bad).unwrap();
        assert_eq!(load(&path), None);
    }

    #[test]
    fn a_table_saved_before_entries_held_replicas_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        // Format 1, as wire version 5 wrote it: (first, last, node) per entry.
        let mut old = vec![FORMAT_ONE_NODE];
        let entries = vec![(b'a', b'm', "foo"), (b'n', b'z', "bar")];
        old.extend(postcard::to_stdvec(&(entries, 7u64, "foo")).unwrap());
        std::fs::write(&path, old).unwrap();
        assert_eq!(
            load(&path),
            Some(RoutingTable::parse(["a-m=foo,n-z=bar"], 7, "foo").unwrap())
        );
    }
}
