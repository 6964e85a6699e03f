//! The store: buckets of key → value bytes, created by their first write (SPEC §7).
//!
//! Knows no network. `Store` is the one type the node holds; the backend behind it is memory
//! (`--in-memory`) or durable disk storage.

mod memory;

use bytes::Bytes;

pub use memory::MemoryStore;

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<T> {
    Found(T),
    /// The bucket exists but the key does not.
    NoKey,
    /// No write ever created the bucket.
    NoBucket,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (disk full, unwritable directory, corruption).
    #[error("storage failed: {0}")]
    Engine(String),
}

/// The node's store, cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Memory(MemoryStore),
}

impl Store {
    /// Everything in memory, like the tutorial's `KV.Bucket` agents.
    pub fn in_memory() -> Self {
        Self {
            backend: Backend::Memory(MemoryStore::default()),
        }
    }

    /// Stores `value` under `key`, creating the bucket if needed. Returns once durable.
    pub async fn put(&self, bucket: &[u8], key: &[u8], value: Bytes) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                m.put(bucket, key, value);
                Ok(())
            }
        }
    }

    pub async fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Lookup<Bytes>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.get(bucket, key)),
        }
    }

    /// Removes `key`; `NoKey`/`NoBucket` when there was nothing to remove.
    pub async fn delete(&self, bucket: &[u8], key: &[u8]) -> Result<Lookup<()>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.delete(bucket, key)),
        }
    }

    /// The bucket's keys, sorted.
    pub async fn keys(&self, bucket: &[u8]) -> Result<Lookup<Vec<Bytes>>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.keys(bucket)),
        }
    }
}
