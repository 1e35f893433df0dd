//! One invocation: take (or start) an instance, run its initialize hook if it has not run yet,
//! send the event, read the answer, give the instance back.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use wharf_contract::{FunctionMode, HookOutcome, HttpCall, LogPoint, Outcome};

use crate::connection::ExchangeError;
use crate::function::{Acquired, FunctionPool, Handoff, Refused, Revision, Taken};
use crate::instance::PoolInstance;
use crate::report::{self, InvocationRecord, InvocationStatus};
use crate::{InvokeError, Pool, PoolInner};

/// Largest response body read from a function (FC's synchronous payload limit).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// How long to wait for the exit status of an instance whose connection broke, to tell a crash
/// from a network problem.
const CRASH_CHECK_WAIT: Duration = Duration::from_millis(200);
/// How long an ended invocation waits, at most, for what the function printed to reach its log
/// before the END line (immediate when it printed nothing).
const OUTPUT_SETTLE_WAIT: Duration = Duration::from_millis(50);

/// The answer of a function to one invocation.
#[derive(Debug)]
pub struct Invocation {
    pub request_id: String,
    pub instance_id: String,
    /// A new instance was started for this invocation.
    pub cold_start: bool,
    /// On a cold start: from deciding to start an instance to its server listening.
    pub init_duration: Option<Duration>,
    /// The instance was frozen and was thawed for this invocation, taking this long.
    pub thaw_duration: Option<Duration>,
    /// From sending the event to the end of the function's answer.
    pub duration: Duration,
    pub status: StatusCode,
    /// The function's response headers that the contract lets through.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub outcome: Outcome,
    /// The instance's memory peak so far (its cgroup's, since it started).
    pub memory_peak_bytes: Option<u64>,
}

/// What an invocation sends the function.
#[derive(Debug)]
pub(crate) enum Call {
    /// An event, in the contract's invoke request.
    Event(Bytes),
    /// A caller's request, passed through to an HTTP function.
    Http(HttpCall),
}

impl Pool {
    /// Invokes function `name` with `event`. The work runs in its own task, so a caller that goes
    /// away (a client disconnecting) never leaves an instance half-started or a slot taken.
    pub async fn invoke(
        &self,
        name: &str,
        request_id: &str,
        event: Bytes,
    ) -> Result<Invocation, InvokeError> {
        self.call(name, None, request_id, Call::Event(event)).await
    }

    /// [`invoke`](Self::invoke), for a call that came through `alias` (of the version `key`
    /// names): the contract's qualifier header says the alias.
    pub async fn invoke_via(
        &self,
        key: &str,
        alias: Option<&str>,
        request_id: &str,
        event: Bytes,
    ) -> Result<Invocation, InvokeError> {
        self.call(key, alias, request_id, Call::Event(event)).await
    }

    /// Passes `call` through to HTTP function `key` (its answer is the function's response,
    /// with the contract's response header rules applied); `alias` as in
    /// [`invoke_via`](Self::invoke_via). An event function, or a request the contract refuses,
    /// is an [`InvokeError::BadRequest`].
    pub async fn invoke_http(
        &self,
        key: &str,
        alias: Option<&str>,
        request_id: &str,
        call: HttpCall,
    ) -> Result<Invocation, InvokeError> {
        self.call(key, alias, request_id, Call::Http(call)).await
    }

    /// The contract of function `name`; `None` if there is no such function.
    pub fn contract_of(&self, name: &str) -> Option<wharf_contract::ContractKind> {
        Some(self.inner.function(name)?.revision().spec.contract)
    }

    /// Function `name`'s contract and whether it takes events, HTTP requests or runs as a job;
    /// `None` if there is no such function.
    pub fn contract_and_mode(
        &self,
        name: &str,
    ) -> Option<(wharf_contract::ContractKind, FunctionMode)> {
        let spec = &self.inner.function(name)?.revision().spec;
        Some((spec.contract, spec.mode))
    }

