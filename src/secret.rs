//! The shared secret: where it comes from, how it is created, and who may read it (SPEC §3).
//!
//! File system only; the handshake that proves knowledge of it is in `auth`.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The shared secret's bytes. Never printed: `Debug` shows only its length. Sent on the
/// wire only inside an authenticated connection (`kvnode secret install` gives it to nodes).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "serde_bytes::ByteBuf", into = "serde_bytes::ByteBuf")]
pub struct Secret(Vec<u8>);

impl TryFrom<serde_bytes::ByteBuf> for Secret {
    type Error = SecretError;
    fn try_from(bytes: serde_bytes::ByteBuf) -> Result<Self, SecretError> {
        Secret::new(bytes.into_vec())
    }
}

impl From<Secret> for serde_bytes::ByteBuf {
    fn from(secret: Secret) -> Self {
        serde_bytes::ByteBuf::from(secret.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Result<Self, SecretError> {
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Where the secret was taken from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// `--secret-file` or `secret_file` in the config file.
    File(PathBuf),
    /// The `KVNODE_SECRET` environment variable.
    Env(Vec<u8>),
    /// `KVNODE_HOME/secret`, which `kvnode start` creates when missing.
    Home(PathBuf),
}

/// Why no usable secret was found.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret is empty.
    #[error("the secret is empty; put at least one byte in it (32 random bytes are best)")]
    Empty,
    /// The file's mode lets group or others read it.
    #[error("secret file {path} is readable by group or others (mode {mode:04o}); run: chmod 600 {path}")]
    TooOpen { path: String, mode: u32 },
    /// No secret file exists where a client looked.
    #[error(
        "no secret: {path} does not exist; start a node first (it creates one), or give --secret-file or KVNODE_SECRET"
    )]
    Missing { path: String },
    /// The file given by `--secret-file` or `secret_file` does not exist.
    #[error(
        "no secret: the secret file {path} does not exist; check the path given to --secret-file (or secret_file), or leave it out to use KVNODE_HOME/secret"
    )]
    MissingGiven { path: String },
    /// `KVNODE_HOME/secret` is there but not a file.
    #[error(
        "{path} is not a file; remove it so that `kvnode start` makes a new secret there, or give --secret-file or KVNODE_SECRET"
    )]
    HomeNotAFile { path: String },
    /// The secret's path is not a regular file.
    #[error("secret file {path} is not a file; give the path of a file that holds the secret")]
    NotAFile { path: String },
    /// The file could not be read or created.
    #[error("cannot use secret file {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl SecretSource {
    /// Picks the source by precedence: flag > `KVNODE_SECRET` > config file > `KVNODE_HOME/secret`.
    pub fn choose(flag: Option<PathBuf>, env: Option<Vec<u8>>, config: Option<PathBuf>, home: &Path) -> Self {
        match (flag, env, config) {
            (Some(path), _, _) => SecretSource::File(path),
            (None, Some(bytes), _) => SecretSource::Env(bytes),
            (None, None, Some(path)) => SecretSource::File(path),
            (None, None, None) => SecretSource::Home(home.join("secret")),
        }
    }

    /// Reads the secret; a missing `KVNODE_HOME/secret` is an error for clients.
    pub fn load(&self) -> Result<Secret, SecretError> {
        match self {
            SecretSource::File(path) => read_secret_file(path).map_err(|e| match e {
                SecretError::Missing { path } => SecretError::MissingGiven { path },
                e => e,
            }),
            SecretSource::Home(path) => read_secret_file(path).map_err(|e| match e {
                SecretError::NotAFile { path } => SecretError::HomeNotAFile { path },
                e => e,
            }),
            SecretSource::Env(bytes) => {
                let mut bytes = bytes.clone();
                without_line_end(&mut bytes);
                Secret::new(bytes)
            }
        }
    }

    /// Reads the secret, creating `KVNODE_HOME/secret` with 32 random bytes (hex, mode 0600)
    /// when it does not exist yet, like `~/.erlang.cookie`.
    pub fn load_or_create(&self) -> Result<Secret, SecretError> {
        if let SecretSource::Home(path) = self
            && !path.exists()
        {
            create_secret_file(path)?;
        }
        self.load()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a secret file: a regular file, mode 0600 or stricter, its bytes the secret (one
/// trailing line end dropped).
pub fn read_secret_file(path: &Path) -> Result<Secret, SecretError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SecretError::Missing {
                path: path.display().to_string(),
            }
        } else {
            io_err(path)(e)
        }
    })?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile {
            path: path.display().to_string(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen {
            path: path.display().to_string(),
            mode,
        });
    }
    let mut bytes = std::fs::read(path).map_err(io_err(path))?;
    without_line_end(&mut bytes);
    Secret::new(bytes)
}

