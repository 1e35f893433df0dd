//! An instance as the pool holds it: the sandboxed process, its keep-alive connection, whether
//! its initialize hook has run, when it was last used, whether a request holds it — and its
//! lifecycle hooks: pre-stop before it is stopped (pre-freeze is in `freeze.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, warn};
use wharf_contract::ContractRequest;
use wharf_image::ImageLease;
use wharf_sandbox::{EventSink, Instance, InstanceEvent, NotListening};

use crate::connection::{Conn, ExchangeError};
use crate::freeze::FreezeState;
use crate::function::FunctionLog;
use crate::function::Revision;
use crate::runtime_api::{Readiness, RuntimeApi};
use crate::{InvokeError, PoolInner, instance_spec};

/// Writes what the function's user should know about its instances into the function's log:
/// OOM kills as they happen (also of processes other than the server, which the request path
/// never sees). Exits and stops are noted by the pool with more context.
struct LogEvents {
    log: Arc<dyn FunctionLog>,
    memory_mb: u32,
}

impl EventSink for LogEvents {
    fn event(&self, instance_id: &str, event: &InstanceEvent) {
        if let InstanceEvent::OomKill { kills } = event {
            self.log.system(
                instance_id,
                &format!(
                    "the OOM killer ended a process of the instance ({kills} so far): it reached \
                     its memory limit of {} MB (memory_mb; files in the writable layer and /tmp \
                     count too)",
                    self.memory_mb
                ),
            );
        }
    }
}

pub(crate) struct PoolInstance {
    pub revision: Arc<Revision>,
    instance: Instance,
    /// The kept connections (up to the function's concurrency), each checked out by the
    /// exchange using it.
    conns: Mutex<Vec<Conn>>,
    /// The Runtime API its client pulls work from, for a contract whose image pulls its work:
    /// exchanges go there instead of to a connection.
    runtime: Option<RuntimeApi>,
    initialized: AtomicBool,
    /// When it became ready.
    started: std::time::SystemTime,
    last_used: Mutex<Instant>,
    requests: AtomicU64,
    /// The note about the stop is written once, however many callers stop the instance.
    stop_noted: AtomicBool,
    /// Requests holding a slot on it (at most the function's concurrency). Changed under the
    /// function's lock.
    in_flight: AtomicUsize,
    /// Set when the pool decides to stop it: the freezer leaves it alone.
    stopping: AtomicBool,
    freeze: FreezeState,
    /// False once a request failed in a way that kills the instance: its stop then skips the
    /// pre-stop hook (a stuck or broken server would only make the stop wait).
    healthy: AtomicBool,
    /// Keeps the image's layers (this instance's overlay lowerdirs) from being pruned until the
    /// instance is gone, also after its function was updated or removed.
    _image: ImageLease,
}

/// Pulls the image if it is not in the store, and starts a sandboxed instance of `revision`
/// with `extra_env` over its environment (a job's event). Returns it with the lease that keeps
/// its image's layers.
pub(crate) async fn launch(
    pool: &PoolInner,
    revision: &Arc<Revision>,
    extra_env: &[(String, String)],
) -> Result<(Instance, ImageLease), InvokeError> {
    let spec = &revision.spec;
    let name = &spec.name;
    // Before looking: a prune then either ran already (and the image is pulled again) or
    // keeps it.
    let lease = pool.images.lease(&spec.image_pinned).await;
    let image = match pool.images.get(&spec.image_pinned) {
        Ok(Some(image)) => image,
        // Deployed with `prepull: false`, or the layers were removed since.
        // A shutdown does not wait for the pull: what it downloaded so far is in the image
        // store's tmp/, which the next start empties.
        Ok(None) => {
            tracing::info!(function = %name, image = %spec.image_pinned, "pulling the image for a cold start");
            let pulled = tokio::select! {
                pulled = pool.images.pull(&spec.image_pinned, &spec.registry_auth) => pulled,
                () = pool.shutdown.cancelled() => return Err(InvokeError::ShuttingDown),
            };
            pulled.map_err(|source| InvokeError::Image {
                name: name.clone(),
                source: Box::new(source),
            })?
        }
        Err(source) => {
            return Err(InvokeError::Image {
                name: name.clone(),
                source: Box::new(source),
            });
        }
    };
    let id = format!("{name}-{}", random_suffix());
    let events = Arc::new(LogEvents {
        log: spec.log.clone(),
        memory_mb: spec.memory_mb,
    });
    let instance_spec =
        instance_spec::build(revision, &image, &pool.config, &id, events, extra_env)?;
    let instance =
        pool.sandbox
            .start(instance_spec)
            .await
            .map_err(|source| InvokeError::StartFailed {
                name: name.clone(),
                source: Box::new(source),
            })?;
    Ok((instance, lease))
}

