//! The embedded backend: one redb file (`state.db`) in the data directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{FunctionRecord, FunctionStore, StoreError};

/// Version of the layout of the tables below. Bump it when a change cannot be read by older code.
const FORMAT_VERSION: u64 = 1;
const FORMAT_KEY: &str = "format_version";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");

/// [`FunctionStore`] on a redb file.
pub struct EmbeddedStore {
    db: Database,
}

fn db_err(operation: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
    move |e| StoreError::Database {
        operation,
        source: Box::new(e),
    }
}

/// redb has an error type per operation; funnel them all through `redb::Error`.
macro_rules! tx {
    ($op:literal, $e:expr) => {
        $e.map_err(|e| db_err($op)(redb::Error::from(e)))
    };
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path`, creating its tables and checking its format.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let db = Database::create(path).map_err(|e| open_err(Box::new(e)))?;
        // The records hold registry credentials.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| open_err(Box::new(e)))?;
        let store = EmbeddedStore { db };
        store.init(path.to_path_buf())?;
        Ok(store)
    }

    fn init(&self, path: PathBuf) -> Result<(), StoreError> {
        let txn = tx!("begin", self.db.begin_write())?;
        {
            let mut meta = tx!("open meta", txn.open_table(META))?;
            let found = tx!("read format", meta.get(FORMAT_KEY))?.map(|v| v.value());
            match found {
                Some(found) if found > FORMAT_VERSION => {
                    return Err(StoreError::NewerFormat {
                        path,
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                Some(_) => {}
                None => {
                    tx!("write format", meta.insert(FORMAT_KEY, FORMAT_VERSION))?;
                }
            }
            tx!("open functions", txn.open_table(FUNCTIONS))?;
        }
        tx!("commit", txn.commit())
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<FunctionRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: format!("functions/{key}"),
        source,
    })
}

impl FunctionStore for EmbeddedStore {
    fn put_function(&self, record: &FunctionRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).expect("a function record always serialises");
        let txn = tx!("begin", self.db.begin_write())?;
        {
            let mut table = tx!("open functions", txn.open_table(FUNCTIONS))?;
            tx!(
                "put function",
                table.insert(record.name.as_str(), bytes.as_slice())
            )?;
        }
        tx!("commit", txn.commit())
    }

    fn get_function(&self, name: &str) -> Result<Option<FunctionRecord>, StoreError> {
        let txn = tx!("begin", self.db.begin_read())?;
        let table = tx!("open functions", txn.open_table(FUNCTIONS))?;
        match tx!("get function", table.get(name))? {
            Some(v) => decode(name, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn list_functions(&self) -> Result<Vec<FunctionRecord>, StoreError> {
        let txn = tx!("begin", self.db.begin_read())?;
        let table = tx!("open functions", txn.open_table(FUNCTIONS))?;
        let mut out = Vec::new();
        for item in tx!("list functions", table.iter())? {
            let (k, v) = tx!("list functions", item)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn delete_function(&self, name: &str) -> Result<bool, StoreError> {
        let txn = tx!("begin", self.db.begin_write())?;
        let existed = {
            let mut table = tx!("open functions", txn.open_table(FUNCTIONS))?;
            tx!("delete function", table.remove(name))?.is_some()
        };
        tx!("commit", txn.commit())?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> FunctionRecord {
        FunctionRecord {
            name: name.into(),
            image: "127.0.0.1:5000/hello:latest".into(),
            image_pinned: "127.0.0.1:5000/hello@sha256:00".into(),
            image_digest: "sha256:00".into(),
            contract: "fc".into(),
            mode: "event".into(),
            concurrency: 1,
            min_instances: 0,
            max_instances: None,
            idle_timeout_s: None,
            port: 9000,
            memory_mb: 128,
            timeout_s: 60,
            env: [("A".to_string(), "1".to_string())].into(),
            command: None,
            args: Some(vec!["--x".into()]),
            working_dir: None,
            uid: None,
            gid: None,
            initializer: None,
            pre_freeze: None,
            pre_stop: None,
            disk_mb: Some(64),
            read_only_rootfs: false,
            mounts: vec![],
            network: "none".into(),
            freeze_idle: true,
            registry_auth: None,
            prepull: true,
            revision: 1,
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    #[test]
    fn records_from_before_the_sandbox_fields_get_their_defaults() {
        let mut v = serde_json::to_value(record("old")).unwrap();
        let o = v.as_object_mut().unwrap();
        for field in [
            "disk_mb",
            "read_only_rootfs",
            "mounts",
            "network",
            "freeze_idle",
            "pre_freeze",
            "pre_stop",
        ] {
            o.remove(field);
        }
        let r: FunctionRecord = serde_json::from_value(v).unwrap();
        assert_eq!(r.disk_mb, None);
        assert!(!r.read_only_rootfs);
        assert!(r.mounts.is_empty());
        assert_eq!(r.network, "none");
        assert!(r.freeze_idle);
        assert_eq!((r.pre_freeze, r.pre_stop), (None, None));
    }

    #[test]
    fn records_without_prepull_pulled_at_deploy() {
        let mut v = serde_json::to_value(record("old")).unwrap();
        v.as_object_mut().unwrap().remove("prepull");
        let r: FunctionRecord = serde_json::from_value(v).unwrap();
        assert!(r.prepull);
    }

    #[test]
    fn functions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.put_function(&record("b")).unwrap();
            store.put_function(&record("a")).unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let names: Vec<_> = store
            .list_functions()
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(store.get_function("a").unwrap(), Some(record("a")));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "state.db holds credentials");
        assert!(store.delete_function("a").unwrap());
        assert!(!store.delete_function("a").unwrap());
        assert_eq!(store.get_function("a").unwrap(), None);
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            let txn = store.db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(FORMAT_KEY, FORMAT_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = EmbeddedStore::open(&path).err().expect("must refuse");
        assert!(
            matches!(err, StoreError::NewerFormat { found, .. } if found == FORMAT_VERSION + 1),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade Wharf"));
    }

    #[test]
    fn unknown_fields_and_missing_optional_fields_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("state.db")).unwrap();
        let mut value = serde_json::to_value(record("f")).unwrap();
        value["from_the_future"] = serde_json::json!(true);
        value.as_object_mut().unwrap().remove("env");
        let txn = store.db.begin_write().unwrap();
        txn.open_table(FUNCTIONS)
            .unwrap()
            .insert("f", serde_json::to_vec(&value).unwrap().as_slice())
            .unwrap();
        txn.commit().unwrap();
        let got = store.get_function("f").unwrap().unwrap();
        assert!(got.env.is_empty());
        assert_eq!(got.args, Some(vec!["--x".to_string()]));
    }
}
