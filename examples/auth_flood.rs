//! A flood of connection attempts with a wrong secret, for measuring how much it slows
//! authenticated clients (scripts/bench-auth-flood.sh).
//!
//!   cargo run --release --example auth_flood -- ADDR [--workers 16] [--seconds 10] [--new-port-each-time]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvnode::auth::Me;
use kvnode::config::Limits;
use kvnode::secret::Secret;
use kvnode::transport::{self, ConnectError};
use kvnode::wire::Role;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().expect("ADDR").parse().expect("ADDR is HOST:PORT");
    let (mut workers, mut seconds, mut rotate) = (16usize, 10f64, false);
    while let Some(flag) = args.next() {
        if flag == "--new-port-each-time" {
            rotate = true;
            continue;
        }
        let value = args.next().expect("a value");
        match flag.as_str() {
            "--workers" => workers = value.parse().unwrap(),
            "--seconds" => seconds = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    let secret = Secret::new(b"definitely not the secret".to_vec()).unwrap();
    let config = transport::client_config(&Limits::default(), Duration::from_secs(5), None).unwrap();
    let endpoint = transport::client_endpoint(addr, config.clone()).unwrap();
    let (refused, other) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (mut endpoint, secret, refused, other) =
                (endpoint.clone(), secret.clone(), refused.clone(), other.clone());
            let config = config.clone();
            tokio::spawn(async move {
                let me = Me {
                    role: Role::Client,
                    name: "flood",
                    listen: None,
                };
                while Instant::now() < end {
                    if rotate {
                        // A new UDP socket, so every attempt comes from a new port.
                        endpoint = transport::client_endpoint(addr, config.clone()).unwrap();
                    }
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        transport::connect(&endpoint, addr, &secret, &me),
                    )
                    .await
                    {
                        Ok(Err(ConnectError::AuthRefused { .. })) => refused.fetch_add(1, Ordering::Relaxed),
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (r, o) = (refused.load(Ordering::Relaxed), other.load(Ordering::Relaxed));
    println!(
        "{:.0} attempts/s ({r} refused for the wrong secret, {o} other outcomes)",
        (r + o) as f64 / seconds
    );
}
