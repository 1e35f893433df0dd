//! The function pool: per function, the instances and their states, which instance serves a
//! request, when a new one starts, and when idle ones go away.
//!
//! Why it looks like this:
//! - The hot path (a warm invocation) takes one short per-function `std` mutex to take a slot on
//!   a ready instance and one to give it back (or hand it to a waiting request); there is no
//!   global lock and nothing is spawned. The map of functions is read-locked only to find the
//!   function.
//! - A call with no free slot waits in its function's queue while instances start for the
//!   queue, and is served by whichever instance frees a slot first (`function.rs`).
//! - A cold start happens in a task of its own, outside every lock, so one function's slow start
//!   never delays another function's warm traffic.
//! - Instances belong to a *revision* of their function. A redeploy installs a new revision: new
//!   requests start new instances; instances of the old revision finish what they are doing and
//!   are stopped when they are released.
//! - Idle instances are reclaimed by one sweeper task for the whole pool — no timer per instance.
//! - The pool knows what a function is; below it, the contract knows the wire and the sandbox
//!   knows processes. The pool turns a function revision into an instance spec
//!   ([`instance_spec`]) and an event into an answer ([`Pool::invoke`]).

mod connection;
mod error;
mod freeze;
mod function;
mod instance;
pub mod instance_spec;
mod invoke;
mod job;
mod listing;
mod metrics;
mod reap;
mod report;
mod runtime_api;

pub use error::{DeployError, InvokeError};
pub use function::{FunctionLog, FunctionSpec, version_key};
pub use invoke::Invocation;
pub use listing::{InstanceInfo, InstanceState};
pub use report::{InvocationRecord, InvocationStatus, billed_ms, mb_ceil, report_line};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use wharf_image::ImageStore;
use wharf_sandbox::Sandbox;

use crate::function::FunctionPool;

/// Limits and timings of the pool. Defaults in [`PoolConfig::default`].
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// An instance with no request for this long is stopped (scale to zero).
    pub idle_timeout: Duration,
    /// Between SIGTERM and SIGKILL when an instance is stopped.
    pub stop_grace: Duration,
    /// How long a new instance may take to listen; `None`: the contract's deadline.
    pub start_deadline: Option<Duration>,
    /// Instances of one function at most (starting, busy and idle together).
    pub max_instances: usize,
    /// An idle instance of a function with `freeze_idle` is frozen after this long without a
    /// request (after its pre-freeze hook), and thawed by the next request.
    pub freeze_after: Duration,
    /// Process limit of each instance.
    pub pids_limit: i64,
    /// Reported to functions as their region and account (`x-fc-region`, `x-fc-account-id`).
    pub region: String,
    pub account_id: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            idle_timeout: Duration::from_secs(300),
            stop_grace: Duration::from_secs(5),
            start_deadline: None,
            max_instances: 100,
            freeze_after: Duration::from_secs(1),
            pids_limit: 1024,
            region: "local".into(),
            account_id: "wharf".into(),
        }
    }
}

/// All functions' instances on this node. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    sandbox: Sandbox,
    images: ImageStore,
    config: PoolConfig,
    functions: RwLock<HashMap<String, Arc<FunctionPool>>>,
    /// Every task the pool starts (invocations, stops, the sweeper): shutdown waits for them,
    /// so no instance is left half-stopped when the daemon exits.
    tasks: TaskTracker,
    /// Cancelled at shutdown: new invocations are refused, cold starts give up.
    shutdown: CancellationToken,
    /// Freezes idle instances (`freeze.rs`).
    freezer: freeze::Freezer,
}

impl Pool {
    /// A pool over `sandbox`, taking images from `images`. Starts the idle sweeper; must be called
    /// inside a tokio runtime.
    pub fn new(sandbox: Sandbox, images: ImageStore, config: PoolConfig) -> Pool {
        let (freezer, freeze_queue) = freeze::Freezer::new();
        let inner = Arc::new(PoolInner {
            sandbox,
            images,
            config,
            functions: RwLock::new(HashMap::new()),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            freezer,
        });
        reap::spawn_sweeper(&inner);
        inner
            .tasks
            .spawn(freeze::Freezer::run(Arc::downgrade(&inner), freeze_queue));
        Pool { inner }
    }

    /// Installs `spec` as the current revision of its function. New requests use it at once;
    /// idle instances of an older revision are stopped now, busy ones when they finish.
    pub fn deploy(&self, spec: FunctionSpec) -> Result<(), DeployError> {
        let name = spec.key();
        let mut functions = self
            .inner
            .functions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let metrics = functions
            .get(&name)
            .map(|fp| fp.revision().metrics.clone())
            .unwrap_or_default();
        let revision = function::Revision::new(spec, &self.inner.config, metrics)?;
        let fp = match functions.get(&name) {
            Some(fp) => {
                let follow_up = fp.install(revision);
                self.inner.follow_up(fp, follow_up);
                fp.clone()
            }
            None => {
                let fp = Arc::new(FunctionPool::new(revision));
                functions.insert(name, fp.clone());
                fp
            }
        };
        drop(functions);
        // The reserve (`min_instances`) starts now, not at the next sweep.
        reap::keep_reserve(&self.inner, &fp);
        Ok(())
    }