    async fn call(
        &self,
        name: &str,
        alias: Option<&str>,
        request_id: &str,
        call: Call,
    ) -> Result<Invocation, InvokeError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(InvokeError::ShuttingDown);
        }
        let fp = self
            .inner
            .function(name)
            .ok_or_else(|| InvokeError::FunctionNotFound { name: name.into() })?;
        let inner = self.inner.clone();
        let request_id = request_id.to_string();
        let alias = alias.map(str::to_string);
        let task = self
            .inner
            .tasks
            .spawn(async move { invoke(&inner, &fp, request_id, alias, call).await });
        task.await.unwrap_or_else(|e| {
            Err(InvokeError::Internal {
                name: name.into(),
                reason: e.to_string(),
            })
        })
    }
}

async fn invoke(
    pool: &Arc<PoolInner>,
    fp: &Arc<FunctionPool>,
    request_id: String,
    alias: Option<String>,
    call: Call,
) -> Result<Invocation, InvokeError> {
    let revision = fp.revision();
    if revision.spec.mode == FunctionMode::Job {
        return crate::job::run(pool, fp, &revision, request_id, call).await;
    }
    let started_at = SystemTime::now();
    let t0 = Instant::now();
    if let Call::Http(http) = &call {
        // Before an instance is taken: a request the function cannot get costs nothing.
        if let Err(e) = check_http_call(&revision, http) {
            return Err(refused(&revision, &request_id, started_at, None, e));
        }
    }
    let mut thaw_duration = None;
    let (instance, init_duration) = match acquire_or_queue(pool, fp, &revision).await {
        Ok(Acquired::Warm(i)) => match i.ready_for_use().await {
            Ok(thawed) => {
                thaw_duration = thawed;
                (i, None)
            }
            Err(e) => {
                let error = InvokeError::Internal {
                    name: i.revision.spec.name.clone(),
                    reason: format!("instance {} could not be thawed: {e}", i.id()),
                };
                let revision = i.revision.clone();
                let f = fp.release(i, true, true);
                pool.follow_up(fp, f);
                return Err(refused(&revision, &request_id, started_at, None, error));
            }
        },
        Ok(Acquired::Cold(i, took)) => (i, Some(took)),
        Err(NoSlot::Refused(e)) => {
            return Err(refused(&revision, &request_id, started_at, None, e));
        }
        // The start this request waited for failed: its init is the wait.
        Err(NoSlot::StartFailed(e)) => {
            let init = Some(t0.elapsed());
            return Err(refused(&revision, &request_id, started_at, init, e));
        }
        Err(NoSlot::Gone(e)) => return Err(e),
    };
    let mut sent = None;
    let result = serve(&instance, &request_id, alias.as_deref(), call, &mut sent).await;
    // Before the release: a failed instance is stopped after it, and its memory peak with it.
    finish(
        &instance.revision,
        instance.sandbox(),
        &request_id,
        started_at,
        init_duration,
        sent,
        &result,
    )
    .await;
    let broken = matches!(&result, Err(e) if e.kills_instance());
    let keep_idle = !instance.revision.idle_timeout(&pool.config).is_zero();
    let f = fp.release(instance, broken, keep_idle);
    pool.follow_up(fp, f);
    result.map(|mut inv| {
        inv.cold_start = init_duration.is_some();
        inv.init_duration = init_duration;
        inv.thaw_duration = thaw_duration;
        inv
    })
}

/// Records the invocation `request_id` of `revision` that failed with `e` before an instance
/// took it (after `init` of a cold start that failed); returns `e`.
pub(crate) fn refused(
    revision: &Revision,
    request_id: &str,
    started_at: SystemTime,
    init: Option<Duration>,
    e: InvokeError,
) -> InvokeError {
    let r = record(revision, request_id, started_at, None, init, None, &Err(&e));
    revision.metrics.observe(&r);
    revision.spec.log.invocation(&r);
    e
}

/// The end of an invocation `instance` (of `revision`) served: once what the function printed
/// is in its log, the vendor's end marker, `END` and `REPORT` (when the event was sent), and the
/// record.
pub(crate) async fn finish(
    revision: &Revision,
    instance: &wharf_sandbox::Instance,
    request_id: &str,
    started_at: SystemTime,
    init_duration: Option<Duration>,
    sent: Option<Instant>,
    result: &Result<Invocation, InvokeError>,
) {
    let log = &revision.spec.log;
    let duration = match result {
        Ok(inv) => Some(inv.duration),
        Err(_) => sent.map(|t| t.elapsed()),
    };
    let record = record(
        revision,
        request_id,
        started_at,
        Some(instance),
        init_duration,
        duration,
        &result.as_ref(),
    );
    if sent.is_some() {
        instance.output_settled(OUTPUT_SETTLE_WAIT).await;
        if let Some(line) = revision
            .contract
            .log_marker(LogPoint::InvokeEnd, request_id)
        {
            log.system(instance.id(), &line);
        }
        log.system(instance.id(), &report::end_line(request_id));
        log.system(instance.id(), &report::report_line(&record));
    }
    revision.metrics.observe(&record);
    log.invocation(&record);
}

