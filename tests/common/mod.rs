//! The integration-test harness: real `kvnode` processes on 127.0.0.1, each test with its
//! own temporary `KVNODE_HOME`, every process killed when its handle drops. Conditions are
//! awaited by polling with a deadline, never by sleeping for a fixed time.

#![allow(dead_code)] // each test file uses its own part of the harness

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_kvnode");

/// How long a condition may take before a test fails; generous, because CI machines are
/// small and shared. Tests finish as soon as the condition holds.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `cond` until it returns `Some`, or panics with `what` after `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `--name NAME ARGS...`: the arguments of `kvnode start` for a node called `name`.
fn named<'a>(name: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--name", name];
    all.extend_from_slice(args);
    all
}

/// A temporary `KVNODE_HOME`, removed with everything in it when dropped.
pub struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary KVNODE_HOME"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `kvnode` command with this home and nothing inherited that could change its behaviour.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("KVNODE_HOME", self.path())
            .env_remove("KVNODE_SECRET")
            .env_remove("KVNODE_VIA")
            .env_remove("RUST_LOG");
        cmd
    }

    /// Runs a client command to completion (stdin closed).
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, |_| {})
    }

    /// Runs a client command after letting `setup` adjust it (environment, stdin).
    pub fn run_with(&self, args: &[&str], setup: impl FnOnce(&mut Command)) -> Run {
        let mut cmd = self.command();
        cmd.args(args).stdin(Stdio::null());
        setup(&mut cmd);
        let start = Instant::now();
        let out = cmd.output().expect("run kvnode");
        Run {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// Runs a client command with `input` on its stdin.
    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut cmd = self.command();
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().expect("run kvnode");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// Starts a node: `kvnode start --name NAME ARGS...` and waits until it is up.
    pub fn start(&self, name: &str, args: &[&str]) -> Node {
        self.start_raw(name, &named(name, args))
    }

    /// Starts `kvnode start ARGS...` for a node called `name`, and waits until it is up.
    pub fn start_raw(&self, name: &str, args: &[&str]) -> Node {
        let node = self.spawn_node(name, args);
        node.wait_up()
    }

    /// Spawns a node without waiting for it.
    pub fn spawn_node(&self, name: &str, args: &[&str]) -> Node {
        self.spawn_node_in(None, name, args, true)
    }

    /// Starts a node as [`Home::start`] does, but whose stdout is a pipe nobody reads: once
    /// the pipe's buffer is full, nothing more can be written to it.
    pub fn start_with_stdout_unread(&self, name: &str, args: &[&str]) -> Node {
        self.spawn_node_in(None, name, &named(name, args), false).wait_up()
    }

    /// Starts a node inside network namespace `ns` (`ip netns exec NS kvnode start ...`).
    pub fn start_in(&self, ns: &str, name: &str, args: &[&str]) -> Node {
        self.spawn_node_in(Some(ns), name, &named(name, args), true).wait_up()
    }

    /// A `kvnode` command that runs inside network namespace `ns`.
    pub fn command_in(&self, ns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, BIN])
            .env("KVNODE_HOME", self.path())
            .env_remove("KVNODE_SECRET")
            .env_remove("KVNODE_VIA")
            .env_remove("RUST_LOG");
        cmd
    }

    /// Spawns `kvnode start ARGS...`; its stdout is collected only if `read_stdout`, else
    /// the pipe is held open, unread, as long as the node is.
    fn spawn_node_in(&self, ns: Option<&str>, name: &str, args: &[&str], read_stdout: bool) -> Node {
        let mut cmd = match ns {
            Some(ns) => self.command_in(ns),
            None => self.command(),
        };
        // `KVNODE_TEST_LOG` (say `info,kvnode::node=debug`) is every node's `RUST_LOG`, for a
        // failure's investigation; the default is the node's own.
        if let Ok(filter) = std::env::var("KVNODE_TEST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        cmd.arg("start")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kvnode start");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = vec![collect_lines(child.stderr.take().unwrap(), Arc::clone(&stderr))];
        if read_stdout {
            readers.push(collect_lines(child.stdout.take().unwrap(), Arc::clone(&stdout)));
        }
        Node {
            readers,
            name: name.to_string(),
            home: self.path().to_path_buf(),
            child: Some(child),
            stdout,
            stderr,
            addr: None,
        }
    }

    pub fn secret_path(&self) -> PathBuf {
        self.path().join("secret")
    }

    /// Writes `text` into a file under this home (mode 0600) and returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