    /// Sets up, once, what instances in bridge mode need on the host (the bridge, its NAT, a few
    /// prepared network namespaces), so that a deploy fails when the host cannot have them,
    /// rather than every cold start.
    pub async fn prepare_network(&self) -> Result<(), DeployError> {
        self.inner
            .sandbox
            .prepare_network()
            .await
            .map_err(|source| DeployError::Network { source })
    }

    /// Removes the function and its published versions: new invocations of them are refused,
    /// their idle instances are stopped before this returns, busy ones as soon as their request
    /// ends. The stops run to the end even if this future is dropped. `false` if the pool did not
    /// know the function.
    pub async fn remove(&self, name: &str) -> bool {
        let versions = format!("{name}:");
        let removed: Vec<Arc<FunctionPool>> = {
            let mut functions = self
                .inner
                .functions
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let keys: Vec<String> = functions
                .keys()
                .filter(|k| *k == name || k.starts_with(&versions))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| functions.remove(k)).collect()
        };
        let known = removed
            .iter()
            .any(|fp| fp.revision().spec.version.is_none());
        self.retire(removed).await;
        known
    }

    /// Removes published version `version` of function `name`, as [`remove`](Self::remove)
    /// does a function.
    pub async fn remove_version(&self, name: &str, version: u64) {
        let fp = self
            .inner
            .functions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&version_key(name, version));
        self.retire(fp.into_iter().collect()).await;
    }

    async fn retire(&self, removed: Vec<Arc<FunctionPool>>) {
        if removed.is_empty() {
            return;
        }
        let idle: Vec<_> = removed.iter().flat_map(|fp| fp.retire()).collect();
        let inner = self.inner.clone();
        let _ = self
            .inner
            .tasks
            .spawn(async move { inner.stop_all(idle).await })
            .await;
    }

    /// Refuses new invocations, stops every instance (in-flight invocations fail, cold starts
    /// give up), waits for every task of the pool, and releases the sandbox's host resources.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let all: Vec<_> = {
            let functions = self
                .inner
                .functions
                .read()
                .unwrap_or_else(|e| e.into_inner());
            functions.values().flat_map(|fp| fp.retire_all()).collect()
        };
        self.inner.stop_all(all).await;
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.sandbox.shutdown().await;
    }
}

impl PoolInner {
    fn function(&self, name: &str) -> Option<Arc<FunctionPool>> {
        self.functions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Does what a change to `fp`'s instances left to do: stops, starts, a freeze to queue.
    fn follow_up(self: &Arc<Self>, fp: &Arc<FunctionPool>, f: function::FollowUp) {
        self.stop_in_background(f.stop);
        if let Some(idle) = &f.idle {
            self.freezer.queue(idle);
        }
        for _ in 0..f.starts {
            self.start_instance(fp, f.revision.clone(), true);
        }
    }

    /// Starts an instance of `revision` in the background (its slot is counted already) and
    /// gives it to `fp`, which hands its slots to waiting requests. `for_requests`: it starts
    /// because requests wait (its first is a cold start), not for the reserve.
    fn start_instance(
        self: &Arc<Self>,
        fp: &Arc<FunctionPool>,
        revision: Arc<function::Revision>,
        for_requests: bool,
    ) {
        let (pool, fp) = (self.clone(), fp.clone());
        self.tasks.spawn(async move {
            let name = revision.spec.name.clone();
            match instance::PoolInstance::start(&pool, revision).await {
                Ok((started, took)) => {
                    let f = fp.started(started, for_requests.then_some(took));
                    pool.follow_up(&fp, f);
                }
                Err(e) => {
                    if !for_requests {
                        tracing::warn!(function = %name, error = %e, "a reserved instance did not start");
                    }
                    fp.start_failed(e);
                }
            }
        });
    }

    fn stop_in_background(&self, instances: Vec<Arc<instance::PoolInstance>>) {
        if instances.is_empty() {
            return;
        }
        let grace = self.config.stop_grace;
        self.tasks.spawn(async move {
            for i in instances {
                i.stop(grace).await;
            }
        });
    }

    async fn stop_all(&self, instances: Vec<Arc<instance::PoolInstance>>) {
        let grace = self.config.stop_grace;
        let mut set = tokio::task::JoinSet::new();
        for i in instances {
            set.spawn(async move { i.stop(grace).await });
        }
        while set.join_next().await.is_some() {}
    }
}