/// The record of an invocation of `revision`: served by `instance` (if one was reached), its
/// function time `duration` (if the event was sent), how it ended.
pub(crate) fn record(
    revision: &Revision,
    request_id: &str,
    started_at: SystemTime,
    instance: Option<&wharf_sandbox::Instance>,
    init_duration: Option<Duration>,
    duration: Option<Duration>,
    result: &Result<&Invocation, &InvokeError>,
) -> InvocationRecord {
    let duration = duration.unwrap_or_default();
    let (status, http_status, error_code, error) = match result {
        Ok(inv) => match &inv.outcome {
            Outcome::Success => (InvocationStatus::Success, Some(inv.status), None, None),
            Outcome::FunctionError { reason } => (
                InvocationStatus::FunctionError,
                Some(inv.status),
                None,
                Some(reason.clone()),
            ),
        },
        Err(e) => (
            InvocationStatus::Error,
            None,
            Some(e.code().to_string()),
            Some(e.to_string()),
        ),
    };
    let memory_peak = match result {
        Ok(inv) => inv.memory_peak_bytes,
        Err(_) => instance.and_then(|i| i.memory_peak_now()),
    };
    InvocationRecord {
        request_id: request_id.to_string(),
        function: revision.spec.name.clone(),
        version: revision.context.version.clone(),
        revision: revision.spec.revision,
        instance: instance.map(|i| i.id().to_string()).or_else(|| {
            result
                .as_ref()
                .err()
                .and_then(|e| e.instance())
                .map(str::to_string)
        }),
        cold_start: init_duration.is_some(),
        started_at_ms: report::unix_ms(started_at),
        init_duration_ms: init_duration.map(|d| d.as_secs_f64() * 1e3),
        duration_ms: duration.as_secs_f64() * 1e3,
        billed_duration_ms: report::billed_ms(duration),
        memory_limit_mb: revision.spec.memory_mb,
        max_memory_used_mb: memory_peak.map(report::mb_ceil),
        status,
        http_status: http_status.map(|s| s.as_u16()),
        error_code,
        error,
    }
}

/// How many requests may wait for a slot of one function, per instance it may have.
pub const QUEUE_PER_INSTANCE: usize = 10;

/// Why a request got no slot.
pub(crate) enum NoSlot {
    /// The queue is full, or the wait ran out (recorded as the function's refusal).
    Refused(InvokeError),
    /// The instance started for it failed to start.
    StartFailed(InvokeError),
    /// The function was removed, or Wharf shuts down.
    Gone(InvokeError),
}

