//! The stored form of a function.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A deployed function as stored. Validation happens in the API before a record is built; the
/// store keeps what it is given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub name: String,
    /// The image reference as the user gave it (tag or digest).
    pub image: String,
    /// The reference pinned by digest at deploy (`registry/repo@sha256:…`); instances run this.
    pub image_pinned: String,
    /// The digest the reference resolved to at deploy.
    pub image_digest: String,
    /// Contract (dialect) name, e.g. `fc`.
    pub contract: String,
    /// `event` or `http`. Records from before the field were all event functions.
    #[serde(default = "default_mode")]
    pub mode: String,
    pub port: u16,
    pub memory_mb: u32,
    pub timeout_s: u32,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initializer: Option<Initializer>,
    /// Called before an idle instance is frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_freeze: Option<Initializer>,
    /// Called before an instance is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<Initializer>,
    /// The writable layer in MiB. Records from before the field have none: they get the
    /// default for their memory size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u32>,
    /// Records from before the field were all `fc` functions, whose root is writable.
    #[serde(default)]
    pub read_only_rootfs: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountRecord>,
    /// `none` or `bridge`.
    #[serde(default = "default_network")]
    pub network: String,
    /// Freeze idle instances, thaw them on the next request.
    #[serde(default = "default_true")]
    pub freeze_idle: bool,
    /// Requests one instance serves at once; records from before the field served one.
    #[serde(default = "default_one", skip_serializing_if = "is_one")]
    pub concurrency: u32,
    /// Instances kept started and warm (reserved).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_instances: u32,
    /// At most this many instances at once; none: the pool's default, 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// Seconds an idle instance is kept (0: stopped after its call); none: the server's
    /// `--idle-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryCredentials>,
    /// Whether deploy pulls the image (true) or only resolves it to a digest, leaving the pull
    /// to the first cold start (false). Records written before the field existed pulled.
    #[serde(default = "default_true")]
    pub prepull: bool,
    /// Incremented on every update; instances of an older revision drain and stop.
    pub revision: u64,
    /// The number of the last version published (0: none yet); the next gets one more.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub last_version: u64,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

fn default_true() -> bool {
    true
}

fn default_one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_mode() -> String {
    "event".into()
}

fn default_network() -> String {
    "none".into()
}

/// A lifecycle hook of the contract (initialize, pre-freeze, pre-stop) and its timeout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Initializer {
    pub timeout_s: u32,
}

/// A host path mounted into the function's instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Credentials for the function's image registry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}
