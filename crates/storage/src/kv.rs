//! [`MetaStore`]: a small RocksDB key-value store for cluster metadata and Raft vote/state.
//!
//! Every write is synced (`WriteOptions::set_sync(true)`): it holds little data, written
//! rarely, and whatever is written must survive power loss. Options are kept modest (small
//! block cache, two background jobs) because this is not the data path.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, DBWithThreadMode, Direction, IteratorMode, Options,
    SingleThreaded, WriteBatch, WriteOptions,
};

use crate::error::{Error, Result};

type Db = DBWithThreadMode<SingleThreaded>;

/// Column families every store has; [`MetaStore::open_with`] may add more.
pub const DEFAULT_COLUMN_FAMILIES: &[&str] = &["default", "topics", "configs", "raft"];

/// One operation of an atomic [`MetaStore::write_batch`].
#[derive(Debug, Clone, Copy)]
pub enum KvOp<'a> {
    Put {
        cf: &'a str,
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        cf: &'a str,
        key: &'a [u8],
    },
}

/// Metadata store over RocksDB. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct MetaStore {
    db: Arc<Db>,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore")
            .field("path", &self.db.path())
            .finish()
    }
}

impl MetaStore {
    /// Opens (creating if needed) the store at `path` with [`DEFAULT_COLUMN_FAMILIES`].
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, &[])
    }

    /// Like [`MetaStore::open`], creating `extra_cfs` too. Column families already present on
    /// disk are always opened.
    pub fn open_with(path: &Path, extra_cfs: &[&str]) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_write_buffer_size(4 << 20);
        opts.set_max_total_wal_size(64 << 20);
        opts.set_keep_log_file_num(4);
        opts.set_max_open_files(256);
        let cache = Cache::new_lru_cache(8 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        opts.set_block_based_table_factory(&table);

        let mut names: BTreeSet<String> = DEFAULT_COLUMN_FAMILIES
            .iter()
            .chain(extra_cfs)
            .map(|s| s.to_string())
            .collect();
        // Absent database: list_cf fails, which just means nothing extra exists yet.
        if let Ok(existing) = Db::list_cf(&opts, path) {
            names.extend(existing);
        }
        let db = Db::open_cf(&opts, path, names)?;
        Ok(MetaStore { db: Arc::new(db) })
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::UnknownColumnFamily(name.to_string()))
    }

    fn sync_opts() -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(true);
        w
    }

    pub fn put(&self, cf: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let cf = self.cf(cf)?;
        self.db.put_cf_opt(cf, key, value, &Self::sync_opts())?;
        Ok(())
    }

    /// A write that is not synced: it reaches RocksDB's WAL in the page cache and survives a
    /// process crash, but may be lost with the machine. For hints that may go stale safely
    /// (Raft's committed index).
    pub fn put_relaxed(&self, cf: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let cf = self.cf(cf)?;
        self.db.put_cf(cf, key, value)?;
        Ok(())
    }

    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let cf = self.cf(cf)?;
        Ok(self.db.get_cf(cf, key)?)
    }

    pub fn delete(&self, cf: &str, key: &[u8]) -> Result<()> {
        let cf = self.cf(cf)?;
        self.db.delete_cf_opt(cf, key, &Self::sync_opts())?;
        Ok(())
    }

    /// All pairs whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, cf: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cf = self.cf(cf)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Applies all `ops` atomically, in order, with one synced write.
    pub fn write_batch(&self, ops: &[KvOp<'_>]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for op in ops {
            match *op {
                KvOp::Put { cf, key, value } => batch.put_cf(self.cf(cf)?, key, value),
                KvOp::Delete { cf, key } => batch.delete_cf(self.cf(cf)?, key),
            }
        }
        self.db.write_opt(batch, &Self::sync_opts())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_delete_scan_batch_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = MetaStore::open(dir.path()).expect("open");
            s.put("topics", b"t/a", b"1").expect("put");
            s.put("topics", b"t/b", b"2").expect("put");
            s.put("topics", b"u/c", b"3").expect("put");
            s.put("raft", b"vote", b"x").expect("put");
            assert_eq!(s.get("topics", b"t/a").expect("get"), Some(b"1".to_vec()));
            assert_eq!(s.get("configs", b"t/a").expect("get"), None);
            let scanned = s.scan_prefix("topics", b"t/").expect("scan");
            assert_eq!(
                scanned,
                vec![
                    (b"t/a".to_vec(), b"1".to_vec()),
                    (b"t/b".to_vec(), b"2".to_vec())
                ]
            );
            s.delete("topics", b"t/a").expect("delete");
            s.clone()
                .write_batch(&[
                    KvOp::Put {
                        cf: "configs",
                        key: b"k",
                        value: b"v",
                    },
                    KvOp::Delete {
                        cf: "topics",
                        key: b"t/b",
                    },
                ])
                .expect("batch");
            assert!(matches!(
                s.get("nope", b"k"),
                Err(Error::UnknownColumnFamily(_))
            ));
            assert!(s
                .write_batch(&[
                    KvOp::Put {
                        cf: "configs",
                        key: b"k2",
                        value: b"v"
                    },
                    KvOp::Put {
                        cf: "nope",
                        key: b"k",
                        value: b"v"
                    },
                ])
                .is_err());
        }
        let s = MetaStore::open_with(dir.path(), &["groups"]).expect("reopen");
        assert_eq!(s.scan_prefix("topics", b"").expect("scan").len(), 1);
        assert_eq!(s.get("configs", b"k").expect("get"), Some(b"v".to_vec()));
        assert_eq!(
            s.get("configs", b"k2").expect("get"),
            None,
            "failed batch applied nothing"
        );
        assert_eq!(s.get("raft", b"vote").expect("get"), Some(b"x".to_vec()));
        s.put("groups", b"g", b"1").expect("put new cf");
        drop(s);
        // A column family created once stays openable without naming it again.
        let s = MetaStore::open(dir.path()).expect("reopen");
        assert_eq!(s.get("groups", b"g").expect("get"), Some(b"1".to_vec()));
    }
}
