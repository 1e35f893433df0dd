//! A function as the pool sees it: its current revision and its instances.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wharf_contract::{Contract, ContractKind, FunctionContext, FunctionMode, Hook, Prepared};
use wharf_image::RegistryAuth;
use wharf_sandbox::{BindMount, NetworkMode, OutputSink};

use crate::instance::PoolInstance;
use crate::{DeployError, PoolConfig};

/// Where a function's instances' output and the pool's notes about them go (the function's log).
pub trait FunctionLog: OutputSink {
    /// A line Wharf writes about an instance: started, exited, stopped.
    fn system(&self, instance_id: &str, message: &str);
    /// The record of one invocation, when it has ended (also when it failed).
    fn invocation(&self, record: &crate::InvocationRecord);
}

/// Everything the pool needs to run a function. Built by the API from the stored function.
#[derive(Clone)]
pub struct FunctionSpec {
    pub name: String,
    /// Increases with every update of the function.
    pub revision: u64,
    pub contract: ContractKind,
    /// Called with events, or an HTTP function that gets requests passed through.
    pub mode: FunctionMode,
    /// `None`: the contract's default port.
    pub port: Option<u16>,
    pub memory_mb: u32,
    pub timeout: Duration,
    pub env: BTreeMap<String, String>,
    /// Replaces the image's ENTRYPOINT (and, unless `args` is set too, its CMD).
    pub command: Option<Vec<String>>,
    /// Replaces the image's CMD.
    pub args: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub initializer_timeout: Option<Duration>,
    /// The pre-freeze hook's timeout, when the function has the hook.
    pub pre_freeze_timeout: Option<Duration>,
    /// The pre-stop hook's timeout, when the function has the hook.
    pub pre_stop_timeout: Option<Duration>,
    /// The writable layer (the image's changed files and `/tmp`), in MiB. It is memory (tmpfs):
    /// what is written there counts against `memory_mb`.
    pub disk_mb: u32,
    /// The image's files read-only; `/tmp` and read-write mounts stay writable.
    pub read_only_rootfs: bool,
    /// Host paths mounted into every instance.
    pub mounts: Vec<BindMount>,
    pub network: NetworkMode,
    /// Freeze instances that have no request (after the pre-freeze hook); thaw on the next.
    pub freeze_idle: bool,
    /// At most this many instances at once; `None`: the pool's `max_instances`.
    pub max_instances: Option<usize>,
    /// Instances kept started and warm whether or not requests come (reserved), re-created
    /// when they die; never stopped for being idle.
    pub min_instances: usize,
    /// How long an idle instance is kept before it is stopped (zero: stopped right after its
    /// call); `None`: the pool's `idle_timeout`.
    pub idle_timeout: Option<Duration>,
    /// The image reference pinned by digest.
    pub image_pinned: String,
    pub registry_auth: RegistryAuth,
    pub log: Arc<dyn FunctionLog>,
}

impl std::fmt::Debug for FunctionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionSpec")
            .field("name", &self.name)
            .field("revision", &self.revision)
            .field("contract", &self.contract)
            .field("image_pinned", &self.image_pinned)
            .finish_non_exhaustive()
    }
}

/// One revision of a function, with what is derived from it once.
pub(crate) struct Revision {
    pub spec: FunctionSpec,
    pub contract: Arc<dyn Contract>,
    pub context: FunctionContext,
    /// The contract's requests for this revision, stamped per call.
    pub prepared: Prepared,
    /// The function's counters, shared by all its revisions.
    pub metrics: Arc<crate::metrics::FunctionMetrics>,
}

impl Revision {
    pub fn max_instances(&self, config: &PoolConfig) -> usize {
        self.spec.max_instances.unwrap_or(config.max_instances)
    }

    pub fn idle_timeout(&self, config: &PoolConfig) -> Duration {
        self.spec.idle_timeout.unwrap_or(config.idle_timeout)
    }

