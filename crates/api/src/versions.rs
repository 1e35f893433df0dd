//! Published versions and aliases (`/v1/functions/{name}/versions`, `…/aliases`), and which
//! pool an invocation with a qualifier goes to (`NAME:QUALIFIER`, `?qualifier=`,
//! `x-fc-qualifier`, Lambda's `Qualifier`).
//!
//! Why it looks like this:
//! - A version is the function's stored record as it was when it was published: configuration
//!   and pinned image, never changed afterwards. The pool runs each version as a pool of its own
//!   (key `NAME:VERSION`), so a version's instances keep its configuration whatever the function
//!   becomes, and updating the function never touches them.
//! - A version has no reserve: `min_instances` is the latest configuration's; a version's
//!   instances start on demand and go at their idle timeout.
//! - Aliases are kept in memory beside the store (changed under the function's lock, loaded at
//!   start), so an invocation by alias reads no store: it picks a version by the alias's weights
//!   and goes to that version's pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use wharf_pool::{FunctionSpec, version_key};
use wharf_store::{AliasRecord, FunctionRecord, VersionRecord, unix_ms};

use crate::functions::{FunctionView, rfc3339, spec_of};
use crate::{ApiError, App};

/// Alias names: letters, digits, `_` and `-`, starting with a letter, at most this long.
pub const ALIAS_MAX_LEN: usize = 128;
pub const DESCRIPTION_MAX_LEN: usize = 256;
/// The qualifier of the function's current configuration (also accepted: Lambda's `$LATEST`).
pub const LATEST: &str = "LATEST";
/// An FC caller names the version or alias it invokes in this header.
pub const FC_QUALIFIER: HeaderName = HeaderName::from_static("x-fc-qualifier");
/// On every answer of an invocation: the version that served it, or `LATEST`.
pub const VERSION: HeaderName = HeaderName::from_static("x-wharf-version");

/// What a qualifier names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier<'a> {
    Latest,
    Version(u64),
    Alias(&'a str),
}

/// Reads a qualifier: `LATEST` (or `$LATEST`, or nothing), a version number, or an alias name.
pub fn parse_qualifier(q: Option<&str>) -> Result<Qualifier<'_>, ApiError> {
    let q = match q {
        None | Some("") | Some(LATEST) | Some("$LATEST") => return Ok(Qualifier::Latest),
        Some(q) => q,
    };
    if q.bytes().all(|b| b.is_ascii_digit()) {
        return match q.parse::<u64>() {
            Ok(v) if v > 0 => Ok(Qualifier::Version(v)),
            _ => Err(ApiError::invalid(
                "qualifier",
                format!("{q:?} is not a version: versions are numbered from 1"),
            )),
        };
    }
    validate_alias(q)?;
    Ok(Qualifier::Alias(q))
}

/// Lambda's and FC's rule, made one: letters, digits, `_` and `-`, starting with a letter, not
/// `LATEST`.
pub fn validate_alias(name: &str) -> Result<(), ApiError> {
    let why = crate::functions::name_problem(name, ALIAS_MAX_LEN).or_else(|| {
        (name == LATEST).then(|| "is the name of the function's current configuration".to_string())
    });
    match why {
        Some(why) => Err(ApiError::invalid("alias", format!("{name:?} {why}"))),
        None => Ok(()),
    }
}

/// `NAME[:QUALIFIER]` and a qualifier given another way (query, header): the name and the one
/// qualifier, or an error when the two disagree.
pub fn split_target<'a>(
    given: &'a str,
    other: Option<&'a str>,
) -> Result<(&'a str, Option<&'a str>), ApiError> {
    let (name, in_name) = match given.split_once(':') {
        Some((name, q)) => (name, Some(q)),
        None => (given, None),
    };
    let other = other.filter(|q| !q.is_empty());
    match (in_name, other) {
        (Some(a), Some(b)) if a != b => Err(ApiError::invalid(
            "qualifier",
            format!("the name says {a:?} and the request also says {b:?}; give one"),
        )),
        (a, b) => Ok((name, a.or(b).filter(|q| !q.is_empty()))),
    }
}