/// A slot on a ready instance of `fp` (the most recently used with one free); when there is
/// none, a place in the function's queue — new instances start for the queue while there is
/// room under `max_instances` — until whichever instance frees a slot or starts first hands it
/// over. The queue holds at most [`QUEUE_PER_INSTANCE`] requests per instance the function may
/// have, and a request waits at most the function's timeout — longer only while an instance is
/// starting for it, since a start ends by itself (listening, or its start deadline).
pub(crate) async fn acquire_or_queue(
    pool: &Arc<PoolInner>,
    fp: &Arc<FunctionPool>,
    revision: &Revision,
) -> Result<Acquired, NoSlot> {
    let name = &revision.spec.name;
    let full = |max| InvokeError::TooManyInstances {
        name: name.clone(),
        max,
    };
    let mut dead = Vec::new();
    let taken = fp.acquire(
        revision.max_instances.saturating_mul(QUEUE_PER_INSTANCE),
        &mut dead,
    );
    pool.stop_in_background(dead);
    let (mut rx, follow_up) = match taken {
        Ok(Taken::Now(slot)) => return Ok(slot),
        Ok(Taken::Queued { rx, follow_up }) => (rx, follow_up),
        Err(Refused::Full { max }) => return Err(NoSlot::Refused(full(max))),
        Err(Refused::ShuttingDown) => return Err(NoSlot::Gone(InvokeError::ShuttingDown)),
        Err(Refused::Retired) => {
            return Err(NoSlot::Gone(InvokeError::FunctionNotFound {
                name: name.clone(),
            }));
        }
    };
    pool.follow_up(fp, follow_up);
    let mut deadline = tokio::time::Instant::now() + revision.spec.timeout;
    let handed = loop {
        tokio::select! {
            handed = &mut rx => break handed.ok(),
            () = tokio::time::sleep_until(deadline) => {
                if fp.starting() > 0 {
                    // A start in progress may be this request's: it ends soon either way.
                    deadline += START_POLL;
                    continue;
                }
                rx.close();
                break rx.try_recv().ok();
            }
            () = pool.shutdown.cancelled() => {
                rx.close();
                if let Ok(Handoff::Slot(slot)) = rx.try_recv() {
                    let f = fp.release(slot.instance().clone(), false, true);
                    pool.follow_up(fp, f);
                }
                return Err(NoSlot::Gone(InvokeError::ShuttingDown));
            }
        }
    };
    match handed {
        Some(Handoff::Slot(slot)) => Ok(slot),
        Some(Handoff::Failed(
            e @ (InvokeError::FunctionNotFound { .. } | InvokeError::ShuttingDown),
        )) => Err(NoSlot::Gone(e)),
        Some(Handoff::Failed(e)) => Err(NoSlot::StartFailed(e)),
        None => Err(NoSlot::Refused(full(revision.max_instances))),
    }
}

/// How often a request whose wait ran out looks again while an instance is starting.
const START_POLL: Duration = Duration::from_millis(100);

/// The headers of `revision`'s passed-through calls; an error if it is not an HTTP function.
fn http_template(revision: &Revision) -> Result<&wharf_contract::RequestTemplate, InvokeError> {
    revision
        .prepared
        .http
        .as_ref()
        .ok_or_else(|| InvokeError::BadRequest {
            name: revision.spec.name.clone(),
            reason: format!(
                "it is an {} function, not an HTTP function: requests cannot be passed through \
                 to it (deploy it with \"mode\": \"http\" if its server handles any path)",
                revision.spec.mode
            ),
        })
}

/// Whether `call` may be passed through to `revision`: an HTTP function, and a request its
/// contract accepts.
fn check_http_call(revision: &Revision, call: &HttpCall) -> Result<(), InvokeError> {
    http_template(revision)?;
    revision
        .contract
        .check_http_call(call)
        .map_err(|reason| InvokeError::BadRequest {
            name: revision.spec.name.clone(),
            reason,
        })
}

/// Sends the event or the request to `instance` (after its initialize hook, if that has not
/// succeeded yet) and reads the answer. `sent` is set when it is sent, just after the `START`
/// line.
async fn serve(
    instance: &Arc<PoolInstance>,
    request_id: &str,
    alias: Option<&str>,
    call: Call,
    sent: &mut Option<Instant>,
) -> Result<Invocation, InvokeError> {
    let revision = &instance.revision;
    let name = &revision.spec.name;
    let log = &revision.spec.log;
    if let Some(init_timeout) = revision.context.initializer_timeout
        && !instance.initialized()
    {
        let marker = |point| revision.contract.log_marker(point, request_id);
        if let Some(line) = marker(LogPoint::InitializeStart) {
            log.system(instance.id(), &line);
        }
        let initialized = initialize(instance, request_id, init_timeout).await;
        if let Some(line) = marker(LogPoint::InitializeEnd) {
            instance.sandbox().output_settled(OUTPUT_SETTLE_WAIT).await;
            log.system(instance.id(), &line);
        }
        initialized?;
    }
    let mut req = match call {
        Call::Event(event) => revision.prepared.invoke.request(request_id, event),
        // Checked before the instance was taken, against the function's revision then; the
        // instance's may be older.
        Call::Http(http) => {
            wharf_contract::pass_through(http_template(revision)?, request_id, http)
        }
    };
    if let Some(alias) = alias
        && let Some(header) = revision.contract.qualifier_header()
        && let Ok(value) = http::HeaderValue::from_str(alias)
    {
        req.headers_mut().insert(header, value);
    }
    log.system(
        instance.id(),
        &report::start_line(request_id, &revision.context.version),
    );
    if let Some(line) = revision
        .contract
        .log_marker(LogPoint::InvokeStart, request_id)
    {
        log.system(instance.id(), &line);
    }
    let t0 = Instant::now();
    *sent = Some(t0);
    // Inside the timeout: the whole answer, body included.
    let exchange = instance.exchange(req, MAX_RESPONSE_BYTES);
    let (parts, body) = match tokio::time::timeout(revision.spec.timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(ExchangeError::TooLarge)) => {
            return Err(InvokeError::ResponseTooLarge {
                name: name.clone(),
                limit: MAX_RESPONSE_BYTES,
            });
        }
        Ok(Err(e)) => return Err(broken(instance, e.to_string()).await),
        Err(_) => {
            return Err(InvokeError::Timeout {
                name: name.clone(),
                instance: instance.id().to_string(),
                timeout: revision.spec.timeout,
            });
        }
    };
    let duration = t0.elapsed();
    instance.count_request();
    let outcome = match revision.context.mode {
        // Jobs do not come here (`job::run`).
        FunctionMode::Event | FunctionMode::Job => {
            revision.contract.classify(parts.status, &parts.headers)
        }
        FunctionMode::Http => wharf_contract::classify_http(parts.status),
    };
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if revision.contract.response_header_allowed(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    Ok(Invocation {
        request_id: request_id.to_string(),
        instance_id: instance.id().to_string(),
        cold_start: false,
        init_duration: None,
        thaw_duration: None,
        duration,
        status: parts.status,
        headers,
        body,
        outcome,
        memory_peak_bytes: instance.sandbox().memory_peak_now(),
    })
}

