//! Freezing idle instances and thawing them for the next request.
//!
//! An instance with no request in flight for `freeze_after` (and a function with `freeze_idle`)
//! gets the contract's pre-freeze hook, when configured, and is then frozen through the cgroup
//! freezer: its processes stop using CPU until a request needs it. The next request that takes
//! it from the idle list thaws it first — a write to the freezer file, on the request path.
//!
//! Why it looks like this:
//! - **No timer per instance.** One task for the whole pool keeps a heap of deadlines, fed when
//!   an instance is released; it wakes only when a deadline falls due. An instance is queued at
//!   most once (`queued`): a busy or recently used one is put back with a later deadline.
//! - **A request never races a freeze.** A request marks the instance in use (under the
//!   function's mutex) *before* it looks at the freeze state; a freeze sets the state to
//!   `FREEZING` *before* it looks at `in_use` (both `SeqCst`). Either the freeze sees the request
//!   and gives up, or the request sees the freeze and waits on the instance's lifecycle lock
//!   until it is over, then thaws. The lock is never held while a request runs.
//! - A pre-freeze hook answering 500 asks for a restart (FC's rule): the instance leaves the idle
//!   list and is stopped.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};
use wharf_contract::HookOutcome;
use wharf_sandbox::FreezeError;

use crate::PoolInner;
use crate::instance::PoolInstance;

const THAWED: u8 = 0;
const FREEZING: u8 = 1;
const FROZEN: u8 = 2;

/// The largest answer read from a pre-freeze hook.
const MAX_HOOK_ANSWER: usize = 64 * 1024;

/// An instance's freezer state, as the pool sees it.
#[derive(Default)]
pub(crate) struct FreezeState {
    /// Held by a freeze in progress, by a thaw, and by a stop's pre-stop hook.
    lock: tokio::sync::Mutex<()>,
    state: AtomicU8,
    /// In the freezer's heap.
    queued: AtomicBool,
}

/// How a freeze attempt ended.
enum Freeze {
    Frozen(Duration),
    /// A request took the instance meanwhile (or it is stopping): try again later, or not.
    Busy,
    Gone,
    /// The pre-freeze hook asked for a restart.
    Restart,
    Failed,
}

impl PoolInstance {
    /// On the request path, once the instance is marked in use: thaws it when frozen (waiting
    /// for a freeze in progress to end first). Returns how long the thaw took, if there was one.
    pub async fn ready_for_use(&self) -> Result<Option<Duration>, FreezeError> {
        let fs = self.freeze_state();
        if fs.state.load(Ordering::SeqCst) == THAWED {
            return Ok(None);
        }
        let _held = fs.lock.lock().await;
        self.thaw_locked()
    }

    /// For the pre-stop hook: a frozen instance cannot answer it.
    pub(crate) async fn thaw_for_hook(&self) -> Result<(), FreezeError> {
        let _held = self.freeze_state().lock.lock().await;
        self.thaw_locked().map(|_| ())
    }

    fn thaw_locked(&self) -> Result<Option<Duration>, FreezeError> {
        let fs = self.freeze_state();
        if fs.state.load(Ordering::SeqCst) != FROZEN {
            return Ok(None);
        }
        let took = self.sandbox().thaw()?;
        fs.state.store(THAWED, Ordering::SeqCst);
        Ok(Some(took))
    }

    /// Runs the pre-freeze hook and freezes the instance, unless a request takes it first.
    async fn freeze_if_idle(&self) -> Freeze {
        let fs = self.freeze_state();
        let _held = fs.lock.lock().await;
        if self.stopping() || self.exited() {
            return Freeze::Gone;
        }
        if fs.state.load(Ordering::SeqCst) == FROZEN {
            return Freeze::Frozen(Duration::ZERO);
        }
        fs.state.store(FREEZING, Ordering::SeqCst);
        if self.in_use() {
            fs.state.store(THAWED, Ordering::SeqCst);
            return Freeze::Busy;
        }
        if let Some(restart) = self.pre_freeze().await {
            fs.state.store(THAWED, Ordering::SeqCst);
            return restart;
        }
        if self.in_use() || self.stopping() {
            fs.state.store(THAWED, Ordering::SeqCst);
            return Freeze::Busy;
        }
        match self.sandbox().freeze().await {
            Ok(took) => {
                fs.state.store(FROZEN, Ordering::SeqCst);
                Freeze::Frozen(took)
            }
            Err(e) => {
                fs.state.store(THAWED, Ordering::SeqCst);
                warn!(instance = %self.id(), error = %e, "freeze failed; the instance stays thawed");
                Freeze::Failed
            }
        }
    }

