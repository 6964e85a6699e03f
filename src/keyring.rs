//! A node's keyring: the secrets it accepts, and the one it proves its own connections with
//! (issue 27, part 3; as Serf's and Consul's keyring). Its file, and the changes
//! `kvnode secret install|use|remove` make to it.
//!
//! File system and data only: no network. The handshake that uses it is in `auth`; the node
//! holds it in a [`SharedKeyring`] and spreads changes to its cluster (`node::keys`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use crate::secret::Secret;

/// The keyring file's name in a node's data directory.
pub const FILE_NAME: &str = "keyring";

/// The fewest bytes a secret newly installed may have: 128 bits, as Consul's smallest key.
/// (A secret a cluster started with is taken as it is, so clusters made before keep working.)
pub const MIN_NEW_SECRET: usize = 16;

const HEADER: &str = "# kvnode keyring, format 1: the secrets this node accepts, in hex; \
\"use\" marks the one it proves with. Changed by `kvnode secret install|use|remove`; mode 0600.";

/// The first 8 hex digits of the SHA-256 of a secret: names it in lists and logs without
/// saying it (as `ssh-keygen -l` names a key).
pub fn fingerprint(secret: &Secret) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    hex(&digest.as_ref()[..4])
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why a keyring cannot be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The file is not in the keyring format.
    #[error(
        "the keyring {path} is corrupt (line {line}: {reason}); restore it from a backup, or delete it to start from --secret-file (or KVNODE_SECRET) again"
    )]
    Corrupt { path: String, line: usize, reason: String },
    /// The file's mode lets group or others read it.
    #[error("the keyring {path} is readable by group or others (mode {mode:04o}); run: chmod 600 {path}")]
    TooOpen { path: String, mode: u32 },
    /// The file could not be read or written.
    #[error("cannot use the keyring {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// `use` of a secret not installed.
    #[error("the secret {0} is not installed; install it first (kvnode secret install FILE)")]
    NotInstalled(String),
    /// `remove` of the secret in use.
    #[error(
        "the secret {0} is the one in use; `kvnode secret use` another installed secret first, then remove this one"
    )]
    InUse(String),
    /// `install` of a secret too short to be a good one.
    #[error(
        "a new secret must be at least {MIN_NEW_SECRET} bytes, and this one is {0}; make one with `kvnode keygen --output FILE`"
    )]
    TooShort(usize),
}

/// A change to a keyring, as `kvnode secret` asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Install(Secret),
    Use(Secret),
    Remove(Secret),
}

/// The secrets a node accepts, in the order they were installed, and the one in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<Secret>,
    in_use: usize,
}

impl Keyring {
    /// A keyring of one secret, in use: what a node has before any `kvnode secret` change.
    pub fn new(secret: Secret) -> Self {
        Self {
            keys: vec![secret],
            in_use: 0,
        }
    }

    /// The secret this node proves its own connections with.
    pub fn in_use(&self) -> &Secret {
        &self.keys[self.in_use]
    }

    /// Every secret accepted, in the order installed.
    pub fn all(&self) -> &[Secret] {
        &self.keys
    }

    pub fn holds(&self, secret: &Secret) -> bool {
        self.keys.contains(secret)
    }

    /// The keyring with `change` made; `None` if it changes nothing (installing a secret
    /// held, using the one in use, removing one not held), so that a change may be repeated.
    pub fn changed(&self, change: &Change) -> Result<Option<Keyring>, KeyringError> {
        let mut next = self.clone();
        match change {
            Change::Install(s) if self.holds(s) => return Ok(None),
            Change::Install(s) if s.as_bytes().len() < MIN_NEW_SECRET => {
                return Err(KeyringError::TooShort(s.as_bytes().len()));
            }
            Change::Install(s) => next.keys.push(s.clone()),
            Change::Use(s) => match self.keys.iter().position(|k| k == s) {
                None => return Err(KeyringError::NotInstalled(fingerprint(s))),
                Some(i) if i == self.in_use => return Ok(None),
                Some(i) => next.in_use = i,
            },
            Change::Remove(s) => match self.keys.iter().position(|k| k == s) {
                None => return Ok(None),
                Some(i) if i == self.in_use => return Err(KeyringError::InUse(fingerprint(s))),
                Some(i) => {
                    next.keys.remove(i);
                    if i < next.in_use {
                        next.in_use -= 1;
                    }
                }
            },
        }
        Ok(Some(next))
    }

