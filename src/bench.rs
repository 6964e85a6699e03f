//! `kvnode bench`: throughput and latency of puts and gets, like redis-benchmark.
//!
//! Each client keeps `--pipeline` requests in flight on its connection; latencies are
//! recorded per request and reported as ops/s and p50/p99/p99.9. A progress bar shows on
//! stderr when it is a terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::client::{self, Client, ClientError, Settings};
use crate::output::Output;
use crate::wire::{BucketOp, BucketRequest, Reply, Request};

/// What to run: plain settings, which `kvnode bench`'s flags (`cli::BenchArgs`) resolve to.
#[derive(Clone, Debug)]
pub struct BenchSettings {
    /// Concurrent clients.
    pub clients: u32,
    /// Requests per test.
    pub requests: u64,
    /// Value size in bytes.
    pub data_size: u32,
    /// Requests each client keeps in flight.
    pub pipeline: u32,
    /// The tests to run, in order.
    pub tests: Vec<BenchTest>,
    /// Distinct keys used.
    pub keyspace: u64,
    /// QUIC connections the clients share; `None`: one per client.
    pub connections: Option<u32>,
    /// The bucket to use.
    pub bucket: String,
}

/// One test of a benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchTest {
    Put,
    Get,
}

/// The figures of one test.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub test: BenchTest,
    pub requests: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    /// The slowest request: the longest pause a client saw (a move's switch, a failover).
    pub max: Duration,
}

impl BenchResult {
    pub fn ops_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

pub async fn run(args: BenchSettings, settings: &Settings, out: &mut Output) -> Result<(), ClientError> {
    let deadline = Instant::now() + settings.timeout;
    let target = client::resolve(settings, deadline).await?;
    let connections = args.connections.unwrap_or(args.clients).min(args.clients) as usize;
    let secret = settings.secret.load()?;
    // Like an application's connection pool: many connections over one UDP socket, whose
    // driver then reads the answers to all of them in batches (one socket per connection
    // costs a receive call per answer).
    let endpoint = Client::endpoint(&target)?;
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let deadline = Instant::now() + settings.timeout;
        clients.push(Arc::new(
            Client::connect_on(endpoint.clone(), &secret, &settings.name, &target, deadline).await?,
        ));
    }
    let value = vec![b'x'; args.data_size as usize];
    for &test in &args.tests {
        let result = run_test(test, &args, &clients, &value, settings.timeout, !out.is_json()).await?;
        report(&result, &args, connections, out);
    }
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    Ok(())
}

fn request(test: BenchTest, bucket: &[u8], key: Vec<u8>, value: &[u8]) -> Request {
    let op = match test {
        BenchTest::Put => BucketOp::Put {
            key,
            value: value.to_vec(),
        },
        BenchTest::Get => BucketOp::Get { key },
    };
    Request::Bucket(BucketRequest {
        bucket: bucket.to_vec(),
        op,
        path: Vec::new(),
    })
}

