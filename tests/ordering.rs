//! Issue 22, point 7: requests pipelined on one client stream are applied in the order
//! sent, at a single node and through a forwarding node; reads among them included (README:
//! "Requests sent on one stream take effect in the order sent").

mod common;

use std::time::Duration;

use common::Home;
use kvnode::auth::Me;
use kvnode::rpc::Channel;
use kvnode::wire::{BucketOp, BucketRequest, RemoteError, Reply, Request, Role};

/// Key pairs per round; each pair is put-then-put or put-then-delete.
const PAIRS: usize = 600;

fn bucket(op: BucketOp) -> Request {
    Request::Bucket(BucketRequest {
        bucket: b"world".to_vec(),
        op,
        path: vec![],
    })
}

fn put(key: &str, value: &str) -> Request {
    bucket(BucketOp::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    })
}

/// Opens one stream to `addr` and pipelines, on it, `PAIRS` pairs of writes per round
/// (the first `put k first`, the second `put k second` or `delete k`), waits for every
/// answer, then reads each key back over a fresh stream: it must hold what the last
/// request sent left.
fn pipelined_pairs_end_as_last_sent(home: &Home, addr: std::net::SocketAddr, rounds: usize) {
    let rt = common::runtime();
    rt.block_on(async {
        let me = Me {
            role: Role::Client,
            name: "order",
            listen: None,
        };
        let authed = common::connect_as(home, addr, &me, Duration::from_secs(30)).await;
        for round in 0..rounds {
            let (send, recv) = authed.conn.open_bi().await.unwrap();
            let ch = Channel::spawn(recv, send);
            let mut calls = Vec::new();
            for i in 0..PAIRS {
                let key = format!("r{round}k{i}");
                calls.push(ch.start(&put(&key, "first"), Duration::from_secs(20)).unwrap());
                let second = if i % 2 == 0 {
                    put(&key, "second")
                } else {
                    bucket(BucketOp::Delete {
                        key: key.as_bytes().to_vec(),
                    })
                };
                calls.push(ch.start(&second, Duration::from_secs(20)).unwrap());
            }
            for call in calls {
                let answer = call.await.unwrap();
                // A delete that finds no key ran before the put sent ahead of it.
                assert_eq!(answer, Ok(Reply::Done), "round {round}: applied out of order");
            }
            let (send, recv) = authed.conn.open_bi().await.unwrap();
            let check = Channel::spawn(recv, send);
            let mut wrong = Vec::new();
            for i in 0..PAIRS {
                let key = format!("r{round}k{i}");
                let get = bucket(BucketOp::Get {
                    key: key.as_bytes().to_vec(),
                });
                let got = check.call(&get, Duration::from_secs(20)).await.unwrap();
                let right = if i % 2 == 0 {
                    matches!(&got, Ok(Reply::Value(v)) if v.as_slice() == b"second")
                } else {
                    matches!(got, Err(RemoteError::KeyNotFound { .. }))
                };
                if !right {
                    wrong.push(format!("{key}: {got:?}"));
                }
            }
            assert!(wrong.is_empty(), "round {round}: applied out of order: {wrong:?}");
        }
    });
}

