//! A function as the pool sees it: its current revision and its instances.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wharf_contract::{Contract, ContractKind, FunctionContext, FunctionMode, Hook, Prepared};
use wharf_image::RegistryAuth;
use wharf_sandbox::{BindMount, NetworkMode, OutputSink};

use tokio::sync::oneshot;

use crate::instance::PoolInstance;
use crate::{DeployError, InvokeError, PoolConfig};

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
    /// The published version this configuration is (`None`: the function's latest, `LATEST`).
    /// A version's instances are a pool of their own, beside the latest's.
    pub version: Option<u64>,
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
    /// Requests one instance serves at once (at least 1).
    pub concurrency: usize,
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

impl FunctionSpec {
    /// What the pool knows it by: `NAME`, or `NAME:VERSION` for a published version.
    pub fn key(&self) -> String {
        match self.version {
            Some(v) => version_key(&self.name, v),
            None => self.name.clone(),
        }
    }
}

/// The pool's key of version `version` of function `name` (what [`crate::Pool::invoke`] takes
/// to invoke it).
pub fn version_key(name: &str, version: u64) -> String {
    format!("{name}:{version}")
}

impl std::fmt::Debug for FunctionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionSpec")
            .field("name", &self.name)
            .field("revision", &self.revision)
            .field("version", &self.version)
            .field("contract", &self.contract)
            .field("image_pinned", &self.image_pinned)
            .finish_non_exhaustive()
    }
}

/// One revision of a function, with what is derived from it once.
pub(crate) struct Revision {
    pub spec: FunctionSpec,
    /// [`FunctionSpec::key`]: where the pool keeps it.
    pub key: String,
    pub contract: Arc<dyn Contract>,
    pub context: FunctionContext,
    /// The contract's requests for this revision, stamped per call.
    pub prepared: Prepared,
    /// The function's counters, shared by all its revisions.
    pub metrics: Arc<crate::metrics::FunctionMetrics>,
    /// Its `max_instances`, or the pool's.
    pub max_instances: usize,
}

impl Revision {
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
        let invalid = |reason: &str| DeployError::Invalid {
            name: spec.name.clone(),
            reason: reason.into(),
        };
        if spec.concurrency == 0 {
            return Err(invalid("concurrency must be at least 1"));
        }
        if spec.concurrency > 1 && (contract.pulls_work() || spec.mode == FunctionMode::Job) {
            return Err(invalid(
                "its instances take one request at a time (a runtime client, or a job): \
                 concurrency must be 1",
            ));
        }
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
        let version = spec
            .version
            .map_or_else(|| "LATEST".to_string(), |v| v.to_string());
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
            // The version's number; a call through an alias sets the contract's qualifier
            // header to the alias instead (`Contract::qualifier_header`).
            qualifier: version.clone(),
            version,
            region: config.region.clone(),
            account_id: config.account_id.clone(),
        };
        let prepared = contract.prepare(&context);
        let max_instances = spec.max_instances.unwrap_or(config.max_instances);
        Ok(Arc::new(Revision {
            max_instances,
            key: spec.key(),
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
    /// Every started instance the pool has not decided to stop, by id (also those of older
    /// revisions, or failed, that still finish requests: they count against `max_instances`).
    members: HashMap<String, Arc<PoolInstance>>,
    /// Ready instances of the current revision with a free slot, most recently used last.
    available: Vec<Arc<PoolInstance>>,
    /// Instances being started (for waiting requests, for the reserve, or a job's), counted
    /// against `max_instances`.
    starting: usize,
    /// Requests waiting for a slot, oldest first.
    waiters: VecDeque<oneshot::Sender<Handoff>>,
    /// Set when the function is removed (or the pool shuts down): released instances stop.
    retired: bool,
}

pub(crate) struct FunctionPool {
    revision: Mutex<Arc<Revision>>,
    state: Mutex<State>,
    /// Woken when a job's slot frees: a queued job tries again.
    freed: tokio::sync::Notify,
    /// Jobs waiting for a slot.
    jobs_queued: std::sync::atomic::AtomicUsize,
}

/// A job's place in its function's queue, given back when dropped.
pub(crate) struct Queued<'a>(&'a FunctionPool);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0
            .jobs_queued
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Why the pool gave a request no slot.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Every instance is busy, no more may start, and the queue is full (or the wait ended).
    Full { max: usize },
    /// The pool is shutting down.
    ShuttingDown,
    /// The function was removed.
    Retired,
}

