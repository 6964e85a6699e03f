//! One function per bucket operation, applying it to this node's store (mini-redis's `cmd/`).
//!
//! Knows no network and no routing: [`apply`] is called once a request has been routed here
//! (by `Node::bucket_now`, the one place a bucket request is routed), and gives back the
//! answer at once or the future of it; the caller bounds that future by the deadline.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde_bytes::ByteBuf;

use crate::names::NodeName;
use crate::store::{Lookup, Store, StoreError};
use crate::wire::{BucketOp, BucketRequest, KEYS_PAGE, RemoteError, Reply};

type Answer = Result<Reply, RemoteError>;

/// What applying an operation gives.
pub(super) enum Applied {
    /// The answer, at once: anything on the in-memory store, and a route query.
    Now(Answer),
    /// The future of the answer: a write that waits for the durable store's group commit, a
    /// durable read (which may wait for the disk, on a blocking thread) or a listing of keys
    /// (a scan of the whole bucket, on a blocking thread). Its first poll queues a write, so
    /// writes polled once in the order they came take effect in that order.
    Later(Pin<Box<dyn Future<Output = Answer> + Send>>),
}

/// Applies `req`, which this node `node` owns, to `store`.
pub(super) fn apply(req: BucketRequest, store: &Store, node: &NodeName) -> Applied {
    let BucketRequest { bucket, op, path } = req;
    // Test builds only: a request that panics while it is routed, or while its answer is
    // awaited, to show that a panic is answered as an internal error and the node goes on.
    #[cfg(feature = "fault-injection")]
    match bucket.as_slice() {
        b"fault-injection-panic" => panic!("fault injection: a bucket request that panics"),
        b"fault-injection-panic-later" => {
            return Applied::Later(Box::pin(async { panic!("fault injection: an answer that panics") }));
        }
        _ => {}
    }
    match op {
        BucketOp::Put { key, value } => put(store, node, bucket, key, value),
        BucketOp::PutExisting { key, value } => put_existing(store, node, bucket, key, value),
        BucketOp::PutReporting { key, value } => put_reporting(store, node, bucket, key, value),
        BucketOp::Get { key } => get(store, node, bucket, key),
        BucketOp::Delete { key } => delete(store, node, bucket, key),
        BucketOp::Keys { after } => keys(store, node, bucket, after),
        // The handler answers route queries with the entry's replicas from its table
        // (`Node::route_here`); the store alone knows only that this node holds the bucket.
        BucketOp::Route => Applied::Now(route(node, path, vec![node.clone()])),
        BucketOp::Create => create(store, node, bucket),
        // A watch is served by `Node::watch_here`, from the store's feed, not applied.
        BucketOp::Watch { .. } => Applied::Now(Err(RemoteError::Internal {
            node: node.to_string(),
            reason: "a watch reached the store unrouted".into(),
        })),
    }
}

/// Makes the bucket exist; one that exists is left as it is (the guide's `CREATE`).
fn create(store: &Store, node: &NodeName, bucket: Vec<u8>) -> Applied {
    if let Some(m) = store.memory() {
        let done = store.fenced(&bucket, || m.create_bucket(&bucket));
        return Applied::Now(done.map(|_| Reply::Done).map_err(|e| internal(node, e)));
    }
    let (store, node) = (store.clone(), node.clone());
    Applied::Later(Box::pin(async move {
        store.create_bucket(&bucket).await.map_err(|e| internal(&node, e))?;
        Ok(Reply::Done)
    }))
}

fn put(store: &Store, node: &NodeName, bucket: Vec<u8>, key: Vec<u8>, value: Vec<u8>) -> Applied {
    if let Some(m) = store.memory() {
        let done = store.fenced(&bucket, || m.put(&bucket, &key, Bytes::from(value)));
        return Applied::Now(done.map(|()| Reply::Done).map_err(|e| internal(node, e)));
    }
    let (store, node) = (store.clone(), node.clone());
    Applied::Later(Box::pin(async move {
        store
            .put(&bucket, &key, Bytes::from(value))
            .await
            .map_err(|e| internal(&node, e))?;
        Ok(Reply::Done)
    }))
}

/// A put that says whether the key is new (RESP's `HSET`).
fn put_reporting(store: &Store, node: &NodeName, bucket: Vec<u8>, key: Vec<u8>, value: Vec<u8>) -> Applied {
    if let Some(m) = store.memory() {
        let done = store.fenced(&bucket, || m.put_reporting(&bucket, &key, Bytes::from(value)));
        return Applied::Now(done.map(|new| Reply::Stored { new }).map_err(|e| internal(node, e)));
    }
    let (store, node) = (store.clone(), node.clone());
    Applied::Later(Box::pin(async move {
        let new = store
            .put_reporting(&bucket, &key, Bytes::from(value))
            .await
            .map_err(|e| internal(&node, e))?;
        Ok(Reply::Stored { new })
    }))
}