/// A progress bar on stderr while a test runs, only when a person is watching (a terminal).
fn progress(test: BenchTest, total: u64, show: bool) -> Option<indicatif::ProgressBar> {
    if !show || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template("{prefix:>4} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
        .expect("a valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(test_name(test));
    Some(bar)
}

/// The test's name, as `--tests` and the report spell it.
pub fn test_name(test: BenchTest) -> &'static str {
    match test {
        BenchTest::Put => "put",
        BenchTest::Get => "get",
    }
}

async fn run_test(
    test: BenchTest,
    args: &BenchSettings,
    clients: &[Arc<Client>],
    value: &[u8],
    timeout: Duration,
    show_progress: bool,
) -> Result<BenchResult, ClientError> {
    if test == BenchTest::Get {
        put_every_key(args, clients, value, timeout).await?;
    }
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress(test, args.requests, show_progress);
    let ticker = bar.clone().map(|bar| {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            loop {
                bar.set_position(done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let start = Instant::now();
    // Each client keeps `pipeline` requests in flight: one sequential caller per slot, all on
    // the client's connection (no per-request future to allocate, as a FuturesUnordered would).
    let mut tasks = Vec::new();
    for i in 0..args.clients as usize {
        for _ in 0..args.pipeline.max(1) {
            let client = Arc::clone(&clients[i % clients.len()]);
            let (issued, done) = (Arc::clone(&issued), Arc::clone(&done));
            let (total, keyspace) = (args.requests, args.keyspace);
            let bucket = args.bucket.clone().into_bytes();
            let value = value.to_vec();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                // One request per caller, its key rewritten in place for each call.
                let mut req = request(test, &bucket, key(0), &value);
                loop {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    set_key(&mut req, n % keyspace);
                    let sent = std::time::Instant::now();
                    let reply = client.call_ref(&req, timeout).await;
                    let latency = sent.elapsed();
                    done.fetch_add(1, Ordering::Relaxed);
                    match reply? {
                        Reply::Done | Reply::Value(_) => latencies.push(latency),
                        other => {
                            return Err(ClientError::Unexpected {
                                node: client.describe(),
                                answer: format!("{other:?}"),
                            });
                        }
                    }
                }
                Ok::<_, ClientError>(latencies)
            }));
        }
    }
    let mut latencies = Vec::with_capacity(args.requests as usize);
    for t in tasks {
        latencies.extend(t.await.expect("bench client task")?);
    }
    let elapsed = start.elapsed();
    if let (Some(bar), Some(ticker)) = (bar, ticker) {
        ticker.abort();
        bar.finish_and_clear();
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Ok(BenchResult {
        test,
        requests: latencies.len() as u64,
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        max: pct(1.0),
    })
}

/// Puts every key a get test reads (the first `min(keyspace, requests)`): a get of a key
/// nobody put measures an error path, and fails the run. Untimed; spread over the clients
/// as the test is, one put in flight each.
async fn put_every_key(
    args: &BenchSettings,
    clients: &[Arc<Client>],
    value: &[u8],
    timeout: Duration,
) -> Result<(), ClientError> {
    let keys = args.keyspace.min(args.requests);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..(args.clients as u64).min(keys) as usize {
        let client = Arc::clone(&clients[i % clients.len()]);
        let next = Arc::clone(&next);
        let mut req = request(BenchTest::Put, args.bucket.as_bytes(), key(0), value);
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys {
                    return Ok::<_, ClientError>(());
                }
                set_key(&mut req, k);
                client.call_ref(&req, timeout).await?;
            }
        }));
    }
    for t in tasks {
        t.await.expect("bench client task")?;
    }
    Ok(())
}

fn key(n: u64) -> Vec<u8> {
    format!("key:{n:012}").into_bytes()
}

/// Rewrites the key of a bench request in place (no allocation once the buffer is sized).
fn set_key(req: &mut Request, n: u64) {
    use std::io::Write as _;
    if let Request::Bucket(BucketRequest {
        op: BucketOp::Get { key } | BucketOp::Put { key, .. },
        ..
    }) = req
    {
        key.clear();
        let _ = write!(key, "key:{n:012}");
    }
}

fn report(r: &BenchResult, args: &BenchSettings, connections: usize, out: &mut Output) {
    let name = test_name(r.test);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if out.is_json() {
        out.object(json!({
            "test": name, "requests": r.requests, "seconds": r.elapsed.as_secs_f64(),
            "ops_per_sec": r.ops_per_sec(), "p50_ms": ms(r.p50), "p99_ms": ms(r.p99), "p999_ms": ms(r.p999), "max_ms": ms(r.max),
            "clients": args.clients, "connections": connections, "pipeline": args.pipeline, "data_size": args.data_size,
        }));
    } else {
        out.line(&format!(
            "{name}: {:.0} requests per second, p50={:.3} ms p99={:.3} ms p99.9={:.3} ms ({} requests, {} clients, {} connections, pipeline {}, {} bytes)",
            r.ops_per_sec(),
            ms(r.p50),
            ms(r.p99),
            ms(r.p999),
            r.requests,
            args.clients,
            connections,
            args.pipeline,
            args.data_size
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_rewritten_in_place_is_the_key_made_afresh() {
        for test in [BenchTest::Get, BenchTest::Put] {
            let mut req = request(test, b"b", key(7), b"v");
            for n in [0, 42, 999_999_999_999] {
                set_key(&mut req, n);
                assert_eq!(req, request(test, b"b", key(n), b"v"));
            }
        }
    }
}