/// Opens one stream to `addr` and pipelines, on it, `PAIRS` rounds of `put k vN` then
/// `get k` then `delete k` then `get k` on a few keys: each get must see exactly the write
/// sent just before it. (A durable read does not wait for the store's writer, so without
/// the stream's order a get overtakes the put ahead of it.)
fn pipelined_reads_see_the_writes_sent_before_them(home: &Home, addr: std::net::SocketAddr) {
    let rt = common::runtime();
    rt.block_on(async {
        let me = Me {
            role: Role::Client,
            name: "order",
            listen: None,
        };
        let authed = common::connect_as(home, addr, &me, Duration::from_secs(30)).await;
        let (send, recv) = authed.conn.open_bi().await.unwrap();
        let ch = Channel::spawn(recv, send);
        let mut calls = Vec::new();
        for i in 0..PAIRS {
            let key = format!("k{}", i % 4);
            let value = format!("v{i}");
            calls.push((None, ch.start(&put(&key, &value), Duration::from_secs(20)).unwrap()));
            let get = bucket(BucketOp::Get {
                key: key.as_bytes().to_vec(),
            });
            calls.push((Some(Some(value)), ch.start(&get, Duration::from_secs(20)).unwrap()));
            let delete = bucket(BucketOp::Delete {
                key: key.as_bytes().to_vec(),
            });
            calls.push((None, ch.start(&delete, Duration::from_secs(20)).unwrap()));
            calls.push((Some(None), ch.start(&get, Duration::from_secs(20)).unwrap()));
        }
        let mut wrong = Vec::new();
        for (n, (expected, call)) in calls.into_iter().enumerate() {
            let got = call.await.unwrap();
            let right = match &expected {
                None => got == Ok(Reply::Done),
                Some(Some(v)) => matches!(&got, Ok(Reply::Value(x)) if x.as_slice() == v.as_bytes()),
                Some(None) => matches!(got, Err(RemoteError::KeyNotFound { .. })),
            };
            if !right {
                wrong.push(format!("request {n}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {} answers out of order, e.g. {:?}",
            wrong.len(),
            PAIRS * 4,
            &wrong[..wrong.len().min(5)]
        );
    });
}

#[test]
fn pipelined_reads_on_a_durable_node_see_the_writes_sent_before_them() {
    let home = Home::new();
    let foo = home.start("foo", &[]);
    pipelined_reads_see_the_writes_sent_before_them(&home, foo.addr());
}

#[test]
fn pipelined_reads_forwarded_to_a_durable_owner_see_the_writes_sent_before_them() {
    let home = Home::new();
    let table = "a-m=foo,n-z=bar";
    let foo = home.start("foo", &["--in-memory", "--table", table]);
    let _bar = home.start("bar", &["--table", table]);
    pipelined_reads_see_the_writes_sent_before_them(&home, foo.addr());
}

#[test]
fn pipelined_reads_on_an_in_memory_node_see_the_writes_sent_before_them() {
    let home = Home::new();
    let foo = home.start("foo", &["--in-memory"]);
    pipelined_reads_see_the_writes_sent_before_them(&home, foo.addr());
}

#[test]
fn pipelined_writes_through_a_forwarding_node_are_applied_in_the_order_sent() {
    let home = Home::new();
    let table = "a-m=foo,n-z=bar";
    let foo = home.start("foo", &["--in-memory", "--table", table]);
    let _bar = home.start("bar", &["--in-memory", "--table", table]);
    // "world" is bar's: every request crosses foo.
    pipelined_pairs_end_as_last_sent(&home, foo.addr(), 3);
}

#[test]
fn pipelined_writes_to_a_durable_node_are_applied_in_the_order_sent() {
    let home = Home::new();
    let foo = home.start("foo", &[]);
    pipelined_pairs_end_as_last_sent(&home, foo.addr(), 2);
}

#[test]
fn pipelined_writes_forwarded_to_a_durable_owner_are_applied_in_the_order_sent() {
    let home = Home::new();
    let table = "a-m=foo,n-z=bar";
    let foo = home.start("foo", &["--in-memory", "--table", table]);
    let _bar = home.start("bar", &["--table", table]);
    pipelined_pairs_end_as_last_sent(&home, foo.addr(), 2);
}

#[test]
fn pipelined_writes_through_two_forwarding_nodes_are_applied_in_the_order_sent() {
    // Tables that disagree make a chain: c1 forwards to c2, c2 to c3, which owns everything.
    let home = Home::new();
    let c1 = home.start("c1", &["--in-memory", "--table", "0x00-0xff=c2"]);
    let _c2 = home.start("c2", &["--in-memory", "--table", "0x00-0xff=c3"]);
    let _c3 = home.start("c3", &["--in-memory"]);
    pipelined_pairs_end_as_last_sent(&home, c1.addr(), 2);
}