/// An alias as the invocation path needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Route {
    version: u64,
    /// The other version and the share of calls it gets.
    other: Option<(u64, f64)>,
}

impl Route {
    fn of(a: &AliasRecord) -> Route {
        Route {
            version: a.version,
            other: a
                .additional_version_weights
                .iter()
                .next()
                .map(|(v, w)| (*v, *w)),
        }
    }

    fn pick(&self) -> u64 {
        match self.other {
            Some((v, w)) if rand::random::<f64>() < w => v,
            _ => self.version,
        }
    }
}

/// Every function's aliases, in memory (see the module's notes).
#[derive(Default)]
pub struct Aliases(RwLock<HashMap<String, HashMap<String, Route>>>);

impl Aliases {
    pub(crate) fn set(&self, a: &AliasRecord) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(a.function.clone())
            .or_default()
            .insert(a.name.clone(), Route::of(a));
    }

    fn remove(&self, function: &str, name: &str) {
        if let Some(m) = self
            .0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(function)
        {
            m.remove(name);
        }
    }

    pub(crate) fn remove_function(&self, function: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(function);
    }

    fn route(&self, function: &str, name: &str) -> Option<Route> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(function)?
            .get(name)
            .copied()
    }

    /// The aliases of `function` that send traffic to `version`, by name.
    fn using(&self, function: &str, version: u64) -> Vec<String> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = map
            .get(function)
            .into_iter()
            .flatten()
            .filter(|(_, r)| r.version == version || r.other.is_some_and(|(v, _)| v == version))
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }
}

/// Where an invocation goes: the pool's key, and the version it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub key: String,
    /// `None`: the latest configuration.
    pub version: Option<u64>,
    /// The alias the call came through, if it did (the function is told, where its contract
    /// says how).
    pub alias: Option<String>,
}

impl Target {
    /// The value of [`VERSION`].
    pub fn version_header(&self) -> HeaderValue {
        match self.version {
            Some(v) => HeaderValue::from(v),
            None => HeaderValue::from_static(LATEST),
        }
    }
}

/// The pool an invocation of function `name` with `qualifier` goes to. An alias picks one of
/// its versions by weight on every call.
pub fn resolve(app: &App, name: &str, qualifier: Option<&str>) -> Result<Target, ApiError> {
    let mut via = None;
    let version = match parse_qualifier(qualifier)? {
        Qualifier::Latest => {
            return Ok(Target {
                key: name.to_string(),
                version: None,
                alias: None,
            });
        }
        Qualifier::Version(v) => v,
        Qualifier::Alias(alias) => match app.aliases.route(name, alias) {
            Some(route) => {
                via = Some(alias.to_string());
                route.pick()
            }
            None if app.pool.contract_of(name).is_none() => {
                return Err(ApiError::function_not_found(name));
            }
            None => return Err(alias_not_found(name, alias)),
        },
    };
    let key = version_key(name, version);
    if app.pool.contract_of(&key).is_none() {
        if app.pool.contract_of(name).is_none() {
            return Err(ApiError::function_not_found(name));
        }
        return Err(version_not_found(name, version));
    }
    Ok(Target {
        key,
        version: Some(version),
        alias: via,
    })
}

fn version_not_found(name: &str, version: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "VersionNotFound",
        format!(
            "function {name} has no version {version} (its versions: GET \
             /v1/functions/{name}/versions; publish one with POST /v1/functions/{name}/versions)"
        ),
    )
}

fn alias_not_found(name: &str, alias: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "AliasNotFound",
        format!(
            "function {name} has no alias {alias} (its aliases: GET /v1/functions/{name}/aliases; \
             create it with PUT /v1/functions/{name}/aliases/{alias})"
        ),
    )
}

