//! The storage engine comparison behind BENCHMARKS.md: concurrent small puts, each
//! acknowledged only once durable, through kvnode's own group-commit store, for every engine
//! compiled in. Engines alternate round by round in one run; medians are printed.
//!
//!   cargo run --release --example store_engines --features redb -- [--rounds 3] [--seconds 3] [--dir DIR]
//!
//! Run it on the disk the nodes will use: on tmpfs an fsync costs nothing and the comparison
//! says nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvnode::store::{EngineKind, Lookup, Store};
use tokio_util::sync::CancellationToken;

struct Args {
    rounds: usize,
    seconds: f64,
    dir: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 3,
        seconds: 3.0,
        dir: PathBuf::from("target/store-engines"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => a.rounds = value.parse().expect("--rounds N"),
            "--seconds" => a.seconds = value.parse().expect("--seconds S"),
            "--dir" => a.dir = value.into(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

struct Figures {
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// `clients` tasks put 16-byte keys with 64-byte values for `seconds`, each waiting for its
/// put to be durable before the next.
async fn puts(store: &Store, clients: usize, seconds: f64) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (store, stop) = (store.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("c{c:03}k{i:011}");
                    let sent = Instant::now();
                    store
                        .put(b"bench", key.as_bytes(), Bytes::from(vec![b'v'; 64]))
                        .await
                        .expect("put");
                    latencies.push(sent.elapsed());
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort();
    Figures {
        ops_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
    }
}

/// Random gets over the keys just written, from `clients` tasks.
async fn gets(store: &Store, clients: usize, seconds: f64) -> f64 {
    let Lookup::Found(page) = store.keys(b"bench", None, usize::MAX).await.unwrap() else {
        panic!("no keys")
    };
    let keys = Arc::new(page.keys);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (store, stop, keys) = (store.clone(), Arc::clone(&stop), Arc::clone(&keys));
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[(n * 7919 + c * 104_729) % keys.len()];
                    assert!(matches!(store.get(b"bench", key).await.unwrap(), Lookup::Found(_)));
                    n += 1;
                    if n.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args = args();
    let kinds = [
        #[cfg(feature = "fjall")]
        EngineKind::Fjall,
        #[cfg(feature = "redb")]
        EngineKind::Redb,
    ];
    // (engine, clients, puts/s, p50 ms, p99 ms), one value per round.
    type Row = (EngineKind, usize, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut rows: Vec<Row> = Vec::new();
    let mut reads: Vec<(EngineKind, Vec<f64>)> = kinds.iter().map(|k| (*k, Vec::new())).collect();
    for round in 0..args.rounds {
        for (ki, &kind) in kinds.iter().enumerate() {
            for clients in [1, 50] {
                let dir = args.dir.join(format!("{}-{clients}-{round}", kind.name()));
                let _ = std::fs::remove_dir_all(&dir);
                let store = Store::open_with(&dir, kind).expect("open");
                let stop = CancellationToken::new();
                let writer = tokio::spawn({
                    let (store, stop) = (store.clone(), stop.clone());
                    async move { store.run_writer(stop).await }
                });
                let f = puts(&store, clients, args.seconds).await;
                if clients == 50 {
                    reads[ki].1.push(gets(&store, 2, args.seconds / 2.0).await);
                }
                stop.cancel();
                writer.await.unwrap().unwrap();
                drop(store);
                let _ = std::fs::remove_dir_all(&dir);
                println!(
                    "round {round} {:5} {clients:2} clients: {:9.0} durable puts/s  p50 {:7.3} ms  p99 {:7.3} ms",
                    kind.name(),
                    f.ops_per_sec,
                    f.p50.as_secs_f64() * 1e3,
                    f.p99.as_secs_f64() * 1e3
                );
                match rows.iter_mut().find(|r| r.0 == kind && r.1 == clients) {
                    Some(r) => {
                        r.2.push(f.ops_per_sec);
                        r.3.push(f.p50.as_secs_f64() * 1e3);
                        r.4.push(f.p99.as_secs_f64() * 1e3);
                    }
                    None => rows.push((
                        kind,
                        clients,
                        vec![f.ops_per_sec],
                        vec![f.p50.as_secs_f64() * 1e3],
                        vec![f.p99.as_secs_f64() * 1e3],
                    )),
                }
            }
        }
    }
    println!("\n| engine | clients | durable puts/s (median) | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    for (kind, clients, ops, p50, p99) in rows {
        println!(
            "| {} | {clients} | {:.0} | {:.3} | {:.3} |",
            kind.name(),
            median(ops),
            median(p50),
            median(p99)
        );
    }
    println!("\n| engine | gets/s from 2 tasks after the 50-client load (median) |");
    println!("|---|---:|");
    for (kind, r) in reads {
        println!("| {} | {:.0} |", kind.name(), median(r));
    }
}