/// Runs the contract's initialize hook on `instance` (once it succeeds, never again).
async fn initialize(
    instance: &Arc<PoolInstance>,
    request_id: &str,
    timeout: Duration,
) -> Result<(), InvokeError> {
    let revision = &instance.revision;
    let Some(template) = &revision.prepared.initialize else {
        instance.set_initialized();
        return Ok(());
    };
    let req = template.request(request_id, Bytes::new());
    let failed = |reason: String, restarted: bool| InvokeError::InitializeFailed {
        name: revision.spec.name.clone(),
        instance: instance.id().to_string(),
        reason,
        restarted,
    };
    let call = instance.exchange(req, MAX_RESPONSE_BYTES);
    let status = match tokio::time::timeout(timeout, call).await {
        Ok(Ok((parts, _))) => parts.status,
        Ok(Err(e)) => return Err(broken(instance, e.to_string()).await),
        Err(_) => {
            return Err(failed(
                format!("the initialize hook did not answer within {timeout:?}"),
                true,
            ));
        }
    };
    match revision.contract.classify_hook(status) {
        HookOutcome::Success => {
            instance.set_initialized();
            Ok(())
        }
        HookOutcome::Failed { status } => Err(failed(
            format!(
                "the initialize hook answered {status}; it is tried again on the next invocation"
            ),
            false,
        )),
        HookOutcome::Restart => Err(failed(
            format!("the initialize hook answered {status}: the instance is restarted"),
            true,
        )),
    }
}

/// The connection to `instance` broke: a crash if the instance has exited, else unreachable.
async fn broken(instance: &PoolInstance, reason: String) -> InvokeError {
    let name = instance.revision.spec.name.clone();
    let id = instance.id().to_string();
    let exit = tokio::time::timeout(CRASH_CHECK_WAIT, instance.sandbox().exited())
        .await
        .ok();
    match exit {
        // Read before the instance is stopped: stopping removes its cgroup.
        Some(_) if instance.sandbox().oom_killed() => {
            let limit_mb = instance.revision.spec.memory_mb;
            let peak_mb = instance
                .sandbox()
                .memory_peak_bytes()
                .map(|b| b.div_ceil(1024 * 1024));
            let e = InvokeError::OutOfMemory {
                name,
                instance: id,
                limit_mb,
                peak_mb,
            };
            instance
                .revision
                .spec
                .log
                .system(instance.id(), &e.to_string());
            e
        }
        Some(exit) => InvokeError::Crashed {
            name,
            instance: id,
            exit: Some(exit),
            output: instance.sandbox().recent_output(),
        },
        None => InvokeError::Unreachable {
            name,
            instance: id,
            reason,
        },
    }
}
