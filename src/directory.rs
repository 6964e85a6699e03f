//! The local node directory, `KVNODE_HOME/nodes/` (SPEC §2): epmd for kvnode.
//!
//! A running node holds an exclusive lock on `nodes/.NAME.lock` for its whole life and
//! publishes `nodes/NAME` (its address and pid). An entry whose lock nobody holds belongs to a
//! process that is gone (even after `kill -9`) and is ignored. File system only.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::names::NodeName;

/// One live node found in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: NodeName,
    pub addr: SocketAddr,
    pub pid: u32,
}

/// Why a node could not claim its name.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// Another live process holds the name in this `KVNODE_HOME`.
    #[error(
        "a node named {name} is already running from {home} (pid {pid}, address {addr}); stop it first or pick another --name"
    )]
    AlreadyRunning {
        name: NodeName,
        home: String,
        pid: String,
        addr: String,
    },
    #[error("cannot use the node directory {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// `KVNODE_HOME/nodes`.
#[derive(Clone, Debug)]
pub struct Directory {
    root: PathBuf,
}

/// A name held by this process; publish the address once bound, remove on clean exit.
#[derive(Debug)]
pub struct Claim {
    name: NodeName,
    entry: PathBuf,
    /// Holding the file holds the lock; the OS releases it when the process dies.
    _lock: File,
}

impl Directory {
    pub fn new(home: &Path) -> Self {
        Self {
            root: home.join("nodes"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> DirectoryError + use<> {
        let path = path.display().to_string();
        move |source| DirectoryError::Io { path, source }
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join(format!(".{name}.lock"))
    }

    /// Why the directory cannot be made where it should be, when something else is there
    /// (creating it would fail with a bare "File exists").
    fn root_unusable(&self) -> Option<String> {
        let found = std::fs::symlink_metadata(&self.root).ok()?;
        if self.root.is_dir() {
            return None;
        }
        if found.file_type().is_symlink() {
            let target = std::fs::read_link(&self.root).unwrap_or_default();
            let what = match self.root.exists() {
                false => "which does not exist; create that directory, or remove the link",
                true => "which is not a directory; point the link at a directory, or remove it",
            };
            return Some(format!("it is a symbolic link to {}, {what}", target.display()));
        }
        Some("it is a file, not a directory; move it away, or set KVNODE_HOME to another directory".into())
    }

    /// Takes the name for this process, or says who has it.
    pub fn claim(&self, name: &NodeName) -> Result<Claim, DirectoryError> {
        if let Some(why) = self.root_unusable() {
            return Err(self.io(&self.root)(std::io::Error::other(why)));
        }
        crate::secret::create_private_dir(&self.root).map_err(self.io(&self.root))?;
        let lock_path = self.lock_path(name.as_str());
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(self.io(&lock_path))?;
        // A client checking liveness holds a shared lock for a moment; retry briefly.
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let found = self.read_entry(name.as_str());
                    return Err(DirectoryError::AlreadyRunning {
                        name: name.clone(),
                        home: self.root.parent().unwrap_or(&self.root).display().to_string(),
                        pid: found.as_ref().map_or("unknown".into(), |e| e.pid.to_string()),
                        addr: found.as_ref().map_or("unknown".into(), |e| e.addr.to_string()),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(self.io(&lock_path)(e)),
            }
        }
        Ok(Claim {
            name: name.clone(),
            entry: self.root.join(name.as_str()),
            _lock: lock,
        })
    }

    /// The live node called `name`, if any.
    pub fn lookup(&self, name: &str) -> Option<DirEntry> {
        let entry = self.read_entry(name)?;
        self.is_live(name).then_some(entry)
    }

    /// The address `name` last published, even if its process is gone (to name it in errors).
    pub fn last_known(&self, name: &str) -> Option<DirEntry> {
        self.read_entry(name)
    }

    /// Every live node, sorted by name.
    pub fn live_nodes(&self) -> Vec<DirEntry> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut nodes: Vec<DirEntry> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| self.lookup(&n))
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    fn read_entry(&self, name: &str) -> Option<DirEntry> {
        let name = NodeName::new(name).ok()?;
        let text = std::fs::read_to_string(self.root.join(name.as_str())).ok()?;
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
        };
        Some(DirEntry {
            addr: field("addr")?.parse().ok()?,
            pid: field("pid")?.parse().ok()?,
            name,
        })
    }

    /// A node is live while some process holds its lock exclusively.
    fn is_live(&self, name: &str) -> bool {
        let Ok(lock) = File::open(self.lock_path(name)) else {
            return false;
        };
        match lock.try_lock_shared() {
            Ok(()) => false, // nobody holds it: the process is gone
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(std::fs::TryLockError::Error(_)) => false,
        }
    }
}

impl Claim {
    /// Publishes the bound address (atomically: written aside, then renamed into place).
    pub fn publish(&self, addr: SocketAddr) -> std::io::Result<()> {
        let tmp = self.entry.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = File::create(&tmp)?;
        write!(f, "addr={addr}\npid={}\n", std::process::id())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.entry)
    }