    /// Whether `password` is one of the secrets, each compared in constant time (by
    /// `hmac::verify` over a MAC of each: whatever the password's length), all of them
    /// whichever matches. For the RESP listener's `AUTH`.
    pub fn accepts_password(&self, password: &[u8]) -> bool {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"kvnode keyring password check");
        self.keys.iter().fold(false, |found, secret| {
            let tag = ring::hmac::sign(&key, secret.as_bytes());
            ring::hmac::verify(&key, password, tag.as_ref()).is_ok() | found
        })
    }

    /// The file's text: a header, then one line per secret, `use HEX` or `installed HEX`.
    pub fn encode(&self) -> String {
        let mut text = format!("{HEADER}\n");
        for (i, key) in self.keys.iter().enumerate() {
            let mark = if i == self.in_use { "use" } else { "installed" };
            let _ = writeln!(text, "{mark} {}", hex(key.as_bytes()));
        }
        text
    }

    /// Reads [`Keyring::encode`]'s text; `path` is for the error.
    pub fn decode(text: &str, path: &Path) -> Result<Self, KeyringError> {
        let corrupt = |line: usize, reason: &str| KeyringError::Corrupt {
            path: path.display().to_string(),
            line,
            reason: reason.to_string(),
        };
        let (mut keys, mut in_use) = (Vec::new(), None);
        for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (mark, value) = line
                .split_once(' ')
                .ok_or_else(|| corrupt(n, "expected `use HEX` or `installed HEX`"))?;
            let bytes = unhex(value.trim()).ok_or_else(|| corrupt(n, "the secret is not hex"))?;
            let secret = Secret::new(bytes).map_err(|_| corrupt(n, "an empty secret"))?;
            if keys.contains(&secret) {
                return Err(corrupt(n, "a secret listed twice"));
            }
            match mark {
                "use" if in_use.is_some() => return Err(corrupt(n, "a second secret marked `use`")),
                "use" => in_use = Some(keys.len()),
                "installed" => {}
                _ => return Err(corrupt(n, "expected `use HEX` or `installed HEX`")),
            }
            keys.push(secret);
        }
        let in_use = in_use.ok_or_else(|| corrupt(text.lines().count(), "no secret is marked `use`"))?;
        Ok(Self { keys, in_use })
    }

    /// The keyring kept at `path`, or `None` if there is none. A file that exists and cannot
    /// be used is an error: never a silent fallback to another secret.
    pub fn load(path: &Path) -> Result<Option<Self>, KeyringError> {
        let io = |source| KeyringError::Io {
            path: path.display().to_string(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            // No data directory yet, or one that is not a directory (said by the node's
            // check of its data directory, in its own words): no keyring.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None);
            }
            other => other.map_err(io)?,
        };
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyringError::TooOpen {
                path: path.display().to_string(),
                mode,
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|_| KeyringError::Corrupt {
            path: path.display().to_string(),
            line: 1,
            reason: "not text".into(),
        })?;
        Self::decode(&text, path).map(Some)
    }

    /// Writes the keyring at `path` (mode 0600): a temporary file, synced, renamed over the
    /// old one, and the directory synced, so that a crash leaves the old keyring or the new.
    pub fn save(&self, path: &Path) -> Result<(), KeyringError> {
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| KeyringError::Io { path: p, source }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(self.encode().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io(path))
    }
}

/// Where a node keeps its keyring.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// A node's keyring as every task sees it: read on each handshake, replaced whole by a change.
#[derive(Debug)]
pub struct SharedKeyring(RwLock<Arc<Keyring>>);

impl SharedKeyring {
    pub fn new(keyring: Keyring) -> Self {
        Self(RwLock::new(Arc::new(keyring)))
    }

    /// The keyring now.
    pub fn current(&self) -> Arc<Keyring> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The secret this node proves with now.
    pub fn in_use(&self) -> Secret {
        self.current().in_use().clone()
    }

