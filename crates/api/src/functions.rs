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
use wharf_contract::ContractKind;
use wharf_image::{PullOptions, RegistryAuth};
use wharf_pool::FunctionSpec;
use wharf_store::{FunctionRecord, Initializer, RegistryCredentials, unix_ms};

use crate::logs::StoreLog;
use crate::{ApiError, App};

pub const NAME_MAX_LEN: usize = 60;
/// FunctionGraph's cap on `command + args + working_dir`, in characters.
pub const COMMAND_MAX_CHARS: usize = 5120;
pub const MEMORY_MB_RANGE: (i64, i64) = (64, 32 * 1024);
pub const TIMEOUT_S_RANGE: (i64, i64) = (1, 86_400);
pub const INITIALIZER_TIMEOUT_S_RANGE: (i64, i64) = (1, 300);
pub const INITIALIZER_DEFAULT_TIMEOUT_S: u32 = 3;
pub const DEFAULT_MEMORY_MB: u32 = 128;
pub const DEFAULT_TIMEOUT_S: u32 = 60;
/// Total size of the function's environment (names and values).
pub const ENV_MAX_BYTES: usize = 64 * 1024;
/// Largest uid/gid accepted (ids above are reserved or overflow in some tools).
pub const ID_MAX: i64 = 0x7fff_ffff;

/// The body of `PUT /v1/functions/{name}`. A PUT replaces the whole configuration: a field left
/// out takes its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionRequest {
    pub image: Option<String>,
    pub contract: Option<String>,
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
}

/// FunctionGraph's rule: letters, digits, `_` and `-`, at most 60 characters, starting with a
/// letter and ending with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let why = if name.is_empty() {
        Some("must not be empty".to_string())
    } else if name.len() > NAME_MAX_LEN {
        Some(format!(
            "is {} characters long, the limit is {NAME_MAX_LEN}",
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
    } else if !name.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("must end with a letter or a digit".to_string())
    } else {
        None
    };
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
    let port = match req.port {
        None => adapter.default_port(),
        Some(p) => in_range("port", p, (1, 65535), "")? as u16,
    };
    let memory_mb = match req.memory_mb {
        None => DEFAULT_MEMORY_MB,
        Some(m) => in_range("memory_mb", m, MEMORY_MB_RANGE, " MB")? as u32,
    };
    let timeout_s = match req.timeout_s {
        None => DEFAULT_TIMEOUT_S,
        Some(t) => in_range("timeout_s", t, TIMEOUT_S_RANGE, " seconds")? as u32,
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
    let initializer = req
        .initializer
        .map(|i| {
            let timeout_s = match i.timeout_s {
                None => INITIALIZER_DEFAULT_TIMEOUT_S,
                Some(t) => in_range(
                    "initializer.timeout_s",
                    t,
                    INITIALIZER_TIMEOUT_S_RANGE,
                    " seconds",
                )? as u32,
            };
            Ok::<_, ApiError>(Initializer { timeout_s })
        })
        .transpose()?;
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
    })
}

/// What the API shows of a function. The registry password is never shown.
#[derive(Debug, Serialize)]
pub struct FunctionView {
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub image_pinned: String,
    pub contract: String,
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

fn rfc3339(ms: u64) -> String {
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
    Ok(FunctionSpec {
        name: r.name.clone(),
        revision: r.revision,
        contract,
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
        registry_auth: valid.registry_auth,
        prepull: valid.prepull,
        revision: existing.as_ref().map_or(1, |e| e.revision + 1),
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

/// `DELETE /v1/functions/{name}`: stops the function's instances, forgets it and its logs.
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
                serde_json::json!({"image": "x", "contract": "scf"}),
                "contract: contract `scf` is not supported yet",
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
