//! The embedded backend: one redb file (`state.db`) in the data directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{AliasRecord, FunctionRecord, FunctionStore, StoreError, VersionRecord};

/// Version of the layout of the tables below. Bump it when a change cannot be read by older code.
const FORMAT_VERSION: u64 = 1;
const FORMAT_KEY: &str = "format_version";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
/// Versions under `function/<version, 20 digits>`, so that a function's sort in order.
const VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("versions");
/// Aliases under `function/alias`.
const ALIASES: TableDefinition<&str, &[u8]> = TableDefinition::new("aliases");

fn version_key(function: &str, version: u64) -> String {
    format!("{function}/{version:020}")
}

fn alias_key(function: &str, name: &str) -> String {
    format!("{function}/{name}")
}

/// The JSON record under `key` of `table`.
fn decode_as<T: serde::de::DeserializeOwned>(
    table: &str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: format!("{table}/{key}"),
        source,
    })
}

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
            tx!("open versions", txn.open_table(VERSIONS))?;
            tx!("open aliases", txn.open_table(ALIASES))?;
        }
        tx!("commit", txn.commit())
    }

    /// The records of `table` whose keys begin with `function/`, in key order.
    fn list_under<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        name: &'static str,
        function: &str,
    ) -> Result<Vec<T>, StoreError> {
        let prefix = format!("{function}/");
        let txn = tx!("begin", self.db.begin_read())?;
        let t = tx!("open table", txn.open_table(table))?;
        let mut out = Vec::new();
        for item in tx!("list", t.range(prefix.as_str()..))? {
            let (k, v) = tx!("list", item)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(decode_as(name, k.value(), v.value())?);
        }
        Ok(out)
    }
}

/// Removes every key of `table` that begins with `prefix`.
fn remove_under(
    txn: &redb::WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    prefix: &str,
) -> Result<(), StoreError> {
    let mut t = tx!("open table", txn.open_table(table))?;
    let mut keys = Vec::new();
    for item in tx!("list", t.range(prefix..))? {
        let (k, _) = tx!("list", item)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        keys.push(k.value().to_string());
    }
    for k in keys {
        tx!("delete", t.remove(k.as_str()))?;
    }
    Ok(())
}

fn decode(key: &str, bytes: &[u8]) -> Result<FunctionRecord, StoreError> {
    decode_as("functions", key, bytes)
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
        let prefix = format!("{name}/");
        remove_under(&txn, VERSIONS, &prefix)?;
        remove_under(&txn, ALIASES, &prefix)?;
        tx!("commit", txn.commit())?;
        Ok(existed)
    }

    fn put_version(
        &self,
        version: &VersionRecord,
        function: &FunctionRecord,
    ) -> Result<(), StoreError> {
        let v = serde_json::to_vec(version).expect("a version record always serialises");
        let f = serde_json::to_vec(function).expect("a function record always serialises");
        let key = version_key(&version.function, version.version);
        let txn = tx!("begin", self.db.begin_write())?;
        {
            let mut versions = tx!("open versions", txn.open_table(VERSIONS))?;
            tx!("put version", versions.insert(key.as_str(), v.as_slice()))?;
            let mut functions = tx!("open functions", txn.open_table(FUNCTIONS))?;
            tx!(
                "put function",
                functions.insert(function.name.as_str(), f.as_slice())
            )?;
        }
        tx!("commit", txn.commit())
    }

    fn list_versions(&self, function: &str) -> Result<Vec<VersionRecord>, StoreError> {
        self.list_under(VERSIONS, "versions", function)
    }

    fn delete_version(&self, function: &str, version: u64) -> Result<bool, StoreError> {
        let key = version_key(function, version);
        let txn = tx!("begin", self.db.begin_write())?;
        let existed = {
            let mut t = tx!("open versions", txn.open_table(VERSIONS))?;
            tx!("delete version", t.remove(key.as_str()))?.is_some()
        };
        tx!("commit", txn.commit())?;
        Ok(existed)
    }

    fn put_alias(&self, alias: &AliasRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(alias).expect("an alias record always serialises");
        let key = alias_key(&alias.function, &alias.name);
        let txn = tx!("begin", self.db.begin_write())?;
        {
            let mut t = tx!("open aliases", txn.open_table(ALIASES))?;
            tx!("put alias", t.insert(key.as_str(), bytes.as_slice()))?;
        }
        tx!("commit", txn.commit())
    }

    fn get_alias(&self, function: &str, name: &str) -> Result<Option<AliasRecord>, StoreError> {
        let key = alias_key(function, name);
        let txn = tx!("begin", self.db.begin_read())?;
        let t = tx!("open aliases", txn.open_table(ALIASES))?;
        match tx!("get alias", t.get(key.as_str()))? {
            Some(v) => decode_as("aliases", &key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn list_aliases(&self, function: &str) -> Result<Vec<AliasRecord>, StoreError> {
        self.list_under(ALIASES, "aliases", function)
    }

    fn delete_alias(&self, function: &str, name: &str) -> Result<bool, StoreError> {
        let key = alias_key(function, name);
        let txn = tx!("begin", self.db.begin_write())?;
        let existed = {
            let mut t = tx!("open aliases", txn.open_table(ALIASES))?;
            tx!("delete alias", t.remove(key.as_str()))?.is_some()
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
            last_version: 0,
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

    #[test]
    fn versions_and_aliases_list_in_order_and_go_with_their_function() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("state.db")).unwrap();
        for name in ["f", "f1", "g"] {
            store.put_function(&record(name)).unwrap();
        }
        let version = |function: &str, v: u64| VersionRecord {
            function: function.into(),
            version: v,
            description: String::new(),
            created_at_ms: v,
            config: record(function),
        };
        // 10 after 9 (keys are padded), and f1's never among f's.
        for v in [9, 10, 2] {
            store.put_version(&version("f", v), &record("f")).unwrap();
        }
        store.put_version(&version("f1", 1), &record("f1")).unwrap();
        let listed: Vec<u64> = store
            .list_versions("f")
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(listed, [2, 9, 10]);
        let alias = |function: &str, name: &str| AliasRecord {
            function: function.into(),
            name: name.into(),
            version: 2,
            additional_version_weights: [(9, 0.25)].into(),
            description: String::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        store.put_alias(&alias("f", "prod")).unwrap();
        store.put_alias(&alias("f", "beta")).unwrap();
        store.put_alias(&alias("f1", "prod")).unwrap();
        let names: Vec<String> = store
            .list_aliases("f")
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["beta", "prod"]);
        assert_eq!(
            store.get_alias("f", "prod").unwrap(),
            Some(alias("f", "prod"))
        );
        assert!(store.delete_alias("f", "beta").unwrap());
        assert!(!store.delete_alias("f", "beta").unwrap());
        assert!(store.delete_version("f", 9).unwrap());
        assert!(!store.delete_version("f", 9).unwrap());

        assert!(store.delete_function("f").unwrap());
        assert!(store.list_versions("f").unwrap().is_empty());
        assert!(store.list_aliases("f").unwrap().is_empty());
        assert_eq!(store.list_versions("f1").unwrap().len(), 1);
        assert!(store.get_alias("f1", "prod").unwrap().is_some());
    }
}