/// One trailing newline (or CRLF) is not part of a secret, from a file (`echo secret >
/// file`) or from the environment (`KVNODE_SECRET=$(cat file)` keeps none, but a secret
/// file loaded into a variable by a container runtime does): both forms then agree.
fn without_line_end(bytes: &mut Vec<u8>) {
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
}

/// Creates `dir` and any missing parent, readable by this user only (0700), as etcd does
/// its data directory: they hold the secret, the node's private key, and the data. A
/// directory that exists already is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates the secret file atomically: written under a temporary name, then linked into
/// place, so two nodes starting at once agree on one secret and nobody reads a half file.
fn create_secret_file(path: &Path) -> Result<(), SecretError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir).map_err(io_err(dir))?;
    let mut random = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| io_err(path)(std::io::Error::other("the system random source failed")))?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".secret.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(hex.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created a new shared secret (mode 0600); copy it to every node of the cluster");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn directories_are_made_private_and_existing_ones_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let nested = dir.path().join("home/node");
        create_private_dir(&nested).unwrap();
        assert_eq!((mode(&dir.path().join("home")), mode(&nested)), (0o700, 0o700));
        std::fs::set_permissions(&nested, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_private_dir(&nested).unwrap();
        assert_eq!(mode(&nested), 0o750);
    }

    #[test]
    fn a_missing_home_secret_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let source = SecretSource::choose(None, None, None, dir.path());
        assert!(matches!(source.load(), Err(SecretError::Missing { .. })));
        let first = source.load_or_create().unwrap();
        let second = source.load_or_create().unwrap();
        assert_eq!(first, second);
        assert_eq!(first.as_bytes().len(), 64);
        let mode = std::fs::metadata(dir.path().join("secret")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_group_readable_secret_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "cookie\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = SecretSource::File(path.clone()).load().unwrap_err().to_string();
        assert!(err.contains("mode 0640"), "{err}");
        assert!(err.contains(&format!("chmod 600 {}", path.display())), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(SecretSource::File(path).load().unwrap().as_bytes(), b"cookie");
    }

    #[test]
    fn the_flag_beats_the_environment_which_beats_the_config_file() {
        let home = Path::new("/h");
        let f = || Some(PathBuf::from("/flag"));
        let c = || Some(PathBuf::from("/config"));
        let e = || Some(b"env".to_vec());
        assert_eq!(
            SecretSource::choose(f(), e(), c(), home),
            SecretSource::File("/flag".into())
        );
        assert_eq!(
            SecretSource::choose(None, e(), c(), home),
            SecretSource::Env(b"env".to_vec())
        );
        assert_eq!(
            SecretSource::choose(None, None, c(), home),
            SecretSource::File("/config".into())
        );
        assert_eq!(
            SecretSource::choose(None, None, None, home),
            SecretSource::Home("/h/secret".into())
        );
    }

    #[test]
    fn a_given_secret_file_that_is_missing_or_not_a_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = SecretSource::File(missing.clone()).load().unwrap_err().to_string();
        assert!(
            err.contains(&format!("the secret file {} does not exist", missing.display()))
                && err.contains("check the path given to --secret-file")
                && !err.contains("start a node first"),
            "{err}"
        );
        let err = SecretSource::File(dir.path().to_path_buf())
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a file") && !err.contains("chmod"), "{err}");
        // KVNODE_HOME/secret, not given by the user, that is a directory.
        std::fs::create_dir(dir.path().join("secret")).unwrap();
        let home = SecretSource::choose(None, None, None, dir.path());
        let err = home.load_or_create().unwrap_err().to_string();
        assert!(
            err.contains("remove it so that `kvnode start` makes a new secret"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_secret_is_refused() {
        assert!(matches!(SecretSource::Env(vec![]).load(), Err(SecretError::Empty)));
        // A line end is dropped from the environment as from a file: both forms agree.
        for env in [&b"hunter2\n"[..], b"hunter2\r\n", b"hunter2"] {
            let secret = SecretSource::Env(env.to_vec()).load().unwrap();
            assert_eq!(secret.as_bytes(), b"hunter2", "{env:?}");
        }
        assert!(matches!(
            SecretSource::Env(b"\n".to_vec()).load(),
            Err(SecretError::Empty)
        ));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let s = Secret::new(b"hunter2".to_vec()).unwrap();
        assert_eq!(format!("{s:?}"), "Secret(7 bytes)");
    }
}