    /// The pre-freeze hook, if the function has one. `Some(Freeze::Restart)` when the instance
    /// asked to be restarted; a failure or timeout is logged and the freeze goes on (FC bills
    /// no time for the hook, and an instance that cannot answer it is still idle).
    async fn pre_freeze(&self) -> Option<Freeze> {
        let revision = &self.revision;
        let template = revision.prepared.pre_freeze.as_ref()?;
        let timeout = revision.context.pre_freeze_timeout?;
        let req = template.request(self.id(), Bytes::new());
        let why = match tokio::time::timeout(timeout, self.exchange(req, MAX_HOOK_ANSWER)).await {
            Ok(Ok((parts, _))) => match revision.contract.classify_hook(parts.status) {
                HookOutcome::Success => return None,
                HookOutcome::Restart => {
                    revision.spec.log.system(
                        self.id(),
                        &format!(
                            "the pre-freeze hook answered {}: the instance is restarted",
                            parts.status
                        ),
                    );
                    return Some(Freeze::Restart);
                }
                HookOutcome::Failed { status } => format!("answered {status}"),
            },
            Ok(Err(e)) => format!("failed: {e}"),
            Err(_) => format!("did not answer within {timeout:?}"),
        };
        revision.spec.log.system(
            self.id(),
            &format!("the pre-freeze hook {why}; freezing the instance anyway"),
        );
        None
    }
}

/// The pool's freezer: one task, a heap of deadlines.
pub(crate) struct Freezer {
    tx: mpsc::UnboundedSender<Weak<PoolInstance>>,
}

impl Freezer {
    /// The freezer's queue; [`Freezer::run`] must be spawned with the receiver.
    pub fn new() -> (Freezer, mpsc::UnboundedReceiver<Weak<PoolInstance>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Freezer { tx }, rx)
    }

    /// After a release to the idle list: freeze it once it has been idle for `freeze_after`.
    pub fn queue(&self, instance: &Arc<PoolInstance>) {
        if !instance.revision.spec.freeze_idle {
            return;
        }
        if !instance.freeze_state().queued.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Arc::downgrade(instance));
        }
    }

    /// The freezer task; ends at shutdown or when the pool is gone.
    pub async fn run(pool: Weak<PoolInner>, mut rx: mpsc::UnboundedReceiver<Weak<PoolInstance>>) {
        let (freeze_after, shutdown) = match pool.upgrade() {
            Some(p) => (p.config.freeze_after, p.shutdown.clone()),
            None => return,
        };
        let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
        let mut waiting: HashMap<u64, Weak<PoolInstance>> = HashMap::new();
        let mut seq = 0u64;
        let mut push = |heap: &mut BinaryHeap<_>, waiting: &mut HashMap<_, _>, at, w| {
            seq += 1;
            heap.push(Reverse((at, seq)));
            waiting.insert(seq, w);
        };
        loop {
            let next = heap.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                got = rx.recv() => match got {
                    Some(w) => push(&mut heap, &mut waiting, Instant::now() + freeze_after, w),
                    None => return,
                },
                () = sleep_until(next) => {
                    let now = Instant::now();
                    while let Some(Reverse((at, key))) = heap.peek().copied() {
                        if at > now {
                            break;
                        }
                        heap.pop();
                        let Some(instance) = waiting.remove(&key).and_then(|w| w.upgrade()) else {
                            continue;
                        };
                        if instance.stopping() || instance.exited() {
                            continue;
                        }
                        let idle = instance.idle_for();
                        if instance.in_use() || idle < freeze_after {
                            // Used since it was queued: look again when it may be idle enough.
                            let wait = if instance.in_use() { freeze_after } else { freeze_after - idle };
                            push(&mut heap, &mut waiting, now + wait, Arc::downgrade(&instance));
                            continue;
                        }
                        let Some(pool) = pool.upgrade() else { return };
                        let requeue = pool.freezer.tx.clone();
                        let pool2 = pool.clone();
                        pool.tasks.spawn(async move {
                            freeze_one(&pool2, instance, requeue).await;
                        });
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn freeze_one(
    pool: &PoolInner,
    instance: Arc<PoolInstance>,
    requeue: mpsc::UnboundedSender<Weak<PoolInstance>>,
) {
    match instance.freeze_if_idle().await {
        Freeze::Frozen(took) => {
            instance
                .freeze_state()
                .queued
                .store(false, Ordering::Release);
            debug!(instance = %instance.id(), us = took.as_micros() as u64, "frozen");
        }
        Freeze::Busy => {
            let _ = requeue.send(Arc::downgrade(&instance));
        }
        Freeze::Gone | Freeze::Failed => {
            instance
                .freeze_state()
                .queued
                .store(false, Ordering::Release);
        }
        Freeze::Restart => {
            instance
                .freeze_state()
                .queued
                .store(false, Ordering::Release);
            // Not to serve again: stopped now if idle, else when the request that took it
            // meanwhile releases it.
            instance.mark_unhealthy();
            if let Some(fp) = pool.function(&instance.revision.key)
                && fp.remove_idle(&instance)
            {
                pool.stop_in_background(vec![instance]);
            }
        }
    }
}
