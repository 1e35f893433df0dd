//! `/v1/functions`: create or update, list, get, delete — and the rules a function's
//! configuration must follow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use wharf_contract::{Contract, ContractKind, FunctionMode, Hook};
use wharf_image::{PullOptions, RegistryAuth};
use wharf_pool::FunctionSpec;
use wharf_sandbox::{BindMount, NetworkMode};
use wharf_store::{FunctionRecord, Initializer, MountRecord, RegistryCredentials, unix_ms};

use crate::logs::StoreLog;
use crate::{ApiError, App};

pub const NAME_MAX_LEN: usize = 60;
/// FunctionGraph's cap on `command + args + working_dir`, in characters.
pub const COMMAND_MAX_CHARS: usize = 5120;
pub const MEMORY_MB_RANGE: (i64, i64) = (64, 32 * 1024);
pub const TIMEOUT_S_RANGE: (i64, i64) = (1, 86_400);
pub const MAX_INSTANCES_RANGE: (i64, i64) = (1, 1000);
/// Requests one instance serves at once.
pub const CONCURRENCY_RANGE: (i64, i64) = (1, 1000);
/// The pool's `max_instances` when the function sets none.
pub const DEFAULT_MAX_INSTANCES: i64 = 100;
pub const IDLE_TIMEOUT_S_RANGE: (i64, i64) = (0, 86_400);
/// Lambda's own limits, for `lambda` functions.
pub const LAMBDA_MEMORY_MB_RANGE: (i64, i64) = (128, 10_240);
pub const LAMBDA_TIMEOUT_S_RANGE: (i64, i64) = (1, 900);
pub const INITIALIZER_TIMEOUT_S_RANGE: (i64, i64) = (1, 300);
pub const INITIALIZER_DEFAULT_TIMEOUT_S: u32 = 3;
/// The pre-freeze and pre-stop hooks' timeouts.
pub const HOOK_TIMEOUT_S_RANGE: (i64, i64) = (1, 300);
pub const HOOK_DEFAULT_TIMEOUT_S: u32 = 3;
/// The writable layer's size, in MB (FC allows up to 10 GB).
pub const DISK_MB_RANGE: (i64, i64) = (16, 10 * 1024);
/// FC's and SCF's writable layer; see [`default_disk_mb`].
pub const DEFAULT_DISK_MB: u32 = 512;
/// Host paths mounted into one function's instances, at most.
pub const MAX_MOUNTS: usize = 16;
pub const DEFAULT_MEMORY_MB: u32 = 128;
pub const DEFAULT_TIMEOUT_S: u32 = 60;
/// Total size of the function's environment (names and values).
pub const ENV_MAX_BYTES: usize = 64 * 1024;
/// Largest uid/gid accepted (ids above are reserved or overflow in some tools).
pub const ID_MAX: i64 = 0x7fff_ffff;

/// The writable layer when the function does not say: 512 MB (what FC and SCF give), but at
/// most half of the memory limit. Its files live in memory (tmpfs, charged to the instance's
/// memory cgroup), so a disk as large as the memory would let a full `/tmp` end in an OOM kill
/// instead of `ENOSPC`; with half, a function that fills its disk gets the error it can handle
/// and keeps half its memory.
pub fn default_disk_mb(memory_mb: u32) -> u32 {
    DEFAULT_DISK_MB
        .min(memory_mb / 2)
        .max(DISK_MB_RANGE.0 as u32)
}

/// The body of `PUT /v1/functions/{name}`. A PUT replaces the whole configuration: a field left
/// out takes its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionRequest {
    pub image: Option<String>,
    pub contract: Option<String>,
    pub mode: Option<String>,
    pub port: Option<i64>,
    pub memory_mb: Option<i64>,
    pub timeout_s: Option<i64>,
    pub env: Option<BTreeMap<String, String>>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub uid: Option<i64>,
    pub gid: Option<i64>,
    pub initializer: Option<InitializerRequest>,
    pub registry_auth: Option<RegistryAuthRequest>,
    pub prepull: Option<bool>,
    pub pre_freeze: Option<InitializerRequest>,
    pub pre_stop: Option<InitializerRequest>,
    pub disk_mb: Option<i64>,
    pub read_only_rootfs: Option<bool>,
    pub mounts: Option<Vec<MountRequest>>,
    pub network: Option<String>,
    pub freeze_idle: Option<bool>,
    pub concurrency: Option<i64>,
    pub min_instances: Option<i64>,
    pub max_instances: Option<i64>,
    pub idle_timeout_s: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountRequest {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitializerRequest {
    pub timeout_s: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuthRequest {
    pub username: String,
    pub password: String,
}

/// A request that passed validation; the image is not resolved yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidFunction {
    pub image: String,
    pub contract: ContractKind,
    pub mode: FunctionMode,
    pub port: u16,
    pub memory_mb: u32,
    pub timeout_s: u32,
    pub env: BTreeMap<String, String>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub initializer: Option<Initializer>,
    pub registry_auth: Option<RegistryCredentials>,
    /// Pull the image at deploy (true), or only resolve it to a digest (false).
    pub prepull: bool,
    pub pre_freeze: Option<Initializer>,
    pub pre_stop: Option<Initializer>,
    pub disk_mb: u32,
    pub read_only_rootfs: bool,
    pub mounts: Vec<MountRecord>,
    pub network: NetworkMode,
    pub freeze_idle: bool,
    pub concurrency: u32,
    pub min_instances: u32,
    pub max_instances: Option<u32>,
    pub idle_timeout_s: Option<u32>,
}

/// `none` or `bridge`, as stored and shown.
pub fn network_name(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::None => "none",
        NetworkMode::Bridge => "bridge",
    }
}

