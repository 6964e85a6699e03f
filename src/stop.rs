//! `kvnode stop NODE`: a node of this `KVNODE_HOME` gets SIGTERM, any other a `Leave` request;
//! either way it stops as on SIGTERM (announces `left`, drains, exits 0), and the command
//! waits until it is gone, within `--timeout` (else exit 3).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::cli::StopArgs;
use crate::client::{self, Client, ClientError, Settings, Target};
use crate::directory::Directory;
use crate::names::{NodeName, NodeRef};
use crate::output::Output;
use crate::wire::{Reply, Request};

/// How often the command looks whether the node is gone.
const POLL: Duration = Duration::from_millis(20);
/// How long one look at a remote node may take: a node that no longer answers is gone.
const PROBE: Duration = Duration::from_millis(300);

pub async fn run(args: StopArgs, settings: &Settings, deadline: Instant, out: &mut Output) -> Result<(), ClientError> {
    let stopped = match (&args.node, &args.via) {
        (NodeRef::Name(name), None) => match local(settings, name) {
            Some(local) => local.stop(deadline).await?,
            // Not one of ours: any local node's gossip may know where it is.
            None => {
                remote(
                    client::resolve_ref(&args.node, settings, deadline).await?,
                    settings,
                    deadline,
                )
                .await?
            }
        },
        (NodeRef::Name(name), Some(via)) => {
            let target = through(name, via, settings, deadline).await?;
            remote(target, settings, deadline).await?
        }
        (node, _) => remote(client::resolve_ref(node, settings, deadline).await?, settings, deadline).await?,
    };
    if out.is_json() {
        out.object(json!({ "node": stopped, "stopped": true }));
    }
    Ok(())
}

/// A node of this home: its directory entry, pid and lock file.
struct Local {
    name: NodeName,
    pid: u32,
    lock: PathBuf,
}

fn local(settings: &Settings, name: &NodeName) -> Option<Local> {
    let dir = Directory::new(&settings.home);
    let entry = dir.lookup(name.as_str())?;
    let lock = dir.root().join(format!(".{name}.lock"));
    // The entry is live (someone holds its lock); make sure the pid written beside it is the
    // holder, not a pid since reused by another process, before signalling it.
    holds_open(entry.pid, &lock).then_some(Local {
        name: entry.name,
        pid: entry.pid,
        lock,
    })
}

/// Whether process `pid` has the file at `path` open (its node directory lock).
fn holds_open(pid: u32, path: &Path) -> bool {
    let Ok(want) = path.canonicalize() else { return false };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| target == want)
}

/// Whether some process still holds the lock of the node (it is released when the process
/// exits, even before its parent reaps it).
fn lock_held(lock: &Path) -> bool {
    let Ok(file) = File::open(lock) else { return false };
    matches!(file.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
}

impl Local {
    async fn stop(self, deadline: Instant) -> Result<String, ClientError> {
        // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(ClientError::Usage(format!(
                    "cannot send SIGTERM to node {} (pid {}): {e}",
                    self.name, self.pid
                )));
            }
        }
        let shown = format!("{} (pid {})", self.name, self.pid);
        until_gone(deadline, &shown, async || !lock_held(&self.lock)).await?;
        Ok(self.name.to_string())
    }
}

/// `name` as the membership of `via` knows it.
async fn through(
    name: &NodeName,
    via: &NodeRef,
    settings: &Settings,
    deadline: Instant,
) -> Result<Target, ClientError> {
    let members = crate::commands::connected(settings, Some(via), deadline, async |client| {
        client.call(Request::Members).await
    })
    .await?;
    let Reply::Members(members) = members else {
        return Err(ClientError::Unexpected {
            node: via.to_string(),
            answer: format!("{members:?}"),
        });
    };
    let Some(m) = members.iter().find(|m| m.name == *name) else {
        let mut known: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        known.sort_unstable();
        return Err(ClientError::NoSuchNode {
            name: name.to_string(),
            known: format!("{} in the membership of {via}", known.join(", ")),
        });
    };
    if !m.is_live() {
        return Err(ClientError::Unreachable {
            node: format!("{name} ({})", m.addr),
            reason: format!(
                "the membership of {via} says it {}; nothing to stop",
                crate::gossip::said(&m.state)
            ),
        });
    }
    let addr = m.addr.parse().map_err(|_| ClientError::Unreachable {
        node: name.to_string(),
        reason: format!("{via} gives its address as {:?}", m.addr),
    })?;
    Ok(Target {
        addr,
        name: Some(name.clone()),
    })
}

/// Sends `Leave` to the node at `target`, then waits until it no longer answers.
async fn remote(target: Target, settings: &Settings, deadline: Instant) -> Result<String, ClientError> {
    let client = Client::connect(settings, &target, deadline).await?;
    let answer = client.call(Request::Leave).await;
    let name = client.node.clone();
    client.close().await;
    match answer? {
        Reply::Done => {}
        other => {
            return Err(ClientError::Unexpected {
                node: name,
                answer: format!("{other:?}"),
            });
        }
    }
    let target = Target {
        addr: target.addr,
        name: NodeName::new(&name).ok(),
    };
    let shown = target.describe();
    let secret = settings.secret.load()?;
    until_gone(deadline, &shown, async || {
        let probe = Instant::now() + PROBE;
        match Client::connect_with(&secret, &settings.name, &target, probe.min(deadline)).await {
            Ok(client) => {
                let pong = client.call(Request::Ping).await;
                client.close().await;
                pong.is_err()
            }
            Err(_) => true,
        }
    })
    .await?;
    Ok(name)
}

/// Polls `gone` until it says so, or fails with exit 3 once `deadline` passes.
async fn until_gone(deadline: Instant, shown: &str, mut gone: impl AsyncFnMut() -> bool) -> Result<(), ClientError> {
    let started = Instant::now();
    loop {
        if gone().await {
            return Ok(());
        }
        if Instant::now() + POLL > deadline {
            return Err(ClientError::NotStopped {
                node: shown.to_string(),
                after: started.elapsed(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