/// A put into a bucket that must exist already (the guide's `PUT`).
fn put_existing(store: &Store, node: &NodeName, bucket: Vec<u8>, key: Vec<u8>, value: Vec<u8>) -> Applied {
    if let Some(m) = store.memory() {
        let done = store.fenced(&bucket, || m.put_existing(&bucket, &key, Bytes::from(value)));
        return Applied::Now(match done {
            Ok(found) => stored(found, bucket),
            Err(e) => Err(internal(node, e)),
        });
    }
    let (store, node) = (store.clone(), node.clone());
    Applied::Later(Box::pin(async move {
        let found = store
            .put_existing(&bucket, &key, Bytes::from(value))
            .await
            .map_err(|e| internal(&node, e))?;
        stored(found, bucket)
    }))
}

/// The answer to a put into a bucket that must exist, from what the store found.
fn stored(found: Lookup<()>, bucket: Vec<u8>) -> Answer {
    match found {
        Lookup::Found(()) | Lookup::NoKey => Ok(Reply::Done),
        Lookup::NoBucket => Err(no_bucket(bucket)),
    }
}

fn get(store: &Store, node: &NodeName, bucket: Vec<u8>, key: Vec<u8>) -> Applied {
    if let Some(m) = store.memory() {
        let found = m.get(&bucket, &key);
        return Applied::Now(value(Ok(found), bucket, key).unwrap_or_else(|e| Err(internal(node, e))));
    }
    let (store, node) = (store.clone(), node.clone());
    Applied::Later(Box::pin(async move {
        let found = store.get(&bucket, &key).await;
        value(found, bucket, key).unwrap_or_else(|e| Err(internal(&node, e)))
    }))
}

fn delete(store: &Store, node: &NodeName, bucket: Vec<u8>, key: Vec<u8>) -> Applied {
    if let Some(m) = store.memory() {
        let done = store.fenced(&bucket, || m.delete(&bucket, &key));
        return Applied::Now(match done {
            Ok(found) => removed(found, bucket, key),
            Err(e) => Err(internal(node, e)),
        });
    }
    let (store, node) = (store.clone(), node.clone());
    Applied::Later(Box::pin(async move {
        let found = store.delete(&bucket, &key).await.map_err(|e| internal(&node, e))?;
        removed(found, bucket, key)
    }))
}

/// A page of the bucket's keys; always on a blocking thread, even in memory (see
/// [`Store::keys`]).
fn keys(store: &Store, node: &NodeName, bucket: Vec<u8>, after: Option<ByteBuf>) -> Applied {
    let (store, node) = (store.clone(), node.clone());
    Applied::Later(Box::pin(async move {
        match store
            .keys(&bucket, after.as_deref().map(Vec::as_slice), KEYS_PAGE)
            .await
        {
            Err(e) => Err(internal(&node, e)),
            Ok(Lookup::Found(page)) => Ok(Reply::Keys {
                keys: page.keys.into_iter().map(|k| ByteBuf::from(k.to_vec())).collect(),
                more: page.more,
            }),
            Ok(Lookup::NoKey | Lookup::NoBucket) => Err(no_bucket(bucket)),
        }
    }))
}

/// A route query that reached the owner: the owner is this node, by the path it took, and
/// `replicas` hold the range.
pub(super) fn route(node: &NodeName, mut path: Vec<NodeName>, replicas: Vec<NodeName>) -> Answer {
    path.push(node.clone());
    Ok(Reply::Owner {
        node: node.clone(),
        path,
        replicas,
    })
}

fn internal(node: &NodeName, e: StoreError) -> RemoteError {
    let (node, reason) = (node.to_string(), e.to_string());
    match e {
        // Not applied: the client may retry it (the table now routes it to the group).
        StoreError::Moving { .. } => RemoteError::Overloaded { node, reason },
        _ => RemoteError::Internal { node, reason },
    }
}

fn no_bucket(bucket: Vec<u8>) -> RemoteError {
    RemoteError::BucketNotFound {
        bucket: ByteBuf::from(bucket),
    }
}

/// The answer to a get, from what the store found; `Err` when the store failed.
fn value(found: Result<Lookup<Bytes>, StoreError>, bucket: Vec<u8>, key: Vec<u8>) -> Result<Answer, StoreError> {
    Ok(match found? {
        Lookup::Found(v) => Ok(Reply::Value(ByteBuf::from(v.to_vec()))),
        Lookup::NoKey => Err(RemoteError::KeyNotFound {
            bucket: ByteBuf::from(bucket),
            key: ByteBuf::from(key),
        }),
        Lookup::NoBucket => Err(no_bucket(bucket)),
    })
}

/// The answer to a delete, from what the store found.
fn removed(found: Lookup<()>, bucket: Vec<u8>, key: Vec<u8>) -> Answer {
    match found {
        Lookup::Found(()) => Ok(Reply::Done),
        Lookup::NoKey => Err(RemoteError::KeyNotFound {
            bucket: ByteBuf::from(bucket),
            key: ByteBuf::from(key),
        }),
        Lookup::NoBucket => Err(no_bucket(bucket)),
    }
}