    pub fn new(
        spec: FunctionSpec,
        config: &PoolConfig,
        metrics: Arc<crate::metrics::FunctionMetrics>,
    ) -> Result<Arc<Revision>, DeployError> {
        if spec.memory_mb == 0 || spec.timeout.is_zero() || spec.disk_mb == 0 {
            return Err(DeployError::Invalid {
                name: spec.name.clone(),
                reason: "memory, disk and timeout must be greater than zero".into(),
            });
        }
        let contract = wharf_contract::adapter(spec.contract);
        for (hook, configured) in [
            (Hook::Initialize, spec.initializer_timeout.is_some()),
            (Hook::PreFreeze, spec.pre_freeze_timeout.is_some()),
            (Hook::PreStop, spec.pre_stop_timeout.is_some()),
        ] {
            if configured && !contract.supports_hook(hook) {
                return Err(DeployError::Invalid {
                    name: spec.name.clone(),
                    reason: format!("contract {} has no {} hook", spec.contract, hook.field()),
                });
            }
        }
        let context = FunctionContext {
            name: spec.name.clone(),
            revision: spec.revision,
            mode: spec.mode,
            memory_mb: spec.memory_mb,
            timeout: spec.timeout,
            initializer_timeout: spec.initializer_timeout,
            pre_freeze_timeout: spec.pre_freeze_timeout,
            pre_stop_timeout: spec.pre_stop_timeout,
            port: spec.port.unwrap_or_else(|| contract.default_port()),
            qualifier: "LATEST".into(),
            version: "LATEST".into(),
            region: config.region.clone(),
            account_id: config.account_id.clone(),
        };
        let prepared = contract.prepare(&context);
        Ok(Arc::new(Revision {
            spec,
            contract,
            context,
            prepared,
            metrics,
        }))
    }
}

#[derive(Default)]
struct State {
    /// Every started instance the pool has not decided to stop, by id.
    members: HashMap<String, Arc<PoolInstance>>,
    /// Ready instances with no request, most recently used last.
    idle: Vec<Arc<PoolInstance>>,
    /// Instances serving a request, or starting for one.
    busy: usize,
    /// Set when the function is removed (or the pool shuts down): released instances stop.
    retired: bool,
}

pub(crate) struct FunctionPool {
    revision: Mutex<Arc<Revision>>,
    state: Mutex<State>,
    /// Woken when a slot frees (a release, a failed start): a queued request tries again.
    freed: tokio::sync::Notify,
    /// Requests waiting for a slot.
    queued: std::sync::atomic::AtomicUsize,
}

/// A request's place in its function's queue, given back when dropped.
pub(crate) struct Queued<'a>(&'a FunctionPool);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0
            .queued
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Why [`FunctionPool::acquire`] gave nothing.
pub(crate) enum Refused {
    /// Every instance is busy and no more may start.
    Full { max: usize },
    /// The pool is shutting down.
    ShuttingDown,
    /// The function was removed.
    Retired,
}

/// What [`FunctionPool::acquire`] decided.
pub(crate) enum Acquired {
    /// A warm instance, now counted busy.
    Warm(Arc<PoolInstance>),
    /// No idle instance: a slot is reserved (counted busy) for a new instance of this revision.
    Start(Arc<Revision>),
}

impl FunctionPool {
    pub fn new(revision: Arc<Revision>) -> Self {
        FunctionPool {
            revision: Mutex::new(revision),
            state: Mutex::new(State::default()),
            freed: tokio::sync::Notify::new(),
            queued: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A place in the queue, if fewer than `max` requests wait.
    pub fn enqueue(&self, max: usize) -> Option<Queued<'_>> {
        use std::sync::atomic::Ordering;
        self.queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Queued(self))
    }