fn parse_network(name: &str) -> Option<NetworkMode> {
    match name {
        "none" => Some(NetworkMode::None),
        "bridge" => Some(NetworkMode::Bridge),
        _ => None,
    }
}

fn bind_mount(m: &MountRecord) -> BindMount {
    BindMount {
        source: m.source.clone().into(),
        target: m.target.clone(),
        read_only: m.read_only,
    }
}

/// A hook's `{"timeout_s": …}`, checked against the contract.
fn hook(
    contract: &dyn Contract,
    hook: Hook,
    req: Option<InitializerRequest>,
    (range, default): ((i64, i64), u32),
) -> Result<Option<Initializer>, ApiError> {
    let Some(req) = req else { return Ok(None) };
    let field = hook.field();
    if !contract.supports_hook(hook) {
        return Err(ApiError::invalid(
            field,
            format!(
                "contract {} has no {field} hook; leave it out",
                contract.kind()
            ),
        ));
    }
    let timeout_s = match req.timeout_s {
        None => default,
        Some(t) => in_range(&format!("{field}.timeout_s"), t, range, " seconds")? as u32,
    };
    Ok(Some(Initializer { timeout_s }))
}

/// What breaks the common rule of names (functions, aliases): not empty, at most `max`
/// characters, letters, digits, `_` and `-` only, starting with a letter.
pub(crate) fn name_problem(name: &str, max: usize) -> Option<String> {
    if name.is_empty() {
        Some("must not be empty".to_string())
    } else if name.len() > max {
        Some(format!(
            "is {} characters long, the limit is {max}",
            name.len()
        ))
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(format!(
            "contains {c:?}; only letters, digits, `_` and `-` are allowed"
        ))
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("must start with a letter".to_string())
    } else {
        None
    }
}

/// FunctionGraph's rule: letters, digits, `_` and `-`, at most 60 characters, starting with a
/// letter and ending with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let why = name_problem(name, NAME_MAX_LEN).or_else(|| {
        (!name.ends_with(|c: char| c.is_ascii_alphanumeric()))
            .then(|| "must end with a letter or a digit".to_string())
    });
    match why {
        Some(why) => Err(ApiError::invalid("name", format!("{name:?} {why}"))),
        None => Ok(()),
    }
}

fn in_range(field: &str, v: i64, (lo, hi): (i64, i64), unit: &str) -> Result<i64, ApiError> {
    if v < lo || v > hi {
        return Err(ApiError::invalid(
            field,
            format!("{v} is out of range: must be between {lo} and {hi}{unit}"),
        ));
    }
    Ok(v)
}

