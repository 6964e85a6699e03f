//! Half-sent frames: opens STREAMS request streams on one authenticated connection, each
//! announcing a FRAME-byte frame and sending SENT bytes of it, then holds them open and
//! prints how far the writes got and the node's peak memory (issue 22, point 5).
//!
//!   cargo run --release --example half_frames -- ADDR SECRET_FILE NODE_PID [STREAMS] [FRAME] [SENT]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kvnode::auth::Me;
use kvnode::secret::SecretSource;
use kvnode::transport;
use kvnode::transport::Limits;
use kvnode::wire::Role;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = args[0].parse().expect("ADDR is HOST:PORT");
    let secret = SecretSource::Home(args[1].clone().into()).load().expect("the secret");
    let pid: u32 = args[2].parse().expect("NODE_PID");
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |a| a.parse().unwrap());
    let (streams, frame, sent) = (arg(3, 200), arg(4, 16 << 20), arg(5, 4 << 20));
    let config = transport::client_config(&Limits::default(), Duration::from_secs(60), None).unwrap();
    let endpoint = transport::client_endpoint(addr, config).unwrap();
    let me = Me {
        role: Role::Client,
        name: "half-frames",
        listen: None,
    };
    let authed = transport::connect(&endpoint, addr, &secret, &me)
        .await
        .expect("connected");
    let progress = Arc::new(AtomicUsize::new(0));
    let mut held = Vec::new();
    for _ in 0..streams {
        let (mut send, recv) = authed.conn.open_bi().await.unwrap();
        let progress = Arc::clone(&progress);
        held.push(tokio::spawn(async move {
            let _recv = recv;
            let mut bytes = (frame as u32).to_be_bytes().to_vec();
            bytes.resize(4 + sent, 1);
            for chunk in bytes.chunks(64 * 1024) {
                if send.write_all(chunk).await.is_err() {
                    return;
                }
                progress.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            std::future::pending::<()>().await;
        }));
    }
    let rss = kvnode_rss(pid);
    let (sent_total, peak) = hold_until_still(&progress, streams * (4 + sent), rss).await;
    println!(
        "{streams} streams announcing {frame} bytes, {sent} sent each: {sent_total} bytes taken by the node's flow control; node peak RSS {} MB",
        peak / 1024
    );
}

/// Waits until every byte was taken, or none more for a second; gives back how many bytes
/// were, and the node's peak RSS in KiB then.
async fn hold_until_still(progress: &AtomicUsize, all: usize, rss: impl Fn() -> usize) -> (usize, usize) {
    let (mut last, mut still) = (0, 0);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = progress.load(Ordering::Relaxed);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if now >= all || still >= 10 {
            // Give the node a moment to read what it was sent, then read its peak.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return (now, rss());
        }
    }
}

fn kvnode_rss(pid: u32) -> impl Fn() -> usize {
    move || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}