    /// How many requests wait for a slot.
    pub fn queued(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves when a slot may have freed since it was created and enabled.
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    pub fn revision(&self) -> Arc<Revision> {
        self.revision
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Installs a new revision; returns the idle instances of older revisions, to be stopped.
    pub fn install(&self, revision: Arc<Revision>) -> Vec<Arc<PoolInstance>> {
        *self.revision.lock().unwrap_or_else(|e| e.into_inner()) = revision.clone();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (keep, stale) = std::mem::take(&mut st.idle)
            .into_iter()
            .partition(|i| Arc::ptr_eq(&i.revision, &revision));
        st.idle = keep;
        st.evict(&stale);
        stale
    }

    /// Takes a warm instance of the current revision, or reserves a slot for a new one. Idle
    /// instances that exited on their own or belong to an older revision are returned in `dead`
    /// for the caller to stop.
    pub fn acquire(
        &self,
        max_instances: usize,
        dead: &mut Vec<Arc<PoolInstance>>,
    ) -> Result<Acquired, Refused> {
        let revision = self.revision();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.retired {
            return Err(Refused::Retired);
        }
        while let Some(i) = st.idle.pop() {
            if !Arc::ptr_eq(&i.revision, &revision) || i.exited() {
                st.members.remove(i.id());
                dead.push(i);
                continue;
            }
            st.busy += 1;
            i.set_in_use(true);
            return Ok(Acquired::Warm(i));
        }
        if st.busy >= max_instances {
            return Err(Refused::Full { max: max_instances });
        }
        st.busy += 1;
        Ok(Acquired::Start(revision))
    }

    /// Gives back a slot whose instance failed to start.
    pub fn cancel_start(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.busy -= 1;
        drop(st);
        self.freed.notify_one();
    }

    /// Every instance the pool has not decided to stop, oldest first.
    pub fn instances(&self) -> Vec<Arc<PoolInstance>> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.members.values().cloned().collect()
    }

    /// Records a newly started instance (it stays counted busy until released). If the function
    /// was retired meanwhile, the instance serves its request and its release stops it.
    pub fn register(&self, instance: &Arc<PoolInstance>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.retired {
            st.members
                .insert(instance.id().to_string(), instance.clone());
        }
    }

    /// Returns an instance after a request. `Some(instance)` if it must be stopped instead of
    /// kept (older revision, function removed, or `healthy` is false).
    pub fn release(&self, instance: Arc<PoolInstance>, healthy: bool) -> Option<Arc<PoolInstance>> {
        let gone = self.put_back(instance, healthy);
        self.freed.notify_one();
        gone
    }

    fn put_back(&self, instance: Arc<PoolInstance>, healthy: bool) -> Option<Arc<PoolInstance>> {
        let current = self.revision();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.busy -= 1;
        if !healthy
            || !instance.healthy()
            || st.retired
            || !Arc::ptr_eq(&instance.revision, &current)
            || instance.exited()
        {
            st.members.remove(instance.id());
            if !healthy {
                instance.mark_unhealthy();
            }
            return Some(instance);
        }
        instance.touch();
        instance.set_in_use(false);
        st.idle.push(instance);
        None
    }

    /// Takes `instance` out of the idle list (a hook asked for its restart). `false` if a request
    /// took it meanwhile: then its release decides.
    pub fn remove_idle(&self, instance: &Arc<PoolInstance>) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(at) = st.idle.iter().position(|i| Arc::ptr_eq(i, instance)) else {
            return false;
        };
        st.idle.remove(at);
        st.members.remove(instance.id());
        true
    }

    /// Marks the function removed; returns its idle instances. Busy ones stop when released.
    pub fn retire(&self) -> Vec<Arc<PoolInstance>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.retired = true;
        let idle = std::mem::take(&mut st.idle);
        st.evict(&idle);
        idle
    }

    /// For shutdown: marks the function removed and returns every instance, busy ones included
    /// (their requests fail; stopping is idempotent, so the release stopping them again is fine).
    pub fn retire_all(&self) -> Vec<Arc<PoolInstance>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.retired = true;
        st.idle.clear();
        st.members.drain().map(|(_, i)| i).collect()
    }

    /// Idle instances that have been idle longer than their revision's idle timeout (`config`'s
    /// when it sets none) or have exited — but for the current revision's `min_instances`,
    /// which are kept however long they idle.
    pub fn take_expired(&self, config: &PoolConfig) -> Vec<Arc<PoolInstance>> {
        let reserved = self.revision().spec.min_instances;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (mut expired, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.idle)
            .into_iter()
            .partition(|i| i.exited() || i.idle_for() >= i.revision.idle_timeout(config));
        st.idle = keep;
        // The reserve stays: as many of the expired live ones as it lacks, the most recently
        // used of them (both lists are most recently used last).
        let mut lacking = reserved.saturating_sub(st.members.len().saturating_sub(expired.len()));
        let mut at = expired.len();
        let mut spared = Vec::new();
        while lacking > 0 && at > 0 {
            at -= 1;
            if !expired[at].exited() {
                spared.push(expired.remove(at));
                lacking -= 1;
            }
        }
        for i in spared {
            st.idle.insert(0, i);
        }
        st.evict(&expired);
        expired
    }

    /// How many more instances the current revision's `min_instances` wants started now, with
    /// their slots reserved (each to be [`register`](Self::register)ed and released, or
    /// [`cancel_start`](Self::cancel_start)ed).
    pub fn reserve_missing(&self, max_instances: usize) -> (Arc<Revision>, usize) {
        let revision = self.revision();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.retired {
            return (revision, 0);
        }
        // Members, plus starts in progress (counted busy, not members yet).
        let in_use = st.members.values().filter(|i| i.in_use()).count();
        let starting = st.busy.saturating_sub(in_use);
        let have = st.members.len() + starting;
        let room = max_instances.saturating_sub(st.busy + st.idle.len());
        let n = revision.spec.min_instances.saturating_sub(have).min(room);
        st.busy += n;
        (revision, n)
    }
}

impl State {
    fn evict(&mut self, gone: &[Arc<PoolInstance>]) {
        for i in gone {
            self.members.remove(i.id());
        }
    }
}