fn no_nul(field: &str, s: &str) -> Result<(), ApiError> {
    if s.contains('\0') {
        return Err(ApiError::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

/// Checks every field of `req` and fills in defaults. The error names the field and why.
pub fn validate(req: FunctionRequest) -> Result<ValidFunction, ApiError> {
    let image = req
        .image
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "image",
                "is required (e.g. \"127.0.0.1:5000/hello:latest\")",
            )
        })?;
    let contract: ContractKind = match req.contract.as_deref() {
        None => ContractKind::Fc,
        Some(c) => c.parse().map_err(|e| ApiError::invalid("contract", e))?,
    };
    let adapter = wharf_contract::adapter(contract);
    let mode = match (req.mode.as_deref(), contract) {
        (None, ContractKind::Http) => FunctionMode::Http,
        (None, _) => FunctionMode::Event,
        (Some(m), kind) => match m.parse().map_err(|e| ApiError::invalid("mode", e))? {
            FunctionMode::Event | FunctionMode::Job if kind == ContractKind::Http => {
                return Err(ApiError::invalid(
                    "mode",
                    "an http function is an HTTP server that gets requests passed through: \
                     leave mode out (or set \"http\")",
                ));
            }
            FunctionMode::Job if adapter.job_event_variable().is_none() => {
                return Err(ApiError::invalid(
                    "mode",
                    format!(
                        "contract {kind} has no job mode (images with no server are an fc and \
                         scf feature)"
                    ),
                ));
            }
            FunctionMode::Http if kind == ContractKind::Lambda => {
                return Err(ApiError::invalid(
                    "mode",
                    "a lambda function pulls its events from the Runtime API; put an HTTP \
                     function under the http contract",
                ));
            }
            m => m,
        },
    };
    let port = match req.port {
        None => adapter.default_port(),
        Some(p) => in_range("port", p, (1, 65535), "")? as u16,
    };
    let (memory_range, timeout_range) = match contract {
        ContractKind::Lambda => (LAMBDA_MEMORY_MB_RANGE, LAMBDA_TIMEOUT_S_RANGE),
        _ => (MEMORY_MB_RANGE, TIMEOUT_S_RANGE),
    };
    let memory_mb = match req.memory_mb {
        None => DEFAULT_MEMORY_MB,
        Some(m) => in_range("memory_mb", m, memory_range, " MB")? as u32,
    };
    let timeout_s = match req.timeout_s {
        None => DEFAULT_TIMEOUT_S,
        Some(t) => in_range("timeout_s", t, timeout_range, " seconds")? as u32,
    };
    let env = req.env.unwrap_or_default();
    let mut env_bytes = 0;
    for (k, v) in &env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(ApiError::invalid(
                "env",
                format!("{k:?} is not a valid variable name (non-empty, no `=`, no NUL)"),
            ));
        }
        no_nul(&format!("env.{k}"), v)?;
        env_bytes += k.len() + v.len() + 2;
    }
    if env_bytes > ENV_MAX_BYTES {
        return Err(ApiError::invalid(
            "env",
            format!("is {env_bytes} bytes, the limit is {ENV_MAX_BYTES}"),
        ));
    }
    if let Some(c) = &req.command {
        if c.is_empty() {
            return Err(ApiError::invalid(
                "command",
                "must not be an empty list (leave it out to use the image's ENTRYPOINT)",
            ));
        }
        c.iter().try_for_each(|s| no_nul("command", s))?;
    }
    if let Some(a) = &req.args {
        a.iter().try_for_each(|s| no_nul("args", s))?;
    }
    if let Some(w) = &req.working_dir {
        no_nul("working_dir", w)?;
        if !w.starts_with('/') {
            return Err(ApiError::invalid(
                "working_dir",
                format!("{w:?} must be an absolute path"),
            ));
        }
    }
    let chars: usize = req
        .command
        .iter()
        .chain(req.args.iter())
        .flatten()
        .map(|s| s.chars().count())
        .sum::<usize>()
        + req.working_dir.as_ref().map_or(0, |w| w.chars().count());
    if chars > COMMAND_MAX_CHARS {
        return Err(ApiError::invalid(
            "command",
            format!(
                "command, args and working_dir together are {chars} characters, the limit is \
                 {COMMAND_MAX_CHARS}"
            ),
        ));
    }
    let uid = req
        .uid
        .map(|u| in_range("uid", u, (0, ID_MAX), "").map(|u| u as u32))
        .transpose()?;
    let gid = req
        .gid
        .map(|g| in_range("gid", g, (0, ID_MAX), "").map(|g| g as u32))
        .transpose()?;
    if !adapter.root_allowed() {
        for (field, id) in [("uid", uid), ("gid", gid)] {
            if id == Some(0) {
                let default = adapter
                    .default_user()
                    .map(|(u, g)| format!("; leave it out for the default {u}:{g}"))
                    .unwrap_or_default();
                return Err(ApiError::invalid(
                    field,
                    format!(
                        "0 (root) is not allowed: contract {contract} never runs instances as \
                         root{default}"
                    ),
                ));
            }
        }
    }
    let initializer = hook(
        adapter.as_ref(),
        Hook::Initialize,
        req.initializer,
        (INITIALIZER_TIMEOUT_S_RANGE, INITIALIZER_DEFAULT_TIMEOUT_S),
    )?;
    let pre_freeze = hook(
        adapter.as_ref(),
        Hook::PreFreeze,
        req.pre_freeze,
        (HOOK_TIMEOUT_S_RANGE, HOOK_DEFAULT_TIMEOUT_S),
    )?;
    let pre_stop = hook(
        adapter.as_ref(),
        Hook::PreStop,
        req.pre_stop,
        (HOOK_TIMEOUT_S_RANGE, HOOK_DEFAULT_TIMEOUT_S),
    )?;
    let min_instances = match req.min_instances {
        None => 0,
        Some(n) => {
            let most = req
                .max_instances
                .unwrap_or(DEFAULT_MAX_INSTANCES)
                .min(MAX_INSTANCES_RANGE.1);
            in_range(
                "min_instances",
                n,
                (0, most),
                " (it cannot exceed max_instances)",
            )? as u32
        }
    };
    let concurrency = match req.concurrency {
        None => 1,
        Some(n) => in_range(
            "concurrency",
            n,
            CONCURRENCY_RANGE,
            " requests per instance",
        )? as u32,
    };
    if concurrency > 1 && mode == FunctionMode::Job {
        return Err(ApiError::invalid(
            "concurrency",
            "a job runs one event per instance; concurrency does not apply to jobs",
        ));
    }
    if concurrency > 1 && adapter.pulls_work() {
        return Err(ApiError::invalid(
            "concurrency",
            format!(
                "a {contract} function's runtime client takes one event at a time from the \
                 Runtime API (as on Lambda): its concurrency is 1"
            ),
        ));
    }
    if mode == FunctionMode::Job && min_instances > 0 {
        return Err(ApiError::invalid(
            "min_instances",
            "a job starts an instance per event; it has no reserve to keep",
        ));
    }
    if mode == FunctionMode::Job {
        for (field, set) in [
            ("initializer", initializer.is_some()),
            ("pre_freeze", pre_freeze.is_some()),
            ("pre_stop", pre_stop.is_some()),
        ] {
            if set {
                return Err(ApiError::invalid(
                    field,
                    "a job has no server to call hooks on; leave it out",
                ));
            }
        }
    }
    let disk_mb = match req.disk_mb {
        None => default_disk_mb(memory_mb),
        Some(d) => in_range("disk_mb", d, DISK_MB_RANGE, " MB")? as u32,
    };
    let network = match req.network.as_deref() {
        None => NetworkMode::None,
        Some(n) => parse_network(n).ok_or_else(|| {
            ApiError::invalid(
                "network",
                format!("{n:?} is not a network mode: none or bridge"),
            )
        })?,
    };
    let mounts = validate_mounts(req.mounts.unwrap_or_default())?;
    let registry_auth = match req.registry_auth {
        None => None,
        Some(a) if a.username.is_empty() || a.password.is_empty() => {
            return Err(ApiError::invalid(
                "registry_auth",
                "username and password must both be non-empty",
            ));
        }
        Some(a) => Some(RegistryCredentials {
            username: a.username,
            password: a.password,
        }),
    };
    Ok(ValidFunction {
        image,
        contract,
        mode,
        port,
        memory_mb,
        timeout_s,
        env,
        command: req.command,
        args: req.args,
        working_dir: req.working_dir,
        uid,
        gid,
        initializer,
        registry_auth,
        prepull: req.prepull.unwrap_or(true),
        pre_freeze,
        pre_stop,
        disk_mb,
        read_only_rootfs: req
            .read_only_rootfs
            .unwrap_or_else(|| adapter.read_only_rootfs()),
        mounts,
        network,
        freeze_idle: req.freeze_idle.unwrap_or(true),
        concurrency,
        max_instances: req
            .max_instances
            .map(|n| in_range("max_instances", n, MAX_INSTANCES_RANGE, "").map(|n| n as u32))
            .transpose()?,
        min_instances,
        idle_timeout_s: req
            .idle_timeout_s
            .map(|t| {
                in_range("idle_timeout_s", t, IDLE_TIMEOUT_S_RANGE, " seconds").map(|t| t as u32)
            })
            .transpose()?,
    })
}