/// A slot on an instance: the request holds it until it releases the instance.
pub(crate) enum Acquired {
    /// A slot on a ready instance.
    Warm(Arc<PoolInstance>),
    /// The first request of an instance started while it waited; the start took this long.
    Cold(Arc<PoolInstance>, Duration),
}

impl Acquired {
    pub fn instance(&self) -> &Arc<PoolInstance> {
        match self {
            Acquired::Warm(i) | Acquired::Cold(i, _) => i,
        }
    }
}

/// What a waiting request is handed: a slot, or the error of the start it waited for.
pub(crate) enum Handoff {
    Slot(Acquired),
    Failed(InvokeError),
}

/// What [`FunctionPool::acquire`] decided.
pub(crate) enum Taken {
    Now(Acquired),
    /// In the queue: the slot (or a failed start's error) comes on `rx`, from whichever instance
    /// frees a slot first or starts. `follow_up` has the instances to start for the queue.
    Queued {
        rx: oneshot::Receiver<Handoff>,
        follow_up: FollowUp,
    },
}

/// What the caller of a change to the function's instances must do next, outside the lock:
/// stop some, start some (their slots counted already), queue an idle one for freezing.
#[must_use]
pub(crate) struct FollowUp {
    pub stop: Vec<Arc<PoolInstance>>,
    /// Instances of `revision` to start for waiting requests.
    pub starts: usize,
    pub revision: Arc<Revision>,
    /// Released with no request left: to be frozen once idle long enough.
    pub idle: Option<Arc<PoolInstance>>,
}

impl FollowUp {
    fn new(revision: Arc<Revision>) -> FollowUp {
        FollowUp {
            stop: Vec::new(),
            starts: 0,
            revision,
            idle: None,
        }
    }
}

impl FunctionPool {
    pub fn new(revision: Arc<Revision>) -> Self {
        FunctionPool {
            revision: Mutex::new(revision),
            state: Mutex::new(State::default()),
            freed: tokio::sync::Notify::new(),
            jobs_queued: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place in the jobs' queue, if fewer than `max` requests wait.
    pub fn enqueue_job(&self, max: usize) -> Option<Queued<'_>> {
        use std::sync::atomic::Ordering;
        let waiting = self.lock().waiters.len();
        self.jobs_queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n + waiting < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Queued(self))
    }

