//! The redb engine: copy-on-write B-trees; a batch is one write transaction, committed with
//! immediate durability (one fsync pair per batch).

use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::engine::{Applied, Engine, EngineError, KeyPage, Op, bucket_prefix, data_key, keys_start, no_raft};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const BUCKETS: TableDefinition<&[u8], ()> = TableDefinition::new("buckets");

pub struct RedbEngine {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError(e.to_string())
}

impl RedbEngine {
    pub fn open(file: &Path) -> Result<Self, EngineError> {
        let db = Database::create(file).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(DATA).map_err(err)?;
        txn.open_table(BUCKETS).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Self { db })
    }
}

impl Engine for RedbEngine {
    fn commit(&self, batch: &[Op]) -> Result<Vec<Applied>, EngineError> {
        let txn = self.db.begin_write().map_err(err)?;
        let mut applied = Vec::with_capacity(batch.len());
        {
            let mut data = txn.open_table(DATA).map_err(err)?;
            let mut buckets = txn.open_table(BUCKETS).map_err(err)?;
            for op in batch {
                match op {
                    Op::Put { bucket, key, value } => {
                        if buckets.get(bucket.as_ref()).map_err(err)?.is_none() {
                            buckets.insert(bucket.as_ref(), ()).map_err(err)?;
                        }
                        data.insert(data_key(bucket, key).as_slice(), value.as_ref())
                            .map_err(err)?;
                        applied.push(Applied::Stored);
                    }
                    Op::PutReporting { bucket, key, value } => {
                        if buckets.get(bucket.as_ref()).map_err(err)?.is_none() {
                            buckets.insert(bucket.as_ref(), ()).map_err(err)?;
                        }
                        let replaced = data
                            .insert(data_key(bucket, key).as_slice(), value.as_ref())
                            .map_err(err)?
                            .is_some();
                        applied.push(if replaced { Applied::Stored } else { Applied::StoredNew });
                    }
                    Op::PutExisting { bucket, key, value } => {
                        if buckets.get(bucket.as_ref()).map_err(err)?.is_none() {
                            applied.push(Applied::NoBucket);
                        } else {
                            data.insert(data_key(bucket, key).as_slice(), value.as_ref())
                                .map_err(err)?;
                            applied.push(Applied::Stored);
                        }
                    }
                    Op::CreateBucket { bucket } => {
                        let new = buckets.get(bucket.as_ref()).map_err(err)?.is_none();
                        if new {
                            buckets.insert(bucket.as_ref(), ()).map_err(err)?;
                        }
                        applied.push(Applied::Created(new));
                    }
                    // Replicated ranges are refused on this engine before any of their writes.
                    Op::Raft(_) => return Err(no_raft()),
                    Op::Delete { bucket, key } => {
                        if buckets.get(bucket.as_ref()).map_err(err)?.is_none() {
                            applied.push(Applied::NoBucket);
                        } else if data.remove(data_key(bucket, key).as_slice()).map_err(err)?.is_some() {
                            applied.push(Applied::Deleted);
                        } else {
                            applied.push(Applied::NoKey);
                        }
                    }
                }
            }
        }
        txn.commit().map_err(err)?;
        Ok(applied)
    }

    fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(DATA).map_err(err)?;
        let value = table.get(data_key(bucket, key).as_slice()).map_err(err)?;
        Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
    }

    fn bucket_exists(&self, bucket: &[u8]) -> Result<bool, EngineError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(BUCKETS).map_err(err)?;
        Ok(table.get(bucket).map_err(err)?.is_some())
    }

    fn keys(&self, bucket: &[u8], after: Option<&[u8]>, budget: usize) -> Result<KeyPage, EngineError> {
        let prefix = bucket_prefix(bucket);
        let start = keys_start(bucket, after);
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(DATA).map_err(err)?;
        let keys = table
            .range(start.as_slice()..)
            .map_err(err)?
            .map(|entry| entry.map(|(k, _)| k.value().to_vec()).map_err(err))
            .take_while(|k| k.as_ref().map_or(true, |k| k.starts_with(&prefix)))
            .map(|k| k.map(|k| Bytes::copy_from_slice(&k[prefix.len()..])));
        KeyPage::fill(keys, budget)
    }
}