/// The sandbox's rules for each mount (absolute, normalised paths; nothing over `/proc`, `/sys`,
/// `/dev`, `/tmp` or `/`; no two on one target), and a source that exists on this machine now
/// (the server's: the API and the instances run on the same host). The sandbox checks the
/// source again at each start, since it may change.
fn validate_mounts(requests: Vec<MountRequest>) -> Result<Vec<MountRecord>, ApiError> {
    if requests.len() > MAX_MOUNTS {
        return Err(ApiError::invalid(
            "mounts",
            format!("{} mounts, the limit is {MAX_MOUNTS}", requests.len()),
        ));
    }
    let mut records = Vec::with_capacity(requests.len());
    for (i, m) in requests.into_iter().enumerate() {
        let field = format!("mounts[{i}]");
        no_nul(&field, &m.source)?;
        no_nul(&field, &m.target)?;
        let record = MountRecord {
            source: m.source,
            target: m.target,
            read_only: m.read_only,
        };
        wharf_sandbox::validate_mount(&bind_mount(&record))
            .map_err(|e| ApiError::invalid(&field, e))?;
        if let Err(e) = std::fs::metadata(&record.source) {
            return Err(ApiError::invalid(
                &format!("{field}.source"),
                format!(
                    "{} cannot be used on the server: {e}; create it there first",
                    record.source
                ),
            ));
        }
        records.push(record);
    }
    let binds: Vec<BindMount> = records.iter().map(bind_mount).collect();
    wharf_sandbox::validate_mounts(&binds).map_err(|e| ApiError::invalid("mounts", e))?;
    Ok(records)
}