/// The error of an instance that never became ready, noted in the function's log.
fn not_started(revision: &Revision, id: &str, message: String) -> InvokeError {
    revision
        .spec
        .log
        .system(id, &format!("instance did not start: {message}"));
    InvokeError::NotStarted {
        name: revision.spec.name.clone(),
        port: revision.context.port,
        message,
    }
}

fn random_suffix() -> String {
    format!("{:010x}", rand::random::<u64>() & 0xff_ffff_ffff)
}

impl PoolInstance {
    /// Starts a new instance of `revision` and waits until its server listens. Returns the
    /// instance and how long the start took.
    pub async fn start(
        pool: &PoolInner,
        revision: Arc<Revision>,
    ) -> Result<(Arc<PoolInstance>, Duration), InvokeError> {
        let t0 = Instant::now();
        let (instance, lease) = launch(pool, &revision, &[]).await?;
        let id = instance.id().to_string();
        let spec = &revision.spec;
        let deadline = pool
            .config
            .start_deadline
            .unwrap_or_else(|| revision.contract.start_deadline());
        let started = if revision.contract.pulls_work() {
            Self::client_ready(pool, &revision, &instance, &id, deadline).await
        } else {
            Self::server_ready(pool, &revision, &instance, &id, deadline).await
        };
        let (conn, runtime) = match started {
            Ok(ready) => ready,
            Err(e) => {
                let report = instance.stop(pool.config.stop_grace).await;
                for e in report.cleanup_errors {
                    warn!(instance = %id, error = %e, "cleanup after a failed start");
                }
                return Err(e);
            }
        };
        let took = t0.elapsed();
        spec.log.system(
            &id,
            &format!("instance started in {:.1} ms", took.as_secs_f64() * 1e3),
        );
        debug!(instance = %id, ms = took.as_secs_f64() * 1e3, "instance ready");
        let started = Arc::new(PoolInstance {
            revision,
            instance,
            conns: Mutex::new(conn.into_iter().collect()),
            runtime,
            initialized: AtomicBool::new(false),
            started: std::time::SystemTime::now(),
            last_used: Mutex::new(Instant::now()),
            requests: AtomicU64::new(0),
            stop_noted: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            freeze: FreezeState::default(),
            healthy: AtomicBool::new(true),
            _image: lease,
        });
        if started.runtime.is_none() {
            let probe = started.clone();
            pool.tasks
                .spawn(async move { probe.warn_if_loopback_only().await });
        }
        Ok((started, took))
    }

    /// Waits until the instance's server listens on the function's port: its first connection.
    async fn server_ready(
        pool: &PoolInner,
        revision: &Revision,
        instance: &Instance,
        id: &str,
        deadline: Duration,
    ) -> Result<(Option<Conn>, Option<RuntimeApi>), InvokeError> {
        let port = revision.context.port;
        let listening = tokio::select! {
            r = instance.wait_listening(port, deadline) => r,
            _ = pool.shutdown.cancelled() => return Err(InvokeError::ShuttingDown),
        };
        let stream = match listening {
            Ok(stream) => stream,
            Err(why) => {
                let output = instance.recent_output();
                let message = match why {
                    NotListening::Exited(exit) => format!(
                        "the instance exited ({exit}) before its server listened on port \
                         {port}. Logs: {}",
                        wharf_contract::printed(&output)
                    ),
                    NotListening::Deadline => revision
                        .contract
                        .not_started_message(port, deadline, &output),
                };
                return Err(not_started(revision, id, message));
            }
        };
        let conn = Conn::open(stream)
            .await
            .map_err(|e| InvokeError::Unreachable {
                name: revision.spec.name.clone(),
                instance: id.to_string(),
                reason: e.to_string(),
            })?;
        Ok((Some(conn), None))
    }

