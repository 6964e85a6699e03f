//! A flood of connection attempts with a wrong secret, for measuring how much it slows
//! authenticated clients (scripts/bench-auth-flood.sh); or, with `--half-open N`, N
//! connections that finish QUIC and TLS and never prove any secret, each opened again as soon
//! as the node drops or refuses it, all from one UDP socket (scripts/bench-half-open.sh).
//!
//!   cargo run --release --example auth_flood -- ADDR [--workers 16] [--seconds 10] [--new-port-each-time]
//!   cargo run --release --example auth_flood -- ADDR --half-open 300 [--seconds 10] [--new-port-each-time] [--from IP]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvnode::auth::Me;
use kvnode::secret::Secret;
use kvnode::transport::Limits;
use kvnode::transport::{self, ConnectError};
use kvnode::wire::Role;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().expect("ADDR").parse().expect("ADDR is HOST:PORT");
    let (mut workers, mut seconds, mut rotate, mut half_open) = (16usize, 10f64, false, 0usize);
    let mut from: Option<std::net::IpAddr> = None;
    while let Some(flag) = args.next() {
        if flag == "--new-port-each-time" {
            rotate = true;
            continue;
        }
        let value = args.next().expect("a value");
        match flag.as_str() {
            "--workers" => workers = value.parse().unwrap(),
            "--seconds" => seconds = value.parse().unwrap(),
            "--half-open" => half_open = value.parse().unwrap(),
            "--from" => from = Some(value.parse().expect("--from takes an IP address")),
            other => panic!("unknown flag {other}"),
        }
    }
    if half_open > 0 {
        return hold_half_open(addr, half_open, Duration::from_secs_f64(seconds), rotate, from).await;
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

/// Keeps `n` connections open past TLS without ever starting the secret handshake, for
/// `seconds`; prints how many it held at most and how many attempts were answered.
async fn hold_half_open(addr: SocketAddr, n: usize, seconds: Duration, rotate: bool, from: Option<std::net::IpAddr>) {
    let config = transport::client_config(&Limits::default(), Duration::from_secs(10), None).unwrap();
    // From `from` (say 127.0.0.2, another address than the honest clients' 127.0.0.1), or
    // from where any client would connect.
    let new_endpoint = move || match from {
        Some(ip) => {
            let mut ep = quinn::Endpoint::client(SocketAddr::new(ip, 0)).unwrap();
            ep.set_default_client_config(config.clone());
            ep
        }
        None => transport::client_endpoint(addr, config.clone()).unwrap(),
    };
    let endpoint = new_endpoint();
    let (held, most, attempts, answered) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let end = tokio::time::Instant::now() + seconds;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let new_endpoint = new_endpoint.clone();
            let (mut endpoint, held, most, attempts, answered) = (
                endpoint.clone(),
                held.clone(),
                most.clone(),
                attempts.clone(),
                answered.clone(),
            );
            tokio::spawn(async move {
                while tokio::time::Instant::now() < end {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    if rotate {
                        // A new UDP socket, so every connection comes from a new port.
                        endpoint = new_endpoint();
                    }
                    let Ok(connecting) = endpoint.connect(addr, "kvnode") else {
                        return;
                    };
                    let outcome = tokio::time::timeout_at(end, connecting).await;
                    if outcome.is_ok() && answered.fetch_add(1, Ordering::Relaxed) + 1 == n as u64 {
                        // Every connection has been tried once: the flood is in full force.
                        println!("flooding: {} held", held.load(Ordering::Relaxed));
                    }
                    match outcome {
                        Ok(Ok(conn)) => {
                            let now = held.fetch_add(1, Ordering::Relaxed) + 1;
                            most.fetch_max(now, Ordering::Relaxed);
                            let _ = tokio::time::timeout_at(end, conn.closed()).await;
                            held.fetch_sub(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => {
                            if std::env::var_os("FLOOD_DEBUG").is_some() {
                                eprintln!("{e}");
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "held at most {} half-open connections ({} attempts)",
        most.load(Ordering::Relaxed),
        attempts.load(Ordering::Relaxed)
    );
}