    /// How many requests wait for a slot.
    pub fn queued(&self) -> usize {
        let waiting = self
            .lock()
            .waiters
            .iter()
            .filter(|w| !w.is_closed())
            .count();
        waiting + self.jobs_queued.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves when a job's slot may have freed since it was created and enabled.
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    pub fn revision(&self) -> Arc<Revision> {
        self.revision
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Installs a new revision; returns what to do: stop the idle instances of older revisions
    /// (busy ones stop when their last request ends), start instances for waiting requests.
    pub fn install(&self, revision: Arc<Revision>) -> FollowUp {
        *self.revision.lock().unwrap_or_else(|e| e.into_inner()) = revision.clone();
        let mut f = FollowUp::new(revision.clone());
        let mut st = self.lock();
        let (keep, stale): (Vec<_>, Vec<_>) = std::mem::take(&mut st.available)
            .into_iter()
            .partition(|i| Arc::ptr_eq(&i.revision, &revision));
        st.available = keep;
        for i in stale {
            if i.in_flight() == 0 {
                st.members.remove(i.id());
                f.stop.push(i);
            }
        }
        f.starts = st.wanted_starts(&revision);
        f
    }

    /// A slot on the most recently used ready instance that has one; else a place in the queue,
    /// with the starts the queue now wants (while there is room under `max_instances`). Idle
    /// instances that exited on their own or belong to an older revision are returned in `dead`
    /// for the caller to stop.
    pub fn acquire(
        &self,
        queue_limit: usize,
        dead: &mut Vec<Arc<PoolInstance>>,
    ) -> Result<Taken, Refused> {
        let revision = self.revision();
        let mut st = self.lock();
        if st.retired {
            return Err(Refused::Retired);
        }
        while let Some(i) = st.available.last().cloned() {
            if !Arc::ptr_eq(&i.revision, &revision) || i.exited() || !i.healthy() {
                st.available.pop();
                if i.in_flight() == 0 {
                    st.members.remove(i.id());
                    dead.push(i);
                }
                continue;
            }
            if i.add_in_flight() >= i.revision.spec.concurrency {
                st.available.pop();
            }
            return Ok(Taken::Now(Acquired::Warm(i)));
        }
        st.waiters.retain(|w| !w.is_closed());
        if st.waiters.len() >= queue_limit {
            return Err(Refused::Full {
                max: revision.max_instances,
            });
        }
        let (tx, rx) = oneshot::channel();
        st.waiters.push_back(tx);
        let mut follow_up = FollowUp::new(revision.clone());
        follow_up.starts = st.wanted_starts(&revision);
        Ok(Taken::Queued { rx, follow_up })
    }

    /// Records a newly started instance (`took`: how long, when it started for waiting
    /// requests) and hands its slots to the oldest waiting requests — the first of them is its
    /// cold start. An instance of an older revision (the function was updated while it started)
    /// or of a removed function is stopped instead.
    pub fn started(&self, instance: Arc<PoolInstance>, mut took: Option<Duration>) -> FollowUp {
        let revision = self.revision();
        let mut f = FollowUp::new(revision.clone());
        let mut st = self.lock();
        st.starting -= 1;
        if st.retired || !Arc::ptr_eq(&instance.revision, &revision) {
            f.stop.push(instance);
            f.starts = st.wanted_starts(&revision);
            return f;
        }
        st.members
            .insert(instance.id().to_string(), instance.clone());
        let concurrency = revision.spec.concurrency;
        while instance.in_flight() < concurrency {
            let Some(waiter) = st.waiters.pop_front() else {
                break;
            };
            instance.add_in_flight();
            let slot = match took.take() {
                Some(t) => Acquired::Cold(instance.clone(), t),
                None => Acquired::Warm(instance.clone()),
            };
            if let Err(Handoff::Slot(slot)) = waiter.send(Handoff::Slot(slot)) {
                // It stopped waiting: the next one gets the slot (and the cold start).
                instance.sub_in_flight();
                if let Acquired::Cold(_, t) = slot {
                    took = Some(t);
                }
            }
        }
        if instance.in_flight() < concurrency {
            st.available.push(instance.clone());
        }
        if instance.in_flight() == 0 {
            f.idle = Some(instance);
        }
        f
    }

    /// A start failed with `e`: the waiting requests it was to serve (those beyond what the
    /// other starts in progress will) get the error — the oldest the error itself, the others
    /// a copy.
    pub fn start_failed(&self, e: InvokeError) {
        let concurrency = self.revision().spec.concurrency;
        let copy = e.duplicate();
        let mut first = Some(e);
        let mut st = self.lock();
        st.starting -= 1;
        st.waiters.retain(|w| !w.is_closed());
        while st.waiters.len() > st.starting * concurrency {
            let Some(waiter) = st.waiters.pop_front() else {
                break;
            };
            let e = first.take().unwrap_or_else(|| copy.duplicate());
            if let Err(Handoff::Failed(e)) = waiter.send(Handoff::Failed(e)) {
                first = Some(e);
            }
        }
        drop(st);
        self.freed.notify_one();
    }

    /// For a job: a slot for an instance of its own, if the function has room for one.
    pub fn start_job(&self) -> Result<(), Refused> {
        let max_instances = self.revision().max_instances;
        let mut st = self.lock();
        if st.retired {
            return Err(Refused::Retired);
        }
        if st.members.len() + st.starting >= max_instances {
            return Err(Refused::Full { max: max_instances });
        }
        st.starting += 1;
        Ok(())
    }

    /// Gives back a job's slot.
    pub fn job_done(&self) {
        self.lock().starting -= 1;
        self.freed.notify_one();
    }

    /// Instances being started.
    pub fn starting(&self) -> usize {
        self.lock().starting
    }

    /// Every instance the pool has not decided to stop.
    pub fn instances(&self) -> Vec<Arc<PoolInstance>> {
        self.lock().members.values().cloned().collect()
    }

    /// Gives back a request's slot on `instance`. A `broken` instance serves no more; one with
    /// `keep_idle` false is stopped once no request is left on it (an idle timeout of zero).
    /// Otherwise the slot goes to the oldest waiting request, or back to the free ones.
    pub fn release(&self, instance: Arc<PoolInstance>, broken: bool, keep_idle: bool) -> FollowUp {
        if broken {
            instance.mark_unhealthy();
        }
        let current = self.revision();
        let mut f = FollowUp::new(current.clone());
        let mut st = self.lock();
        let left = instance.sub_in_flight();
        let usable = instance.healthy()
            && !st.retired
            && Arc::ptr_eq(&instance.revision, &current)
            && !instance.exited();
        if usable {
            instance.touch();
            while let Some(waiter) = st.waiters.pop_front() {
                instance.add_in_flight();
                if waiter
                    .send(Handoff::Slot(Acquired::Warm(instance.clone())))
                    .is_ok()
                {
                    return f;
                }
                instance.sub_in_flight();
            }
        }
        if let Some(at) = st.available.iter().position(|i| Arc::ptr_eq(i, &instance)) {
            st.available.remove(at);
        }
        if usable && (keep_idle || left > 0) {
            // Most recently used last.
            st.available.push(instance.clone());
            if left == 0 {
                f.idle = Some(instance);
            }
            return f;
        }
        if left == 0 {
            st.members.remove(instance.id());
            f.stop.push(instance);
            f.starts = st.wanted_starts(&current);
            drop(st);
            self.freed.notify_one();
        }
        f
    }

    /// Takes `instance` out of service (a hook asked for its restart). `false` if a request
    /// holds it: then its release stops it.
    pub fn remove_idle(&self, instance: &Arc<PoolInstance>) -> bool {
        let mut st = self.lock();
        if let Some(at) = st.available.iter().position(|i| Arc::ptr_eq(i, instance)) {
            st.available.remove(at);
        }
        if instance.in_flight() > 0 {
            return false;
        }
        st.members.remove(instance.id());
        true
    }

    /// Marks the function removed; returns its idle instances (busy ones stop when released).
    /// Waiting requests are told the function is gone.
    pub fn retire(&self) -> Vec<Arc<PoolInstance>> {
        let name = self.revision().key.clone();
        let mut st = self.lock();
        st.retired = true;
        for waiter in st.waiters.drain(..) {
            let _ = waiter.send(Handoff::Failed(InvokeError::FunctionNotFound {
                name: name.clone(),
            }));
        }
        let available = std::mem::take(&mut st.available);
        let idle: Vec<_> = available
            .into_iter()
            .filter(|i| i.in_flight() == 0)
            .collect();
        st.evict(&idle);
        idle
    }

    /// For shutdown: marks the function removed and returns every instance, busy ones included
    /// (their requests fail; stopping is idempotent, so the release stopping them again is fine).
    pub fn retire_all(&self) -> Vec<Arc<PoolInstance>> {
        let mut st = self.lock();
        st.retired = true;
        for waiter in st.waiters.drain(..) {
            let _ = waiter.send(Handoff::Failed(InvokeError::ShuttingDown));
        }
        st.available.clear();
        st.members.drain().map(|(_, i)| i).collect()
    }

    /// Idle instances that have been idle longer than their revision's idle timeout (`config`'s
    /// when it sets none) or have exited — but for the current revision's `min_instances`,
    /// which are kept however long they idle.
    pub fn take_expired(&self, config: &PoolConfig) -> Vec<Arc<PoolInstance>> {
        let reserved = self.revision().spec.min_instances;
        let mut st = self.lock();
        let (mut expired, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.available)
            .into_iter()
            .partition(|i| {
                i.in_flight() == 0
                    && (i.exited() || i.idle_for() >= i.revision.idle_timeout(config))
            });
        st.available = keep;
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
            st.available.insert(0, i);
        }
        st.evict(&expired);
        expired
    }

    /// The starts that waiting requests want now (a safety net for the sweeper: every change
    /// that frees room already asks).
    pub fn starts_wanted(&self) -> FollowUp {
        let revision = self.revision();
        let mut f = FollowUp::new(revision.clone());
        let mut st = self.lock();
        if !st.retired {
            f.starts = st.wanted_starts(&revision);
        }
        f
    }

    /// How many more instances the current revision's `min_instances` wants started now, with
    /// their slots counted (each to be [`started`](Self::started) or
    /// [`start_failed`](Self::start_failed)).
    pub fn reserve_missing(&self) -> (Arc<Revision>, usize) {
        let revision = self.revision();
        let mut st = self.lock();
        if st.retired {
            return (revision, 0);
        }
        let have = st.members.len() + st.starting;
        let room = revision.max_instances.saturating_sub(have);
        let n = revision.spec.min_instances.saturating_sub(have).min(room);
        st.starting += n;
        (revision, n)
    }
}

impl State {
    fn evict(&mut self, gone: &[Arc<PoolInstance>]) {
        for i in gone {
            self.members.remove(i.id());
        }
    }

    /// Counts (and returns how many) new instances to start: while the waiting requests are
    /// more than the instances already starting will take, and there is room.
    fn wanted_starts(&mut self, revision: &Revision) -> usize {
        let (max_instances, concurrency) = (revision.max_instances, revision.spec.concurrency);
        self.waiters.retain(|w| !w.is_closed());
        let mut n = 0;
        while self.waiters.len() > self.starting * concurrency
            && self.members.len() + self.starting < max_instances
        {
            self.starting += 1;
            n += 1;
        }
        n
    }
}