/// What the API shows of a function. The registry password is never shown.
#[derive(Debug, Serialize)]
pub struct FunctionView {
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub image_pinned: String,
    pub contract: String,
    pub mode: String,
    pub port: u16,
    pub memory_mb: u32,
    pub timeout_s: u32,
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initializer: Option<Initializer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_freeze: Option<Initializer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<Initializer>,
    pub disk_mb: u32,
    pub read_only_rootfs: bool,
    pub mounts: Vec<MountRecord>,
    pub network: String,
    pub freeze_idle: bool,
    pub concurrency: u32,
    pub min_instances: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuthView>,
    pub prepull: bool,
    pub revision: u64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize)]
pub struct RegistryAuthView {
    pub username: String,
}

pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl From<&FunctionRecord> for FunctionView {
    fn from(r: &FunctionRecord) -> Self {
        FunctionView {
            name: r.name.clone(),
            image: r.image.clone(),
            image_digest: r.image_digest.clone(),
            image_pinned: r.image_pinned.clone(),
            contract: r.contract.clone(),
            mode: r.mode.clone(),
            port: r.port,
            memory_mb: r.memory_mb,
            timeout_s: r.timeout_s,
            env: r.env.clone(),
            command: r.command.clone(),
            args: r.args.clone(),
            working_dir: r.working_dir.clone(),
            uid: r.uid,
            gid: r.gid,
            initializer: r.initializer.clone(),
            pre_freeze: r.pre_freeze.clone(),
            pre_stop: r.pre_stop.clone(),
            disk_mb: r.disk_mb.unwrap_or_else(|| default_disk_mb(r.memory_mb)),
            read_only_rootfs: r.read_only_rootfs,
            mounts: r.mounts.clone(),
            network: r.network.clone(),
            freeze_idle: r.freeze_idle,
            concurrency: r.concurrency,
            min_instances: r.min_instances,
            max_instances: r.max_instances,
            idle_timeout_s: r.idle_timeout_s,
            registry_auth: r.registry_auth.as_ref().map(|a| RegistryAuthView {
                username: a.username.clone(),
            }),
            prepull: r.prepull,
            revision: r.revision,
            created_at: rfc3339(r.created_at_ms),
            updated_at: rfc3339(r.updated_at_ms),
        }
    }
}

/// The pool's view of a stored function.
pub(crate) fn spec_of(app: &App, r: &FunctionRecord) -> Result<FunctionSpec, ApiError> {
    let contract: ContractKind = r.contract.parse().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("stored function {} has an unusable contract: {e}", r.name),
        )
    })?;
    let mode: FunctionMode = r.mode.parse().map_err(|e| {
        ApiError::internal(format!(
            "stored function {} has an unusable mode: {e}",
            r.name
        ))
    })?;
    let network = parse_network(&r.network).ok_or_else(|| {
        ApiError::internal(format!(
            "stored function {} has an unknown network mode {:?}",
            r.name, r.network
        ))
    })?;
    let secs =
        |h: &Option<Initializer>| h.as_ref().map(|i| Duration::from_secs(i.timeout_s.into()));
    Ok(FunctionSpec {
        name: r.name.clone(),
        revision: r.revision,
        version: None,
        contract,
        mode,
        port: Some(r.port),
        memory_mb: r.memory_mb,
        timeout: Duration::from_secs(r.timeout_s.into()),
        env: r.env.clone(),
        command: r.command.clone(),
        args: r.args.clone(),
        working_dir: r.working_dir.clone(),
        uid: r.uid,
        gid: r.gid,
        initializer_timeout: r
            .initializer
            .as_ref()
            .map(|i| Duration::from_secs(i.timeout_s.into())),
        pre_freeze_timeout: secs(&r.pre_freeze),
        pre_stop_timeout: secs(&r.pre_stop),
        disk_mb: r.disk_mb.unwrap_or_else(|| default_disk_mb(r.memory_mb)),
        read_only_rootfs: r.read_only_rootfs,
        mounts: r.mounts.iter().map(bind_mount).collect(),
        network,
        freeze_idle: r.freeze_idle,
        concurrency: r.concurrency.max(1) as usize,
        min_instances: r.min_instances as usize,
        max_instances: r.max_instances.map(|n| n as usize),
        idle_timeout: r.idle_timeout_s.map(|t| Duration::from_secs(t.into())),
        image_pinned: r.image_pinned.clone(),
        registry_auth: registry_auth(r.registry_auth.as_ref()),
        log: Arc::new(StoreLog::new(&app.logs, &r.name)),
    })
}