/// Two homes, as on two machines (neither sees the other's node directory), and the path
/// of one secret file for both, to give as `--secret-file`.
pub fn two_homes_one_secret() -> (Home, Home, String) {
    let (home, other) = (Home::new(), Home::new());
    let secret = home.write_file("shared", "sesame").to_str().unwrap().to_string();
    (home, other, secret)
}

fn collect_lines(pipe: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap().push(line);
        }
    })
}

/// The outcome of one client command.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Asserts the exit code, showing everything on failure.
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}; got {self:#?}\nstdout: {}",
            self.stdout()
        );
        self
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> String {
        self.expect(0);
        self.stdout()
    }
}

/// A running `kvnode start`; killed (SIGKILL) when dropped if still running.
pub struct Node {
    pub name: String,
    home: PathBuf,
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    addr: Option<SocketAddr>,
}

impl Node {
    /// Closes our end of the stdout pipe of a node started with its stdout unread: its
    /// next write to stdout fails (EPIPE).
    pub fn close_stdout(&mut self) {
        if let Some(child) = self.child.as_mut() {
            drop(child.stdout.take());
        }
    }

    /// Waits until the node has published its address in the local directory.
    pub fn wait_up(mut self) -> Self {
        let entry = self.home.join("nodes").join(&self.name);
        let addr = wait_for(&format!("node {} to come up", self.name), PATIENCE, || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "node {} exited with {status} while starting:\n{}",
                    self.name,
                    self.stderr().join("\n")
                );
            }
            let text = std::fs::read_to_string(&entry).ok()?;
            let pid: u32 = text.lines().find_map(|l| l.strip_prefix("pid="))?.parse().ok()?;
            if pid != self.pid() {
                return None; // an entry left by an earlier process
            }
            text.lines().find_map(|l| l.strip_prefix("addr="))?.parse().ok()
        });
        self.addr = Some(addr);
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("node is up")
    }

    /// `name@127.0.0.1:port`
    pub fn full(&self) -> String {
        format!("{}@{}", self.name, self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a line of stdout satisfies `pred`.
    pub fn wait_stdout(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for(&format!("{what} on {}'s stdout", self.name), PATIENCE, || {
            self.stdout().into_iter().find(|l| pred(l))
        })
    }

    /// Waits until a line of stderr (the log) satisfies `pred`.
    pub fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for(&format!("{what} in {}'s log", self.name), PATIENCE, || {
            self.stderr().into_iter().find(|l| pred(l))
        })
    }

    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(rc, 0, "kill {sig} {}", self.pid());
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Waits (bounded) for the process to exit, e.g. after a signal or a failed start.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_for(&format!("node {} to exit", self.name), PATIENCE, || {
            child.try_wait().unwrap()
        });
        // The pipes close with the process: once the readers end, every last line is in.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }

    /// SIGKILL, like a crash: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A runtime for a test that speaks the wire protocol itself.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An authenticated QUIC connection to the node at `addr` with `home`'s secret, as `me`;
/// `idle` is the connection's idle timeout.
pub async fn connect_as(
    home: &Home,
    addr: SocketAddr,
    me: &kvnode::auth::Me<'_>,
    idle: Duration,
) -> kvnode::transport::Authed {
    let secret = kvnode::secret::SecretSource::Home(home.secret_path()).load().unwrap();
    let limits = kvnode::transport::Limits::default();
    let config = kvnode::transport::client_config(&limits, idle, None).unwrap();
    let endpoint = kvnode::transport::client_endpoint(addr, config).unwrap();
    kvnode::transport::connect(&endpoint, addr, &secret, me).await.unwrap()
}
