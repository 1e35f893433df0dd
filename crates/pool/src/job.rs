//! Jobs: FC's and SCF's no-server mode. Each event starts a new instance with the event in the
//! contract's variable (`FC_CUSTOM_CONTAINER_EVENT`, `SCF_CUSTOM_CONTAINER_EVENT`); the process
//! runs until it exits, and its exit code is the result: 0 a success, anything else a function
//! error. The answer is `{"exitCode": N, "output": "<the last lines it printed>"}` (status 200,
//! or 500 when the job failed); a job past its timeout is killed (`FunctionTimeout`), one
//! killed for memory is `FunctionOutOfMemory`. Instances of jobs are never reused; they count
//! against `max_instances` while they run.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use wharf_contract::Outcome;
use wharf_sandbox::ExitInfo;

use crate::function::{FunctionPool, Refused, Revision};
use crate::invoke::{Call, Invocation, finish, refused};
use crate::report;
use crate::{InvokeError, PoolInner};

/// The largest event a job takes: a variable of at most 128 KB (SCF's documented limit; FC's
/// is the same for asynchronous events).
pub const MAX_JOB_EVENT_BYTES: usize = 128 * 1024;

pub(crate) async fn run(
    pool: &PoolInner,
    fp: &FunctionPool,
    revision: &Arc<Revision>,
    request_id: String,
    call: Call,
) -> Result<Invocation, InvokeError> {
    let started_at = SystemTime::now();
    let t0 = Instant::now();
    let name = &revision.spec.name;
    let unserved = |e: InvokeError| Err(refused(revision, &request_id, started_at, None, e));
    let bad = |reason: String| InvokeError::BadRequest {
        name: name.clone(),
        reason,
    };
    let event = match call {
        Call::Event(event) => event,
        Call::Http(_) => return unserved(bad("a job cannot be passed an HTTP request".into())),
    };
    let Some(variable) = revision.contract.job_event_variable() else {
        return unserved(bad(format!(
            "contract {} has no job mode",
            revision.spec.contract
        )));
    };
    if event.len() > MAX_JOB_EVENT_BYTES {
        return unserved(bad(format!(
            "the event is {} bytes; a job gets its event in {variable}, at most \
             {MAX_JOB_EVENT_BYTES} bytes",
            event.len()
        )));
    }
    let Ok(text) = std::str::from_utf8(&event).map(str::to_string) else {
        return unserved(bad(format!(
            "a job's event goes in the variable {variable} and must be UTF-8 text"
        )));
    };
    if text.contains('\0') {
        return unserved(bad(format!(
            "a job's event goes in the variable {variable} and cannot contain NUL"
        )));
    }
    match slot_or_queue(pool, fp, revision).await {
        Ok(()) => {}
        Err(Refused::Full { max }) => {
            return unserved(InvokeError::TooManyInstances {
                name: name.clone(),
                max,
            });
        }
        Err(Refused::ShuttingDown) => return Err(InvokeError::ShuttingDown),
        Err(Refused::Retired) => return Err(InvokeError::FunctionNotFound { name: name.clone() }),
    }
    let launched = crate::instance::launch(pool, revision, &[(variable.to_string(), text)]).await;
    let (instance, _lease) = match launched {
        Ok(i) => i,
        Err(e) => {
            fp.job_done();
            return unserved(e);
        }
    };
    let init = t0.elapsed();
    let log = &revision.spec.log;
    log.system(
        instance.id(),
        &report::start_line(&request_id, &revision.context.version),
    );
    let sent = Instant::now();
    let ended = tokio::time::timeout(revision.spec.timeout, instance.exited()).await;
    let duration = sent.elapsed();
    let result = match ended {
        Err(_) => Err(InvokeError::Timeout {
            name: name.clone(),
            instance: instance.id().to_string(),
            timeout: revision.spec.timeout,
        }),
        Ok(_) if instance.oom_killed() => Err(InvokeError::OutOfMemory {
            name: name.clone(),
            instance: instance.id().to_string(),
            limit_mb: revision.spec.memory_mb,
            peak_mb: instance.memory_peak_bytes().map(report::mb_ceil),
        }),
        Ok(exit) => Ok(answer(&instance, &request_id, exit, duration)),
    };
    finish(
        revision,
        &instance,
        &request_id,
        started_at,
        Some(init),
        Some(sent),
        &result,
    )
    .await;
    instance.stop(pool.config.stop_grace).await;
    fp.job_done();
    result.map(|mut inv| {
        inv.cold_start = true;
        inv.init_duration = Some(init);
        inv
    })
}

/// The answer of a job that exited.
fn answer(
    instance: &wharf_sandbox::Instance,
    request_id: &str,
    exit: ExitInfo,
    duration: std::time::Duration,
) -> Invocation {
    let (code, outcome) = match exit {
        ExitInfo::Exited(0) => (Some(0), Outcome::Success),
        ExitInfo::Exited(code) => (
            Some(code),
            Outcome::FunctionError {
                reason: format!("the job exited with code {code}"),
            },
        ),
        other => (
            None,
            Outcome::FunctionError {
                reason: format!("the job ended: {other}"),
            },
        ),
    };
    let status = match outcome {
        Outcome::Success => StatusCode::OK,
        Outcome::FunctionError { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({
        "exitCode": code,
        "output": instance.recent_output(),
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Invocation {
        request_id: request_id.to_string(),
        instance_id: instance.id().to_string(),
        cold_start: true,
        init_duration: None,
        thaw_duration: None,
        duration,
        status,
        headers,
        body: Bytes::from(body.to_string()),
        outcome,
        memory_peak_bytes: instance.memory_peak_bytes(),
    }
}

/// A slot for the job's own instance; when the function has all its instances, a place in its
/// queue until one frees — for at most the function's timeout, and while fewer than
/// [`QUEUE_PER_INSTANCE`](crate::invoke::QUEUE_PER_INSTANCE) requests per instance wait.
async fn slot_or_queue(
    pool: &PoolInner,
    fp: &FunctionPool,
    revision: &Revision,
) -> Result<(), Refused> {
    let deadline = tokio::time::Instant::now() + revision.spec.timeout;
    let mut place = None;
    loop {
        // Armed before looking, so that a slot freed between the look and the wait is not
        // missed.
        let freed = fp.freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        match fp.start_job() {
            Err(Refused::Full { max }) => {
                if place.is_none() {
                    place = fp.enqueue_job(max.saturating_mul(crate::invoke::QUEUE_PER_INSTANCE));
                    if place.is_none() {
                        return Err(Refused::Full { max });
                    }
                }
                tokio::select! {
                    () = &mut freed => {}
                    () = tokio::time::sleep_until(deadline) => return Err(Refused::Full { max }),
                    () = pool.shutdown.cancelled() => return Err(Refused::ShuttingDown),
                }
            }
            other => return other,
        }
    }
}