fn registry_auth(c: Option<&RegistryCredentials>) -> RegistryAuth {
    match c {
        Some(c) => RegistryAuth::Basic {
            username: c.username.clone(),
            password: c.password.clone(),
        },
        None => RegistryAuth::Anonymous,
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::invalid("body", e.body_text()))?;
    if body.is_empty() {
        return Err(ApiError::invalid(
            "body",
            "is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", e))
}

/// The media type of a deploy that streams its pull progress (`Accept` of the PUT).
pub const NDJSON: &str = "application/x-ndjson";

/// `PUT /v1/functions/{name}`. With `Accept: application/x-ndjson`, the answer is 200 and a
/// stream of JSON lines: the pull's progress events (`{"event":…}`, see
/// [`wharf_image::PullEvent`]), then one last line with the result, `{"status":201,
/// "function":{…}}` or `{"status":400,"error":{"code","message"}}`. Requests that fail
/// validation are answered as without the header.
pub async fn put(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let valid = validate(parse_json(body)?)?;
    if wants_ndjson(&headers) {
        return Ok(deploy_streaming(app, name, valid));
    }
    // Run to the end even if the client goes away: a deploy is stored and installed, or not.
    let (status, view) =
        crate::detached(async move { deploy(&app, name, valid, &PullOptions::default()).await })
            .await?;
    Ok((status, Json(view)).into_response())
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let mut parts = t.split(';');
            let media = parts.next().unwrap_or_default().trim();
            // `q=0` says "not this one".
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case(NDJSON) && !refused
        })
}

fn json_line(value: &impl Serialize) -> Bytes {
    let mut line = serde_json::to_vec(value).expect("events and results always serialise");
    line.push(b'\n');
    Bytes::from(line)
}

/// Runs the deploy in its own task (it finishes even if the client goes away) and answers with
/// its progress and result as JSON lines.
fn deploy_streaming(app: Arc<App>, name: String, valid: ValidFunction) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let events = tx.clone();
    // A client that went away makes sends fail; the deploy goes on.
    let options = PullOptions::with_progress(move |event| {
        let _ = events.send(json_line(&event));
    });
    tokio::spawn(async move {
        let result = deploy(&app, name, valid, &options).await;
        drop(options);
        let last = match result {
            Ok((status, function)) => {
                serde_json::json!({ "status": status.as_u16(), "function": function })
            }
            Err(e) => serde_json::json!({
                "status": e.status.as_u16(),
                "error": { "code": e.code, "message": e.message },
            }),
        };
        let _ = tx.send(json_line(&last));
    });
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    (
        [(http::header::CONTENT_TYPE, NDJSON)],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

async fn deploy(
    app: &Arc<App>,
    name: String,
    valid: ValidFunction,
    options: &PullOptions,
) -> Result<(StatusCode, FunctionView), ApiError> {
    let _serialised = app.lock_function(&name).await;
    if valid.network == NetworkMode::Bridge {
        // Once per daemon: the bridge and its NAT. A host that cannot have them fails the
        // deploy now, not every cold start later.
        app.pool.prepare_network().await?;
    }
    let auth = registry_auth(valid.registry_auth.as_ref());
    // The lease keeps a prune from removing the image before the function is stored.
    let (pinned, digest, _lease) = if valid.prepull {
        let (image, lease) = app
            .images
            .pull_leased_with(&valid.image, &auth, options)
            .await?;
        if wharf_pool::instance_spec::argv(
            valid.command.as_deref(),
            valid.args.as_deref(),
            &image.config.entrypoint,
            &image.config.cmd,
        )
        .is_empty()
        {
            return Err(ApiError::invalid(
                "command",
                format!(
                    "the image {} has no ENTRYPOINT or CMD: set `command`",
                    valid.image
                ),
            ));
        }
        (image.pinned, image.digest, Some(lease))
    } else {
        // Pinned all the same; the first cold start pulls (and checks the command).
        let resolved = app.images.resolve(&valid.image, &auth).await?;
        // The image may be in the store already: a prune keeps it until the function is stored.
        let lease = app.images.lease(&resolved.pinned).await;
        (resolved.pinned, resolved.digest, Some(lease))
    };
    let now = unix_ms(SystemTime::now());
    let existing = crate::blocking({
        let (store, name) = (app.store.clone(), name.clone());
        move || store.get_function(&name)
    })
    .await?;
    let record = FunctionRecord {
        name: name.clone(),
        image: valid.image,
        image_pinned: pinned,
        image_digest: digest,
        contract: valid.contract.as_str().to_string(),
        mode: valid.mode.as_str().to_string(),
        port: valid.port,
        memory_mb: valid.memory_mb,
        timeout_s: valid.timeout_s,
        env: valid.env,
        command: valid.command,
        args: valid.args,
        working_dir: valid.working_dir,
        uid: valid.uid,
        gid: valid.gid,
        initializer: valid.initializer,
        pre_freeze: valid.pre_freeze,
        pre_stop: valid.pre_stop,
        disk_mb: Some(valid.disk_mb),
        read_only_rootfs: valid.read_only_rootfs,
        mounts: valid.mounts,
        network: network_name(valid.network).to_string(),
        freeze_idle: valid.freeze_idle,
        concurrency: valid.concurrency,
        min_instances: valid.min_instances,
        max_instances: valid.max_instances,
        idle_timeout_s: valid.idle_timeout_s,
        registry_auth: valid.registry_auth,
        prepull: valid.prepull,
        revision: existing.as_ref().map_or(1, |e| e.revision + 1),
        last_version: existing.as_ref().map_or(0, |e| e.last_version),
        created_at_ms: existing.as_ref().map_or(now, |e| e.created_at_ms),
        updated_at_ms: now,
    };
    let spec = spec_of(app, &record)?;
    let record = crate::blocking({
        let store = app.store.clone();
        move || store.put_function(&record).map(|()| record)
    })
    .await?;
    app.pool.deploy(spec)?;
    tracing::info!(function = %name, image = %record.image_pinned, revision = record.revision, "deployed");
    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, FunctionView::from(&record)))
}