    pub fn name(&self) -> &NodeName {
        &self.name
    }

    /// Removes the entry on a clean exit; the lock goes with the process.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> NodeName {
        NodeName::new(n).unwrap()
    }

    #[test]
    fn a_claimed_and_published_node_is_found_until_removed() {
        let home = tempfile::tempdir().unwrap();
        let dir = Directory::new(home.path());
        let claim = dir.claim(&name("foo")).unwrap();
        assert_eq!(dir.lookup("foo"), None, "not published yet");
        claim.publish("127.0.0.1:4040".parse().unwrap()).unwrap();
        let found = dir.lookup("foo").unwrap();
        assert_eq!((found.addr.port(), found.pid), (4040, std::process::id()));
        assert_eq!(dir.live_nodes().len(), 1);
        claim.remove();
        assert_eq!(dir.lookup("foo"), None);
        assert!(dir.live_nodes().is_empty());
    }

    /// Why claiming "foo" in the node directory of `home` is refused.
    fn claim_refused(home: &Path) -> String {
        Directory::new(home).claim(&name("foo")).err().unwrap().to_string()
    }

    #[test]
    fn a_node_directory_that_is_a_file_says_so() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("nodes"), "").unwrap();
        let err = claim_refused(home.path());
        assert!(
            err.contains("it is a file, not a directory") && !err.contains("File exists"),
            "{err}"
        );
    }

    #[test]
    fn a_node_directory_that_is_a_dangling_link_says_so() {
        let home = tempfile::tempdir().unwrap();
        let gone = home.path().join("gone");
        std::os::unix::fs::symlink(&gone, home.path().join("nodes")).unwrap();
        let err = claim_refused(home.path());
        assert!(
            err.contains("symbolic link")
                && err.contains(&gone.display().to_string())
                && err.contains("does not exist"),
            "{err}"
        );
        // A link to a file.
        std::fs::write(&gone, "").unwrap();
        let err = claim_refused(home.path());
        assert!(err.contains("which is not a directory"), "{err}");
        std::fs::remove_file(&gone).unwrap();
        // A link to a directory is used as the directory.
        std::fs::create_dir(&gone).unwrap();
        assert!(Directory::new(home.path()).claim(&name("foo")).is_ok());
    }

    #[test]
    fn a_second_claim_on_a_live_name_is_refused_with_the_holder() {
        let home = tempfile::tempdir().unwrap();
        let dir = Directory::new(home.path());
        let claim = dir.claim(&name("foo")).unwrap();
        claim.publish("127.0.0.1:4040".parse().unwrap()).unwrap();
        let err = dir.claim(&name("foo")).unwrap_err().to_string();
        assert!(
            err.contains("already running") && err.contains("127.0.0.1:4040"),
            "{err}"
        );
    }

    #[test]
    fn an_entry_left_by_a_dead_process_is_ignored_and_reclaimable() {
        let home = tempfile::tempdir().unwrap();
        let dir = Directory::new(home.path());
        std::fs::create_dir_all(dir.root()).unwrap();
        std::fs::write(dir.root().join("ghost"), "addr=127.0.0.1:1\npid=999999\n").unwrap();
        assert_eq!(dir.lookup("ghost"), None);
        assert!(dir.live_nodes().is_empty());
        let claim = dir.claim(&name("ghost")).unwrap();
        claim.publish("127.0.0.1:2".parse().unwrap()).unwrap();
        assert_eq!(dir.lookup("ghost").unwrap().addr.port(), 2);
    }
}
