//! Wharf's HTTP API: the control plane (`/v1/functions`, `/v1/images`), the invoke endpoint,
//! and the logs.
//!
//! Handlers are thin: they validate, call the store, the image store and the pool, and map
//! errors to HTTP in exactly one place ([`error`]). Every route but the health check requires the
//! API token ([`auth`]). The Lambda-compatible Invoke API ([`aws`]) shares the listener, with its
//! own Lambda-style errors and authentication (the token as bearer or as SigV4 credentials). Body limits are set per route on purpose: 1 MiB for control requests,
//! the contract's synchronous payload limit for events.

pub mod auth;
pub mod aws;
pub mod error;
pub mod functions;
pub mod images;
pub mod instances;
pub mod invoke;
pub mod logs;
pub mod server;
pub mod trigger;
pub mod versions;

pub use error::ApiError;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{any, get, post};
use http::StatusCode;
use wharf_image::ImageStore;
use wharf_pool::Pool;
use wharf_store::{FunctionStore, LogStore};

/// Runs `f` (a store call: a short transaction, maybe an fsync) off the async workers.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Send + 'static,
    ApiError: From<E>,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

/// Runs `work` in its own task and waits for it: if the caller is dropped (the client went
/// away), the work still runs to the end instead of stopping half-way.
pub(crate) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work).await.map_err(ApiError::internal)?
}

/// Largest control-plane request body.
pub const MAX_CONTROL_BODY_BYTES: usize = 1024 * 1024;

/// Everything the handlers share.
pub struct App {
    pub store: Arc<dyn FunctionStore>,
    pub logs: Arc<LogStore>,
    pub images: ImageStore,
    pub pool: Pool,
    pub token: String,
    /// `Event` invocations of the Lambda Invoke API, waiting to run.
    pub(crate) events: aws::EventQueue,
    /// Every function's aliases, for invocations by alias (`versions.rs`).
    pub(crate) aliases: versions::Aliases,
    /// One control-plane change at a time per function name (deploy, delete).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl App {
    pub fn new(
        store: Arc<dyn FunctionStore>,
        logs: Arc<LogStore>,
        images: ImageStore,
        pool: Pool,
        token: String,
    ) -> Arc<App> {
        Arc::new(App {
            store,
            logs,
            images,
            pool,
            token,
            events: aws::EventQueue::default(),
            aliases: versions::Aliases::default(),
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// Serialises control-plane changes to function `name`.
    pub(crate) async fn lock_function(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Hands every stored function, with its published versions, to the pool and loads its
    /// aliases, as after a restart. Returns how many functions.
    pub fn restore(&self) -> Result<usize, ApiError> {
        let records = self.store.list_functions()?;
        for r in &records {
            self.pool.deploy(functions::spec_of(self, r)?)?;
            for v in self.store.list_versions(&r.name)? {
                self.pool.deploy(versions::spec_of_version(self, &v)?)?;
            }
            for a in self.store.list_aliases(&r.name)? {
                self.aliases.set(&a);
            }
        }
        Ok(records.len())
    }

    pub fn router(self: &Arc<Self>) -> Router {
        let trigger =
            || any(trigger::trigger).layer(DefaultBodyLimit::max(invoke::MAX_EVENT_BYTES));
        Router::new()
            .route("/v1/functions", get(functions::list))
            .route(
                "/v1/functions/{name}",
                get(functions::get)
                    .put(functions::put)
                    .delete(functions::delete),
            )
            .route(
                "/v1/functions/{name}/invoke",
                post(invoke::invoke).layer(DefaultBodyLimit::max(invoke::MAX_EVENT_BYTES)),
            )
            // The trigger's root, with and without its slash, and every path below it.
            .route("/v1/functions/{name}/http", trigger())
            .route("/v1/functions/{name}/http/", trigger())
            .route("/v1/functions/{name}/http/{*path}", trigger())
            .route(
                "/v1/functions/{name}/versions",
                get(versions::list).post(versions::publish),
            )
            .route(
                "/v1/functions/{name}/versions/{version}",
                get(versions::get).delete(versions::delete),
            )
            .route("/v1/functions/{name}/aliases", get(versions::list_aliases))
            .route(
                "/v1/functions/{name}/aliases/{alias}",
                get(versions::get_alias)
                    .put(versions::put_alias)
                    .delete(versions::delete_alias),
            )
            .route("/v1/functions/{name}/logs", get(logs::get))
            .route("/v1/functions/{name}/invocations", get(logs::invocations))
            .route("/v1/functions/{name}/instances", get(instances::list))
            .route("/v1/images", get(images::list))
            .route("/metrics", get(instances::metrics))
            .route("/v1/images/prune", post(images::prune))
            .route_layer(from_fn_with_state(self.clone(), auth::require_token))
            // The Lambda Invoke API, with its own authentication (bearer or SigV4).
            .merge(aws::routes(self))
            .route("/v1/health", get(|| async { "ok\n" }))
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "this endpoint does not take that method (see README: The API)",
                )
            })
            .fallback(|| async {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "no such API endpoint; the API lives under /v1/functions",
                )
            })
            .layer(DefaultBodyLimit::max(MAX_CONTROL_BODY_BYTES))
            .with_state(self.clone())
    }
}