    /// Serves the Runtime API in the instance and waits until its client asks for work.
    async fn client_ready(
        pool: &PoolInner,
        revision: &Revision,
        instance: &Instance,
        id: &str,
        deadline: Duration,
    ) -> Result<(Option<Conn>, Option<RuntimeApi>), InvokeError> {
        let port = revision.context.port;
        let listener = instance
            .take_listener(port)
            .ok_or_else(|| InvokeError::Internal {
                name: revision.spec.name.clone(),
                reason: format!("instance {id} has no Runtime API listener on port {port}"),
            })?;
        let api = RuntimeApi::serve(listener, &pool.tasks, revision.spec.timeout);
        let readiness = tokio::select! {
            r = tokio::time::timeout(deadline, api.ready()) => r.ok(),
            exit = instance.exited() => {
                let message = format!(
                    "the instance exited ({exit}) before its runtime client asked for work. \
                     Logs: {}",
                    wharf_contract::printed(&instance.recent_output())
                );
                return Err(not_started(revision, id, message));
            }
            _ = pool.shutdown.cancelled() => return Err(InvokeError::ShuttingDown),
        };
        match readiness {
            Some(Readiness::Ready) => Ok((None, Some(api))),
            Some(Readiness::InitFailed(why)) => {
                let reason = format!(
                    "the runtime client reported that its init failed: {why}; the instance is \
                     stopped"
                );
                revision
                    .spec
                    .log
                    .system(id, &format!("instance did not start: {reason}"));
                Err(InvokeError::InitializeFailed {
                    name: revision.spec.name.clone(),
                    instance: id.to_string(),
                    reason,
                    restarted: true,
                })
            }
            Some(Readiness::Waiting) | None => {
                let output = instance.recent_output();
                let message = revision
                    .contract
                    .not_started_message(port, deadline, &output);
                Err(not_started(revision, id, message))
            }
        }
    }

