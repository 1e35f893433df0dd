//! Wharf's state: functions, their published versions and aliases (later the async queue), and
//! function logs.
//!
//! Why it looks like this:
//! - State sits behind the [`FunctionStore`] trait so that the embedded backend (one redb file in
//!   the data directory, the default) and a cluster backend (etcd, later) are interchangeable.
//!   Nothing here is a process-wide singleton: two stores can live in one process.
//! - Records are stored as JSON values under their key. New fields get serde defaults, so a newer
//!   Wharf reads what an older one wrote; the database carries a format version from day one so
//!   that an *older* Wharf refuses a newer file instead of misreading it.
//! - Logs are append-only files ([`LogStore`]), not rows in the key-value store: they are written
//!   line by line from every instance and read back as a tail.

mod embedded;
mod function;
mod logs;
mod version;

pub use embedded::EmbeddedStore;
pub use function::{FunctionRecord, Initializer, MountRecord, RegistryCredentials};
pub use logs::{LogEntry, LogFile, LogStore, LogStream, LogWriter, unix_ms};
pub use version::{AliasRecord, VersionRecord};

use std::path::PathBuf;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the state database {path} has format version {found}, this Wharf understands up to \
         {supported}: upgrade Wharf, or point --data-dir elsewhere"
    )]
    NewerFormat {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("state database {operation} failed: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("stored record {key} is unreadable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Functions, keyed by name. Implementations are cheap to call from async code (each call is one
/// short transaction) and safe to share between threads.
pub trait FunctionStore: Send + Sync + 'static {
    /// Creates or replaces the function `record.name`.
    fn put_function(&self, record: &FunctionRecord) -> Result<(), StoreError>;
    fn get_function(&self, name: &str) -> Result<Option<FunctionRecord>, StoreError>;
    /// All functions, ordered by name.
    fn list_functions(&self) -> Result<Vec<FunctionRecord>, StoreError>;
    /// Removes the function, with its versions and aliases; `false` if there was none.
    fn delete_function(&self, name: &str) -> Result<bool, StoreError>;

    /// Stores a published version and the function record that counts it (`last_version`),
    /// in one transaction.
    fn put_version(
        &self,
        version: &VersionRecord,
        function: &FunctionRecord,
    ) -> Result<(), StoreError>;
    /// The function's versions, oldest first.
    fn list_versions(&self, function: &str) -> Result<Vec<VersionRecord>, StoreError>;
    /// `false` if there was no such version.
    fn delete_version(&self, function: &str, version: u64) -> Result<bool, StoreError>;

    /// Creates or replaces the alias `alias.name` of `alias.function`.
    fn put_alias(&self, alias: &AliasRecord) -> Result<(), StoreError>;
    fn get_alias(&self, function: &str, name: &str) -> Result<Option<AliasRecord>, StoreError>;
    /// The function's aliases, ordered by name.
    fn list_aliases(&self, function: &str) -> Result<Vec<AliasRecord>, StoreError>;
    /// `false` if there was no such alias.
    fn delete_alias(&self, function: &str, name: &str) -> Result<bool, StoreError>;
}