#[derive(Serialize)]
pub struct FunctionList {
    pub functions: Vec<FunctionView>,
}

/// `GET /v1/functions`
pub async fn list(State(app): State<Arc<App>>) -> Result<Json<FunctionList>, ApiError> {
    let functions = app
        .store
        .list_functions()?
        .iter()
        .map(FunctionView::from)
        .collect();
    Ok(Json(FunctionList { functions }))
}

/// `GET /v1/functions/{name}`
pub async fn get(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<FunctionView>, ApiError> {
    match app.store.get_function(&name)? {
        Some(r) => Ok(Json(FunctionView::from(&r))),
        None => Err(ApiError::function_not_found(&name)),
    }
}

/// `DELETE /v1/functions/{name}`: stops the function's instances, forgets it, its versions, its
/// aliases and its logs.
/// Runs to the end even if the client goes away.
pub async fn delete(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    crate::detached(async move {
        let _serialised = app.lock_function(&name).await;
        let existed = crate::blocking({
            let (store, name) = (app.store.clone(), name.clone());
            move || store.delete_function(&name)
        })
        .await?;
        if !existed {
            return Err(ApiError::function_not_found(&name));
        }
        app.aliases.remove_function(&name);
        app.pool.remove(&name).await;
        crate::blocking({
            let (app, name) = (app.clone(), name.clone());
            move || app.logs.remove(&name)
        })
        .await?;
        tracing::info!(function = %name, "deleted");
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> Result<ValidFunction, ApiError> {
        validate(serde_json::from_value(v).map_err(|e| ApiError::invalid("body", e))?)
    }

    #[test]
    fn names_follow_the_functiongraph_rule() {
        for ok in ["hello", "a", "h-1_x", &"a".repeat(60)] {
            validate_name(ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("1abc", "start with a letter"),
            ("abc-", "end with a letter or a digit"),
            ("a.b", "only letters"),
            ("a b", "only letters"),
            (&"a".repeat(61), "limit is 60"),
        ] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.starts_with("name: "), "{}", e.message);
            assert!(e.message.contains(why), "{bad:?}: {}", e.message);
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let v = req(serde_json::json!({"image": "r/x:1"})).unwrap();
        assert_eq!(v.contract, ContractKind::Fc);
        assert_eq!(v.port, 9000);
        assert_eq!(v.memory_mb, DEFAULT_MEMORY_MB);
        assert_eq!(v.timeout_s, DEFAULT_TIMEOUT_S);
        assert!(v.prepull, "deploy pulls unless told not to");
        let v = req(serde_json::json!({"image": "r/x:1", "prepull": false})).unwrap();
        assert!(!v.prepull);
        assert_eq!(v.disk_mb, 64, "half of the default 128 MB");
        assert!(!v.read_only_rootfs && v.freeze_idle && v.mounts.is_empty());
        assert_eq!(v.network, NetworkMode::None);
        let v = req(serde_json::json!({"image": "r/x:1", "contract": "scf", "memory_mb": 2048}))
            .unwrap();
        assert!(v.read_only_rootfs, "the contract's default");
        assert_eq!(v.disk_mb, DEFAULT_DISK_MB);
        let v = req(serde_json::json!({"image": "r/x:1", "contract": "functiongraph"})).unwrap();
        assert_eq!(v.port, 8000);
        assert_eq!(v.mode, FunctionMode::Event);
        let v = req(serde_json::json!({"image": "r/x:1", "contract": "http"})).unwrap();
        assert_eq!((v.mode, v.port), (FunctionMode::Http, 8080));
        let v = req(serde_json::json!({"image": "r/x:1", "mode": "http"})).unwrap();
        assert_eq!((v.contract, v.mode), (ContractKind::Fc, FunctionMode::Http));
        assert_eq!(default_disk_mb(64), 32);
        assert_eq!(default_disk_mb(32 * 1024), 512);
        let v = req(serde_json::json!({"image": "r/x:1", "initializer": {}})).unwrap();
        assert_eq!(
            v.initializer,
            Some(Initializer {
                timeout_s: INITIALIZER_DEFAULT_TIMEOUT_S
            })
        );
    }

    #[test]
    fn each_refusal_names_its_field() {
        let cases = [
            (serde_json::json!({}), "image: is required"),
            (
                serde_json::json!({"image": "x", "memory_mb": 10}),
                "memory_mb: 10 is out of range",
            ),
            (
                serde_json::json!({"image": "x", "timeout_s": 0}),
                "timeout_s: 0 is out of range",
            ),
            (
                serde_json::json!({"image": "x", "port": 70000}),
                "port: 70000 is out of range",
            ),
            (
                serde_json::json!({"image": "x", "contract": "lambda", "memory_mb": 64}),
                "memory_mb: 64 is out of range: must be between 128 and 10240 MB",
            ),
            (
                serde_json::json!({"image": "x", "contract": "lambda", "timeout_s": 901}),
                "timeout_s: 901 is out of range: must be between 1 and 900 seconds",
            ),
            (
                serde_json::json!({"image": "x", "contract": "functiongraph", "uid": 0}),
                "uid: 0 (root) is not allowed: contract functiongraph never runs instances as \
                 root; leave it out for the default 1003:1003",
            ),
            (
                serde_json::json!({"image": "x", "mode": "rest"}),
                "mode: unknown mode `rest`; use `event`, `http` or `job`",
            ),
            (
                serde_json::json!({"image": "x", "contract": "functiongraph", "mode": "job"}),
                "mode: contract functiongraph has no job mode",
            ),
            (
                serde_json::json!({"image": "x", "mode": "job", "initializer": {}}),
                "initializer: a job has no server to call hooks on",
            ),
            (
                serde_json::json!({"image": "x", "contract": "http", "mode": "event"}),
                "mode: an http function is an HTTP server",
            ),
            (
                serde_json::json!({"image": "x", "contract": "scf", "initializer": {}}),
                "initializer: contract scf has no initializer hook",
            ),
            (
                serde_json::json!({"image": "x", "pre_stop": {"timeout_s": 0}}),
                "pre_stop.timeout_s: 0 is out of range",
            ),
            (
                serde_json::json!({"image": "x", "disk_mb": 8}),
                "disk_mb: 8 is out of range: must be between 16 and 10240 MB",
            ),
            (
                serde_json::json!({"image": "x", "network": "host"}),
                "network: \"host\" is not a network mode: none or bridge",
            ),
            (
                serde_json::json!({"image": "x", "mounts": [{"source": "/tmp", "target": "rel"}]}),
                "mounts[0]: ",
            ),
            (
                serde_json::json!({"image": "x", "mounts": [{"source": "/", "target": "/x", "ro": true}]}),
                "unknown field `ro`",
            ),
            (
                serde_json::json!({"image": "x", "working_dir": "rel"}),
                "working_dir: \"rel\" must be an absolute path",
            ),
            (
                serde_json::json!({"image": "x", "env": {"A=B": "1"}}),
                "env: \"A=B\" is not a valid variable name",
            ),
            (
                serde_json::json!({"image": "x", "command": []}),
                "command: must not be an empty list",
            ),
            (
                serde_json::json!({"image": "x", "uid": -1}),
                "uid: -1 is out of range",
            ),
            (
                serde_json::json!({"image": "x", "initializer": {"timeout_s": 301}}),
                "initializer.timeout_s: 301 is out of range",
            ),
            (
                serde_json::json!({"image": "x", "command": ["/bin/x"], "args": ["a".repeat(5120)]}),
                "command, args and working_dir together are 5126 characters, the limit is 5120",
            ),
            (
                serde_json::json!({"image": "x", "memory": 128}),
                "unknown field `memory`",
            ),
        ];
        for (body, want) in cases {
            let e = req(body.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message.contains(want), "{body}: {}", e.message);
        }
    }

    #[test]
    fn progress_is_streamed_only_when_ndjson_is_accepted() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::ACCEPT, v.parse().unwrap());
            wants_ndjson(&h)
        };
        assert!(!wants_ndjson(&HeaderMap::new()));
        assert!(!accept("application/json"));
        assert!(!accept("*/*"));
        assert!(accept("application/x-ndjson"));
        assert!(accept("application/json, application/x-ndjson;q=0.9"));
        assert!(!accept("application/x-ndjson;q=0"));
        assert!(!accept("application/json, application/x-ndjson; q=0.0"));
    }

    #[test]
    fn the_command_cap_counts_characters_not_bytes() {
        let v = req(serde_json::json!({"image": "x", "args": ["é".repeat(5120)]}));
        assert!(v.is_ok());
    }
}
