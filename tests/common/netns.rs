//! A switch of network namespaces for the fault test (root only): a hub namespace with a
//! bridge, and one namespace per node joined to it by a veth pair, so that one node can be
//! cut off from everyone (its bridge port stops forwarding: its packets vanish, as in a real
//! partition, rather than failing fast) and joined again. Clients join the hub namespace
//! (one thread at a time, by `setns`), where every node is reachable at 10.78.0.N.
//!
//! Included by `tests/faults.rs` only: `#[path = "common/netns.rs"] mod netns;`.

#![allow(dead_code)] // each test uses its part

use std::sync::atomic::{AtomicUsize, Ordering};

/// The namespaces of one cluster, deleted when dropped.
pub struct Net {
    pub hub: String,
    nodes: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// A hub and `n` node namespaces; `Err` says why not (not root, no `ip`, ...), for the
    /// caller to print and go on without partitions.
    pub fn new(n: usize) -> Result<Self, String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("partitions need network namespaces, which need root".into());
        }
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let tag = format!("kvf{}x{}", std::process::id(), CLUSTERS.fetch_add(1, Ordering::Relaxed));
        let net = Net {
            hub: format!("{tag}h"),
            nodes: (0..n).map(|i| format!("{tag}n{i}")).collect(),
        };
        // On an error, `net` drops and deletes whatever was made.
        ip(&["netns", "add", &net.hub])?;
        let hub = net.hub.as_str();
        ip(&["-n", hub, "link", "set", "lo", "up"])?;
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", hub, "addr", "add", "10.78.0.254/24", "dev", "br0"])?;
        ip(&["-n", hub, "link", "set", "br0", "up"])?;
        for (i, ns) in net.nodes.iter().enumerate() {
            ip(&["netns", "add", ns])?;
            let port = format!("p{i}");
            let addr = format!("{}/24", Self::ip_of(i));
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", &port, "netns", hub,
            ])?;
            ip(&["-n", hub, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", hub, "link", "set", &port, "up"])?;
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// Node `i`'s address on the switch.
    pub fn ip_of(i: usize) -> String {
        format!("10.78.0.{}", i + 1)
    }

    pub fn node_ns(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Cuts node `i` off (`up == false`) or joins it again: its bridge port stops forwarding.
    pub fn link(&self, i: usize, up: bool) {
        // (`ip link set ... type bridge_slave state` is accepted but changes nothing.)
        let state = if up { "3" } else { "0" }; // forwarding, disabled
        let port = format!("p{i}");
        ip(&[
            "netns", "exec", &self.hub, "bridge", "link", "set", "dev", &port, "state", state,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Net {
    /// Splits the switch in two: the nodes of `side` move to a bridge of their own (`apart`),
    /// where they reach one another and no one else (clients in the hub reach the others
    /// only); or back to the one bridge. Two sides, each able to elect a coordinator.
    pub fn split(&self, side: &[usize], apart: bool) {
        let hub = self.hub.as_str();
        if apart {
            // Made once per cluster: a second split finds it.
            let _ = ip(&["-n", hub, "link", "add", "br1", "type", "bridge"]);
            ip(&["-n", hub, "link", "set", "br1", "up"]).unwrap_or_else(|e| panic!("{e}"));
        }
        let bridge = if apart { "br1" } else { "br0" };
        for &i in side {
            ip(&["-n", hub, "link", "set", &format!("p{i}"), "master", bridge]).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Moves the calling thread (only it) into namespace `ns`: sockets it opens from now on are
/// there.
pub fn enter(ns: &str) {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}