    /// A server bound to 127.0.0.1 works here (Wharf connects through the instance's own
    /// loopback) but not on the clouds, which connect from outside: say so in the function's
    /// log. Runs off the cold-start path; a connection to another loopback address answers
    /// only if the server listens on every address.
    async fn warn_if_loopback_only(&self) {
        let port = self.revision.context.port;
        let elsewhere = std::net::Ipv4Addr::new(127, 0, 0, 2);
        match self.instance.connect_to(elsewhere, port).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let message = format!(
                    "the server listens on 127.0.0.1 port {port} only: Wharf reaches it, but \
                     the clouds connect from outside the instance and would not \
                     (FunctionNotStarted); listen on 0.0.0.0:{port}"
                );
                warn!(instance = %self.id(), "{message}");
                self.revision.spec.log.system(self.id(), &message);
            }
            _ => {}
        }
    }

    pub fn id(&self) -> &str {
        self.instance.id()
    }

    pub fn exited(&self) -> bool {
        self.instance.exit_status().is_some()
    }

    pub fn sandbox(&self) -> &Instance {
        &self.instance
    }

    pub fn initialized(&self) -> bool {
        self.initialized.load(Ordering::Acquire)
    }

    pub fn set_initialized(&self) {
        self.initialized.store(true, Ordering::Release);
    }

    pub fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// Where it is in its life, as listings and metrics show it.
    pub fn state(&self) -> crate::InstanceState {
        if self.stopping() {
            crate::InstanceState::Stopping
        } else if self.in_use() {
            crate::InstanceState::Busy
        } else if self.instance.is_frozen() {
            crate::InstanceState::Frozen
        } else {
            crate::InstanceState::Idle
        }
    }

    /// What `GET /v1/functions/{name}/instances` shows of it.
    pub fn info(&self) -> crate::InstanceInfo {
        let state = self.state();
        crate::InstanceInfo {
            id: self.id().to_string(),
            revision: self.revision.spec.revision,
            version: self.revision.spec.version,
            state,
            started_at_ms: crate::report::unix_ms(self.started),
            idle_ms: (state != crate::InstanceState::Busy)
                .then(|| self.idle_for().as_millis() as u64),
            in_flight: self.in_flight(),
            requests: self.requests.load(Ordering::Relaxed),
            memory_now_mb: self.instance.memory_now_bytes().map(crate::report::mb_ceil),
            memory_peak_mb: self.instance.memory_peak_now().map(crate::report::mb_ceil),
            memory_limit_mb: self.revision.spec.memory_mb,
        }
    }

    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a slot; returns how many are taken now.
    pub fn add_in_flight(&self) -> usize {
        self.in_flight.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Gives back a slot; returns how many are still taken.
    pub fn sub_in_flight(&self) -> usize {
        self.in_flight.fetch_sub(1, Ordering::SeqCst) - 1
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// A request holds a slot on it.
    pub fn in_use(&self) -> bool {
        self.in_flight() > 0
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub(crate) fn freeze_state(&self) -> &FreezeState {
        &self.freeze
    }

    /// False once it failed a request or a hook asked for its restart: it serves no more.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn mark_unhealthy(&self) {
        self.healthy.store(false, Ordering::Release);
    }

    /// Sends `req` and reads the whole answer (its body at most `limit` bytes), on the
    /// instance's kept connection or on a new one opened through the instance's network
    /// namespace when there is none. A request the kept connection never wrote (the server
    /// closed it while idle, a race every keep-alive client meets) is sent again on a new
    /// connection; one that may have reached the server is never resent.
    pub async fn exchange(
        &self,
        req: ContractRequest,
        limit: usize,
    ) -> Result<(http::response::Parts, Bytes), ExchangeError> {
        if let Some(api) = &self.runtime {
            // The client answers through the API, or its instance ends (a crash, OOM).
            return tokio::select! {
                answer = api.exchange(req) => match answer {
                    Ok((_, body)) if body.len() > limit => Err(ExchangeError::TooLarge),
                    other => other,
                },
                exit = self.instance.exited() => Err(ExchangeError::Broken(format!(
                    "the instance exited ({exit}) during the invocation"
                ))),
            };
        }
        let kept = self.conns.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let req = match kept {
            Some(mut conn) if !conn.is_closed() => {
                if conn.ready().await {
                    match conn.exchange(req, limit).await {
                        Ok(answer) => {
                            self.keep(conn);
                            return Ok(answer);
                        }
                        Err(ExchangeError::NotSent(req, e)) => {
                            debug!(instance = %self.id(), error = %e, "kept connection closed before the request was written: reconnecting");
                            *req
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    req
                }
            }
            _ => req,
        };
        let stream = self
            .instance
            .connect(self.revision.context.port)
            .await
            .map_err(|e| ExchangeError::Broken(format!("cannot connect: {e}")))?;
        let mut conn = Conn::open(stream)
            .await
            .map_err(|e| ExchangeError::Broken(e.to_string()))?;
        let answer = conn.exchange(req, limit).await.map_err(|e| match e {
            ExchangeError::NotSent(_, e) => ExchangeError::Broken(e.to_string()),
            other => other,
        })?;
        self.keep(conn);
        Ok(answer)
    }

    /// The pre-stop hook, if the function has one and the instance can still answer it.
    async fn pre_stop(&self) {
        let Some(template) = &self.revision.prepared.pre_stop else {
            return;
        };
        let Some(timeout) = self.revision.context.pre_stop_timeout else {
            return;
        };
        if !self.healthy.load(Ordering::Acquire) || self.exited() {
            return;
        }
        if let Err(e) = self.thaw_for_hook().await {
            warn!(instance = %self.id(), error = %e, "cannot thaw for the pre-stop hook");
            return;
        }
        let log = &self.revision.spec.log;
        let req = template.request(self.id(), Bytes::new());
        let outcome = match tokio::time::timeout(timeout, self.exchange(req, 64 * 1024)).await {
            Ok(Ok((parts, _))) => match self.revision.contract.classify_hook(parts.status) {
                wharf_contract::HookOutcome::Success => return,
                _ => format!("answered {}", parts.status),
            },
            Ok(Err(e)) => format!("failed: {e}"),
            Err(_) => format!("did not answer within {timeout:?}"),
        };
        log.system(
            self.id(),
            &format!("the pre-stop hook {outcome}; stopping the instance anyway"),
        );
    }

    fn keep(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() < self.revision.spec.concurrency {
            conns.push(conn);
        }
    }

    /// Stops the instance and notes it in the function's log: the pre-stop hook first (when
    /// configured, the instance healthy and alive; bounded by its timeout), then SIGTERM, `grace`,
    /// SIGKILL. Every caller waits until the instance is gone (the sandbox's stop is idempotent).
    pub async fn stop(&self, grace: Duration) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            self.pre_stop().await;
        }
        let report = self.instance.stop(grace).await;
        if let Some(api) = &self.runtime {
            api.stop();
        }
        if self.stop_noted.swap(true, Ordering::AcqRel) {
            return;
        }
        let log = &self.revision.spec.log;
        let mut note = format!(
            "instance stopped after {} request(s)",
            self.requests.load(Ordering::Relaxed)
        );
        if let Some(exit) = report.exit {
            note.push_str(&format!(", {exit}"));
        }
        if let Some(peak) = report.memory_peak_bytes {
            note.push_str(&format!(
                ", memory peak {:.1} MB",
                peak as f64 / (1024.0 * 1024.0)
            ));
        }
        if report.oom_killed {
            note.push_str(", killed: out of memory");
        }
        log.system(self.id(), &note);
        for e in report.cleanup_errors {
            warn!(instance = %self.id(), error = %e, "instance cleanup");
        }
    }
}