    pub fn replace(&self, keyring: Keyring) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keyring);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn s(text: &str) -> Secret {
        Secret::new(text.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn a_keyring_round_trips_through_its_file_text() {
        let ring = Keyring::new(s("old secret of the cluster"))
            .changed(&Change::Install(s("a new secret, long enough")))
            .unwrap()
            .unwrap();
        let text = ring.encode();
        assert!(text.starts_with("# kvnode keyring, format 1"), "{text}");
        assert!(text.contains(&format!("use {}\n", hex(b"old secret of the cluster"))));
        assert!(text.contains(&format!("installed {}\n", hex(b"a new secret, long enough"))));
        assert_eq!(Keyring::decode(&text, Path::new("k")).unwrap(), ring);
    }

    #[test]
    fn a_corrupt_keyring_is_an_error_naming_the_file_and_line() {
        let cases = [
            ("use zz\n", "not hex"),
            ("use 6162\nuse 6364\n", "second secret marked `use`"),
            ("installed 6162\n", "no secret is marked `use`"),
            ("use 6162\ninstalled 6162\n", "listed twice"),
            ("maybe 6162\n", "expected `use HEX`"),
            ("use\n", "expected `use HEX`"),
            ("", "no secret is marked `use`"),
        ];
        for (text, reason) in cases {
            let err = Keyring::decode(text, Path::new("/d/keyring")).unwrap_err().to_string();
            assert!(
                err.contains("/d/keyring is corrupt") && err.contains(reason),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn install_use_and_remove_change_the_keyring_and_may_be_repeated() {
        let (old, new) = (s("the old secret, 16+ bytes"), s("the new secret, 16+ bytes"));
        let ring = Keyring::new(old.clone());
        let installed = ring.changed(&Change::Install(new.clone())).unwrap().unwrap();
        assert_eq!(installed.all(), [old.clone(), new.clone()]);
        assert_eq!(installed.changed(&Change::Install(new.clone())).unwrap(), None);
        let used = installed.changed(&Change::Use(new.clone())).unwrap().unwrap();
        assert_eq!(used.in_use(), &new);
        assert_eq!(used.changed(&Change::Use(new.clone())).unwrap(), None);
        let removed = used.changed(&Change::Remove(old.clone())).unwrap().unwrap();
        assert_eq!((removed.all(), removed.in_use()), (&[new.clone()][..], &new));
        assert_eq!(removed.changed(&Change::Remove(old.clone())).unwrap(), None);
    }

    #[test]
    fn removing_the_secret_in_use_using_one_not_installed_or_installing_a_short_one_is_refused() {
        let old = s("the old secret, 16+ bytes");
        let ring = Keyring::new(old.clone());
        let err = ring.changed(&Change::Remove(old.clone())).unwrap_err();
        assert!(
            matches!(err, KeyringError::InUse(ref f) if *f == fingerprint(&old)),
            "{err}"
        );
        let err = ring.changed(&Change::Use(s("never installed here"))).unwrap_err();
        assert!(err.to_string().contains("install it first"), "{err}");
        let err = ring.changed(&Change::Install(s("short"))).unwrap_err().to_string();
        assert!(
            err.contains("at least 16 bytes, and this one is 5") && err.contains("keygen"),
            "{err}"
        );
    }

    #[test]
    fn removing_a_secret_before_the_one_in_use_keeps_the_one_in_use() {
        let (a, b, c) = (
            s("secret a, 16 bytes long"),
            s("secret b, 16 bytes long"),
            s("secret c, 16 bytes long"),
        );
        let mut ring = Keyring::new(a.clone());
        for change in [
            Change::Install(b.clone()),
            Change::Install(c.clone()),
            Change::Use(c.clone()),
        ] {
            ring = ring.changed(&change).unwrap().unwrap();
        }
        let ring = ring.changed(&Change::Remove(a)).unwrap().unwrap();
        assert_eq!((ring.all(), ring.in_use()), (&[b, c.clone()][..], &c));
    }

    #[test]
    fn a_password_is_accepted_if_it_is_any_installed_secret() {
        let ring = Keyring::new(s("the old secret, 16+ bytes"))
            .changed(&Change::Install(s("the new secret, 16+ bytes")))
            .unwrap()
            .unwrap();
        assert!(ring.accepts_password(b"the old secret, 16+ bytes"));
        assert!(ring.accepts_password(b"the new secret, 16+ bytes"));
        assert!(!ring.accepts_password(b"the new secret, 16+ byte"));
        assert!(!ring.accepts_password(b""));
    }

    #[test]
    fn the_file_is_written_with_mode_0600_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        assert_eq!(Keyring::load(&file).unwrap(), None);
        let ring = Keyring::new(s("a secret"));
        ring.save(&file).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Keyring::load(&file).unwrap(), Some(ring.clone()));
        // Written again over the old one; no temporary file left behind.
        ring.save(&file).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keyring::load(&file).unwrap_err().to_string();
        assert!(err.contains("mode 0644") && err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_fingerprint_is_eight_hex_digits_of_sha256_and_never_the_secret() {
        // SHA-256("abc") = ba7816bf...
        assert_eq!(fingerprint(&s("abc")), "ba7816bf");
    }
}