/// The pool's view of a published version: its own configuration, no reserve.
pub(crate) fn spec_of_version(app: &App, v: &VersionRecord) -> Result<FunctionSpec, ApiError> {
    let mut spec = spec_of(app, &v.config)?;
    spec.version = Some(v.version);
    spec.min_instances = 0;
    Ok(spec)
}

/// What the API shows of a version.
#[derive(Debug, Serialize)]
pub struct VersionView {
    pub function: String,
    pub version: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub created_at: String,
    /// The function as it was when the version was published.
    pub config: FunctionView,
}

impl From<&VersionRecord> for VersionView {
    fn from(v: &VersionRecord) -> Self {
        VersionView {
            function: v.function.clone(),
            version: v.version,
            description: v.description.clone(),
            created_at: rfc3339(v.created_at_ms),
            config: FunctionView::from(&v.config),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct VersionList {
    pub versions: Vec<VersionView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    #[serde(default)]
    pub description: String,
}

fn check_description(d: &str) -> Result<(), ApiError> {
    if d.len() > DESCRIPTION_MAX_LEN {
        return Err(ApiError::invalid(
            "description",
            format!("is longer than {DESCRIPTION_MAX_LEN} bytes"),
        ));
    }
    Ok(())
}

async fn function_record(app: &Arc<App>, name: &str) -> Result<FunctionRecord, ApiError> {
    let (store, n) = (app.store.clone(), name.to_string());
    crate::blocking(move || store.get_function(&n))
        .await?
        .ok_or_else(|| ApiError::function_not_found(name))
}

async fn versions_of(app: &Arc<App>, name: &str) -> Result<Vec<VersionRecord>, ApiError> {
    let (store, n) = (app.store.clone(), name.to_string());
    crate::blocking(move || store.list_versions(&n)).await
}

/// `POST /v1/functions/{name}/versions`: publishes the function's current configuration as a
/// new version (201). If the newest version already is the current configuration, that version
/// is the answer (200): publishing twice makes no second copy.
pub async fn publish(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: PublishRequest = match &body {
        Ok(b) if b.is_empty() => PublishRequest::default(),
        _ => crate::functions::parse_json(body)?,
    };
    check_description(&req.description)?;
    crate::detached(async move {
        let _serialised = app.lock_function(&name).await;
        let mut function = function_record(&app, &name).await?;
        let versions = versions_of(&app, &name).await?;
        if let Some(newest) = versions.last()
            && newest.config.revision == function.revision
        {
            return Ok((StatusCode::OK, Json(VersionView::from(newest))).into_response());
        }
        let version = function.last_version + 1;
        let mut config = function.clone();
        config.last_version = 0;
        let record = VersionRecord {
            function: name.clone(),
            version,
            description: req.description,
            created_at_ms: unix_ms(SystemTime::now()),
            config,
        };
        let spec = spec_of_version(&app, &record)?;
        function.last_version = version;
        let record = crate::blocking({
            let store = app.store.clone();
            move || store.put_version(&record, &function).map(|()| record)
        })
        .await?;
        app.pool.deploy(spec)?;
        tracing::info!(function = %name, version, revision = record.config.revision, "version published");
        Ok((StatusCode::CREATED, Json(VersionView::from(&record))).into_response())
    })
    .await
}

/// `GET /v1/functions/{name}/versions`, oldest first.
pub async fn list(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<VersionList>, ApiError> {
    function_record(&app, &name).await?;
    let versions = versions_of(&app, &name).await?;
    Ok(Json(VersionList {
        versions: versions.iter().map(VersionView::from).collect(),
    }))
}

fn version_number(name: &str, given: &str) -> Result<u64, ApiError> {
    match parse_qualifier(Some(given))? {
        Qualifier::Version(v) => Ok(v),
        _ => Err(ApiError::invalid(
            "version",
            format!("{given:?} is not a version number of function {name}"),
        )),
    }
}

async fn find_version(app: &Arc<App>, name: &str, version: u64) -> Result<VersionRecord, ApiError> {
    function_record(app, name).await?;
    versions_of(app, name)
        .await?
        .into_iter()
        .find(|v| v.version == version)
        .ok_or_else(|| version_not_found(name, version))
}

/// `GET /v1/functions/{name}/versions/{version}`
pub async fn get(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<VersionView>, ApiError> {
    let version = version_number(&name, &version)?;
    Ok(Json(VersionView::from(
        &find_version(&app, &name, version).await?,
    )))
}

/// `DELETE /v1/functions/{name}/versions/{version}`: stops the version's instances and forgets
/// it. Refused (409) while an alias sends traffic to it. Its number is never given again.
pub async fn delete(
    State(app): State<Arc<App>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let version = version_number(&name, &version)?;
    crate::detached(async move {
        let _serialised = app.lock_function(&name).await;
        find_version(&app, &name, version).await?;
        let using = app.aliases.using(&name, version);
        if !using.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "VersionInUse",
                format!(
                    "version {version} of function {name} is in use by alias {}: point the \
                     alias elsewhere (PUT /v1/functions/{name}/aliases/ALIAS) or delete it first",
                    using.join(", ")
                ),
            ));
        }
        crate::blocking({
            let (store, name) = (app.store.clone(), name.clone());
            move || store.delete_version(&name, version)
        })
        .await?;
        app.pool.remove_version(&name, version).await;
        tracing::info!(function = %name, version, "version deleted");
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// What the API shows of an alias.
#[derive(Debug, Serialize)]
pub struct AliasView {
    pub function: String,
    pub name: String,
    pub version: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub additional_version_weights: BTreeMap<u64, f64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&AliasRecord> for AliasView {
    fn from(a: &AliasRecord) -> Self {
        AliasView {
            function: a.function.clone(),
            name: a.name.clone(),
            version: a.version,
            additional_version_weights: a.additional_version_weights.clone(),
            description: a.description.clone(),
            created_at: rfc3339(a.created_at_ms),
            updated_at: rfc3339(a.updated_at_ms),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AliasList {
    pub aliases: Vec<AliasView>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasRequest {
    /// The version that gets the calls the additional one does not.
    pub version: u64,
    /// At most one other version, with the share of calls it gets (0 to 1).
    #[serde(default)]
    pub additional_version_weights: BTreeMap<u64, f64>,
    #[serde(default)]
    pub description: String,
}

/// The alias's rules, against the function's published `versions`.
fn validate_alias_request(
    name: &str,
    req: &AliasRequest,
    versions: &[VersionRecord],
) -> Result<(), ApiError> {
    check_description(&req.description)?;
    let exists = |v: u64| versions.iter().any(|r| r.version == v);
    let missing = |field: &str, v: u64| {
        ApiError::invalid(
            field,
            format!(
                "function {name} has no version {v} (publish one with POST \
                 /v1/functions/{name}/versions)"
            ),
        )
    };
    if !exists(req.version) {
        return Err(missing("version", req.version));
    }
    if req.additional_version_weights.len() > 1 {
        return Err(ApiError::invalid(
            "additional_version_weights",
            "an alias splits traffic between two versions at most: give one other version",
        ));
    }
    if let Some((&v, &w)) = req.additional_version_weights.iter().next() {
        if v == req.version {
            return Err(ApiError::invalid(
                "additional_version_weights",
                format!("version {v} is the alias's version already; name another version"),
            ));
        }
        if !exists(v) {
            return Err(missing("additional_version_weights", v));
        }
        if !(0.0..=1.0).contains(&w) {
            return Err(ApiError::invalid(
                "additional_version_weights",
                format!("the weight of version {v} is {w}; it must be between 0 and 1"),
            ));
        }
    }
    Ok(())
}

/// `PUT /v1/functions/{name}/aliases/{alias}`: creates (201) or repoints (200) the alias. New
/// calls follow it at once.
pub async fn put_alias(
    State(app): State<Arc<App>>,
    Path((name, alias)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    validate_alias(&alias)?;
    let req: AliasRequest = crate::functions::parse_json(body)?;
    crate::detached(async move {
        let _serialised = app.lock_function(&name).await;
        function_record(&app, &name).await?;
        let versions = versions_of(&app, &name).await?;
        validate_alias_request(&name, &req, &versions)?;
        let existing = {
            let (store, n, a) = (app.store.clone(), name.clone(), alias.clone());
            crate::blocking(move || store.get_alias(&n, &a)).await?
        };
        let now = unix_ms(SystemTime::now());
        let record = AliasRecord {
            function: name.clone(),
            name: alias.clone(),
            version: req.version,
            additional_version_weights: req.additional_version_weights,
            description: req.description,
            created_at_ms: existing.as_ref().map_or(now, |e| e.created_at_ms),
            updated_at_ms: now,
        };
        let record = crate::blocking({
            let store = app.store.clone();
            move || store.put_alias(&record).map(|()| record)
        })
        .await?;
        app.aliases.set(&record);
        tracing::info!(function = %name, alias = %alias, version = record.version, "alias set");
        let status = if existing.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok((status, Json(AliasView::from(&record))).into_response())
    })
    .await
}

/// `GET /v1/functions/{name}/aliases`, by name.
pub async fn list_aliases(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<AliasList>, ApiError> {
    function_record(&app, &name).await?;
    let (store, n) = (app.store.clone(), name.clone());
    let aliases = crate::blocking(move || store.list_aliases(&n)).await?;
    Ok(Json(AliasList {
        aliases: aliases.iter().map(AliasView::from).collect(),
    }))
}

/// `GET /v1/functions/{name}/aliases/{alias}`
pub async fn get_alias(
    State(app): State<Arc<App>>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Json<AliasView>, ApiError> {
    function_record(&app, &name).await?;
    let (store, n, a) = (app.store.clone(), name.clone(), alias.clone());
    match crate::blocking(move || store.get_alias(&n, &a)).await? {
        Some(a) => Ok(Json(AliasView::from(&a))),
        None => Err(alias_not_found(&name, &alias)),
    }
}

/// `DELETE /v1/functions/{name}/aliases/{alias}`
pub async fn delete_alias(
    State(app): State<Arc<App>>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    crate::detached(async move {
        let _serialised = app.lock_function(&name).await;
        function_record(&app, &name).await?;
        let existed = {
            let (store, n, a) = (app.store.clone(), name.clone(), alias.clone());
            crate::blocking(move || store.delete_alias(&n, &a)).await?
        };
        if !existed {
            return Err(alias_not_found(&name, &alias));
        }
        app.aliases.remove(&name, &alias);
        tracing::info!(function = %name, alias = %alias, "alias deleted");
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifiers_name_the_latest_a_version_or_an_alias() {
        assert_eq!(parse_qualifier(None).unwrap(), Qualifier::Latest);
        assert_eq!(parse_qualifier(Some("")).unwrap(), Qualifier::Latest);
        assert_eq!(parse_qualifier(Some("LATEST")).unwrap(), Qualifier::Latest);
        assert_eq!(parse_qualifier(Some("$LATEST")).unwrap(), Qualifier::Latest);
        assert_eq!(parse_qualifier(Some("12")).unwrap(), Qualifier::Version(12));
        assert_eq!(
            parse_qualifier(Some("prod")).unwrap(),
            Qualifier::Alias("prod")
        );
        for bad in ["0", "99999999999999999999999", "-1", "1a-", "a b", "_x"] {
            let e = parse_qualifier(Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(
            parse_qualifier(Some("0"))
                .unwrap_err()
                .message
                .contains("numbered from 1")
        );
    }

    #[test]
    fn a_qualifier_is_given_once() {
        assert_eq!(split_target("f", None).unwrap(), ("f", None));
        assert_eq!(split_target("f:1", None).unwrap(), ("f", Some("1")));
        assert_eq!(
            split_target("f", Some("prod")).unwrap(),
            ("f", Some("prod"))
        );
        assert_eq!(
            split_target("f:prod", Some("prod")).unwrap(),
            ("f", Some("prod"))
        );
        assert_eq!(split_target("f:", Some("")).unwrap(), ("f", None));
        let e = split_target("f:1", Some("2")).unwrap_err();
        assert!(
            e.message.contains("\"1\"") && e.message.contains("\"2\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn an_alias_splits_by_its_weight() {
        let route = Route {
            version: 1,
            other: Some((2, 0.25)),
        };
        let n = 20_000;
        let twos = (0..n).filter(|_| route.pick() == 2).count();
        let share = twos as f64 / n as f64;
        assert!((0.23..0.27).contains(&share), "share {share}");
        let only = Route {
            version: 3,
            other: Some((4, 0.0)),
        };
        assert!((0..1000).all(|_| only.pick() == 3));
        let all = Route {
            version: 3,
            other: Some((4, 1.0)),
        };
        assert!((0..1000).all(|_| all.pick() == 4));
    }

    #[test]
    fn aliases_know_which_versions_they_use() {
        let aliases = Aliases::default();
        let record = |name: &str, version, other: Option<(u64, f64)>| AliasRecord {
            function: "f".into(),
            name: name.into(),
            version,
            additional_version_weights: other.into_iter().collect(),
            description: String::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        aliases.set(&record("prod", 1, Some((2, 0.1))));
        aliases.set(&record("beta", 2, None));
        assert_eq!(aliases.using("f", 2), ["beta", "prod"]);
        assert_eq!(aliases.using("f", 1), ["prod"]);
        assert!(aliases.using("f", 3).is_empty());
        aliases.set(&record("prod", 3, None));
        assert_eq!(aliases.using("f", 1), Vec::<String>::new());
        aliases.remove("f", "beta");
        assert!(aliases.route("f", "beta").is_none());
        aliases.remove_function("f");
        assert!(aliases.route("f", "prod").is_none());
    }

    #[test]
    fn alias_requests_follow_the_rules() {
        let version = |v| VersionRecord {
            function: "f".into(),
            version: v,
            description: String::new(),
            created_at_ms: 0,
            config: serde_json::from_value(serde_json::json!({
                "name": "f", "image": "i", "image_pinned": "i@sha256:0", "image_digest": "sha256:0",
                "contract": "http", "port": 8080, "memory_mb": 128, "timeout_s": 3,
                "revision": v, "created_at_ms": 0, "updated_at_ms": 0
            }))
            .unwrap(),
        };
        let versions = [version(1), version(2)];
        let req = |v, w: &[(u64, f64)]| AliasRequest {
            version: v,
            additional_version_weights: w.iter().copied().collect(),
            description: String::new(),
        };
        assert!(validate_alias_request("f", &req(1, &[(2, 0.3)]), &versions).is_ok());
        assert!(validate_alias_request("f", &req(2, &[]), &versions).is_ok());
        for (bad, says) in [
            (req(3, &[]), "has no version 3"),
            (req(1, &[(3, 0.5)]), "has no version 3"),
            (req(1, &[(1, 0.5)]), "already"),
            (req(1, &[(2, 1.5)]), "between 0 and 1"),
            (req(1, &[(2, f64::NAN)]), "between 0 and 1"),
            (req(1, &[(2, 0.1), (3, 0.1)]), "two versions at most"),
        ] {
            let e = validate_alias_request("f", &bad, &versions).unwrap_err();
            assert!(e.message.contains(says), "{}", e.message);
        }
        assert!(validate_alias("prod-2").is_ok());
        assert!(validate_alias("LATEST").is_err());
        assert!(validate_alias("2prod").is_err());
    }
}
