//! The Lambda-compatible Invoke API, for AWS SDKs and the AWS CLI:
//! `POST /2015-03-31/functions/{name}/invocations`.
//!
//! `{name}` is a function name, `NAME:QUALIFIER`, or an ARN
//! `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]` (region and account are not
//! checked: Wharf has one of each). The local emulator's path
//! `/2015-03-31/functions/function/invocations` is this same route: it invokes the function
//! named `function`. The qualifier (or `?Qualifier=`) is `$LATEST`, a published version or an
//! alias ([`crate::versions`]).
//!
//! `X-Amz-Invocation-Type`: `RequestResponse` (default) answers 200 with the function's body;
//! `Event` answers 202 and queues the event ([`EventQueue`]); `DryRun` answers 204 once the
//! function and its image are there. A failure of the function itself is, as on Lambda, a 200
//! with `X-Amz-Function-Error: Unhandled` and the error in the body; a failure before the
//! function ran is an AWS-style error ([`AwsError`]). Both mappings are this API's own and live
//! here ([`failure_of`]), next to Wharf's general one in [`crate::error`].
//!
//! Authentication ([`require_auth`]): `Authorization: Bearer <token>`, or an AWS SigV4 signature
//! whose access key id *and* secret access key are both the API token.

mod sigv4;

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};
use wharf_contract::Outcome;
use wharf_pool::{InvokeError, Pool};
use wharf_sandbox::ExitInfo;
use wharf_store::{LogEntry, LogFile};

use crate::invoke::{MAX_EVENT_BYTES, REQUEST_ID, new_request_id};
use crate::{ApiError, App};

pub const INVOKE_PATH: &str = "/2015-03-31/functions/{name}/invocations";
/// Largest event of an `Event` (asynchronous) invocation, Lambda's limit: queued events are held
/// in memory.
pub const MAX_ASYNC_EVENT_BYTES: usize = 256 * 1024;
/// Events queued and not yet started, per daemon; past it, `Event` calls get 429.
pub const EVENT_QUEUE_DEPTH: usize = 1000;
/// Queued events running at once.
const EVENT_CONCURRENCY: usize = 32;
/// `X-Amz-Log-Result` holds at most this much of the end of the invocation's log, as on Lambda.
pub const LOG_RESULT_BYTES: usize = 4096;

const INVOCATION_TYPE: HeaderName = HeaderName::from_static("x-amz-invocation-type");
const LOG_TYPE: HeaderName = HeaderName::from_static("x-amz-log-type");
const LOG_RESULT: HeaderName = HeaderName::from_static("x-amz-log-result");
const FUNCTION_ERROR: HeaderName = HeaderName::from_static("x-amz-function-error");
const EXECUTED_VERSION: HeaderName = HeaderName::from_static("x-amz-executed-version");
const AMZN_REQUEST_ID: HeaderName = HeaderName::from_static("x-amzn-requestid");
/// Where botocore (and every AWS SDK of a rest-json service) reads the error's name from.
const ERROR_TYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");

/// The routes of this API, with their authentication; merged into the app's router.
pub fn routes(app: &Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route(INVOKE_PATH, post(invoke))
        .route_layer(from_fn_with_state(app.clone(), require_auth))
        // Outside the authentication, which reads the body of a signed request.
        .route_layer(DefaultBodyLimit::max(MAX_EVENT_BYTES))
}

/// An error as Lambda words it: `x-amzn-ErrorType: <name>` and `{"Type", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub status: StatusCode,
    pub name: &'static str,
    pub message: String,
}

impl AwsError {
    pub fn new(status: StatusCode, name: &'static str, message: impl Into<String>) -> Self {
        AwsError {
            status,
            name,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        AwsError::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            message,
        )
    }

    fn forbidden(name: &'static str, message: impl Into<String>) -> Self {
        AwsError::new(StatusCode::FORBIDDEN, name, message)
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        let kind = if self.status.is_server_error() {
            "Service"
        } else {
            "User"
        };
        let body = serde_json::json!({"Type": kind, "message": self.message});
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut()
            .insert(ERROR_TYPE, HeaderValue::from_static(self.name));
        resp
    }
}

/// Wharf's own errors (store, internal) in Lambda's words, by their status.
impl From<ApiError> for AwsError {
    fn from(e: ApiError) -> Self {
        let name = match e.status {
            StatusCode::NOT_FOUND => "ResourceNotFoundException",
            StatusCode::BAD_REQUEST => "InvalidParameterValueException",
            StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLargeException",
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequestsException",
            StatusCode::BAD_GATEWAY => "ResourceNotReadyException",
            _ => "ServiceException",
        };
        AwsError::new(e.status, name, e.message)
    }
}

/// How an invocation that produced no answer from the function is told to a Lambda client.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The function (its runtime, its instance) failed: 200, `X-Amz-Function-Error: Unhandled`,
    /// `{"errorMessage", "errorType"}`, as Lambda answers for a timeout, a crash or an OOM.
    Function {
        error_type: &'static str,
        message: String,
    },
    /// The call did not reach the function.
    Service(AwsError),
}

/// `exit code 3` → Lambda's `exit status 3`; signals as Go (Lambda's init) prints them.
fn runtime_exit(exit: Option<&ExitInfo>) -> String {
    match exit {
        Some(ExitInfo::Exited(code)) => format!("Runtime exited with error: exit status {code}"),
        Some(ExitInfo::Signaled(9)) => "Runtime exited with error: signal: killed".into(),
        Some(ExitInfo::Signaled(sig)) => format!("Runtime exited with error: signal {sig}"),
        None => "Runtime exited without providing a reason".into(),
    }
}

/// The Lambda mapping of the pool's errors. Function failures keep Lambda's message shape
/// (`RequestId: <id> Error: …`) with Wharf's explanation after it; the rest keep the status
/// [`crate::error`] decides and get the name of the Lambda exception closest to it.
pub fn failure_of(e: InvokeError, request_id: &str) -> Failure {
    let function = |error_type, what: String| Failure::Function {
        error_type,
        message: format!("RequestId: {request_id} Error: {what}"),
    };
    let wharf = e.to_string();
    match &e {
        InvokeError::Timeout { timeout, .. } => {
            return function(
                "Sandbox.Timedout",
                format!(
                    "Task timed out after {:.2} seconds ({wharf})",
                    timeout.as_secs_f64()
                ),
            );
        }
        InvokeError::Crashed { exit, .. } => {
            return function(
                "Runtime.ExitError",
                format!("{} ({wharf})", runtime_exit(exit.as_ref())),
            );
        }
        InvokeError::OutOfMemory { .. } => {
            return function(
                "Runtime.OutOfMemory",
                format!("Runtime exited with error: signal: killed ({wharf})"),
            );
        }
        InvokeError::NoCommand { .. } => return function("Runtime.InvalidEntrypoint", wharf),
        InvokeError::NotStarted { .. }
        | InvokeError::InitializeFailed { .. }
        | InvokeError::Unreachable { .. } => return function("Runtime.Unknown", wharf),
        InvokeError::ResponseTooLarge { .. } => {
            return function("Function.ResponseSizeTooLarge", wharf);
        }
        _ => {}
    }
    if let InvokeError::FunctionNotFound { name } = &e {
        return Failure::Service(function_not_found(name));
    }
    // The status is error.rs's; the name follows it (502: the image cannot be had now →
    // ResourceNotReadyException; 429 → TooManyRequestsException; 5xx → ServiceException).
    Failure::Service(AwsError::from(ApiError::from(e)))
}

/// The request id of this call, set by [`require_auth`] for the handler.
#[derive(Clone)]
struct RequestId(String);

/// Middleware: the request carries the API token, as a bearer token or as the access key of a
/// SigV4 signature made with the token as the secret too. Every answer, errors included, carries
/// the request id (`X-Amzn-RequestId`, `x-wharf-request-id`).
pub async fn require_auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let id = new_request_id();
    let mut resp = match authorize(&app, req).await {
        Ok(mut req) => {
            req.extensions_mut().insert(RequestId(id.clone()));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    };
    let value = HeaderValue::from_str(&id).expect("a request id is ASCII");
    resp.headers_mut().insert(AMZN_REQUEST_ID, value.clone());
    resp.headers_mut().insert(REQUEST_ID, value);
    resp
}

const HOW_TO_AUTHENTICATE: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY both to the \
     API token (in <data-dir>/api.token of this server), or send `Authorization: Bearer <token>`";

async fn authorize(app: &App, req: Request) -> Result<Request, AwsError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default().trim().to_string());
    let Some(header) = header else {
        return Err(AwsError::forbidden(
            "MissingAuthenticationTokenException",
            format!("Missing Authentication Token: {HOW_TO_AUTHENTICATE}"),
        ));
    };
    let (scheme, rest) = header.split_once(' ').unwrap_or((&header, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return if crate::auth::constant_time_eq(rest.trim().as_bytes(), app.token.as_bytes()) {
            Ok(req)
        } else {
            Err(unrecognized())
        };
    }
    if scheme != sigv4::ALGORITHM {
        return Err(AwsError::forbidden(
            "IncompleteSignatureException",
            format!(
                "the Authorization header is neither Bearer nor {}: {HOW_TO_AUTHENTICATE}",
                sigv4::ALGORITHM
            ),
        ));
    }
    let auth = sigv4::Authorization::parse(&header).map_err(signature_error)?;
    if !crate::auth::constant_time_eq(auth.access_key.as_bytes(), app.token.as_bytes()) {
        return Err(unrecognized());
    }
    if auth.service != "lambda" {
        return Err(AwsError::forbidden(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped to correct service: 'lambda', not '{}'",
                auth.service
            ),
        ));
    }
    // The signature covers the body: read it (within the route's limit) and put it back.
    let (parts, body) = req.into_parts();
    let body = Bytes::from_request(Request::from_parts(parts.clone(), body), &())
        .await
        .map_err(|e| body_error(&e))?;
    let signed = sigv4::SignedRequest {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        body: &body,
    };
    sigv4::verify(&signed, &auth, &app.token, SystemTime::now()).map_err(signature_error)?;
    Ok(Request::from_parts(parts, Body::from(body)))
}

fn unrecognized() -> AwsError {
    AwsError::forbidden(
        "UnrecognizedClientException",
        format!("The security token included in the request is invalid: {HOW_TO_AUTHENTICATE}"),
    )
}

fn signature_error(e: sigv4::SigV4Error) -> AwsError {
    let name = match e {
        sigv4::SigV4Error::Malformed(_) => "IncompleteSignatureException",
        sigv4::SigV4Error::Mismatch | sigv4::SigV4Error::Expired { .. } => {
            "InvalidSignatureException"
        }
    };
    let hint = match e {
        sigv4::SigV4Error::Mismatch => " (the secret access key is the API token)",
        _ => "",
    };
    AwsError::forbidden(name, format!("{e}{hint}"))
}

fn body_error(e: &BytesRejection) -> AwsError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(MAX_EVENT_BYTES, "an invocation")
    } else {
        AwsError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            e.body_text(),
        )
    }
}

fn too_large(limit: usize, what: &str) -> AwsError {
    AwsError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestTooLargeException",
        format!("Request must be smaller than {limit} bytes for {what}"),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

impl InvocationType {
    fn parse(headers: &HeaderMap) -> Result<InvocationType, AwsError> {
        let Some(v) = headers.get(INVOCATION_TYPE) else {
            return Ok(InvocationType::RequestResponse);
        };
        match v.to_str().unwrap_or_default() {
            "RequestResponse" => Ok(InvocationType::RequestResponse),
            "Event" => Ok(InvocationType::Event),
            "DryRun" => Ok(InvocationType::DryRun),
            other => Err(AwsError::invalid(format!(
                "X-Amz-Invocation-Type {other:?} is not one of RequestResponse, Event, DryRun"
            ))),
        }
    }
}

/// Whether the caller asked for the log tail (`X-Amz-Log-Type: Tail`; `None` is the default).
fn wants_tail(headers: &HeaderMap) -> Result<bool, AwsError> {
    match headers
        .get(LOG_TYPE)
        .map(|v| v.to_str().unwrap_or_default())
    {
        None | Some("None") => Ok(false),
        Some("Tail") => Ok(true),
        Some(other) => Err(AwsError::invalid(format!(
            "X-Amz-Log-Type {other:?} is not one of None, Tail"
        ))),
    }
}

/// The function a `{name}` path segment names: `NAME`, `NAME:QUALIFIER` or
/// `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`, with the `?Qualifier=` of the
/// query: the name and the qualifier (`None` for `$LATEST`).
pub fn target_function<'a>(
    given: &'a str,
    query_qualifier: Option<&'a str>,
) -> Result<(&'a str, Option<&'a str>), AwsError> {
    let (name, qualifier) = if let Some(arn) = given.strip_prefix("arn:") {
        let parts: Vec<&str> = arn.split(':').collect();
        match parts.as_slice() {
            [
                partition,
                "lambda",
                _region,
                _account,
                "function",
                name,
                rest @ ..,
            ] if !partition.is_empty() && rest.len() <= 1 => (*name, rest.first().copied()),
            _ => {
                return Err(AwsError::invalid(format!(
                    "{given:?} is not a function ARN: expected \
                     arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER], or the function's \
                     name"
                )));
            }
        }
    } else {
        match given.split_once(':') {
            Some((name, q)) => (name, Some(q)),
            None => (given, None),
        }
    };
    crate::functions::validate_name(name)
        .map_err(|e| AwsError::invalid(format!("function name {name:?}: {}", e.message)))?;
    let query_qualifier = query_qualifier.filter(|q| !q.is_empty());
    let qualifier = match (qualifier, query_qualifier) {
        (Some(a), Some(b)) if a != b => {
            return Err(AwsError::invalid(format!(
                "The derived qualifier from the function name ({a}) does not match the \
                 specified qualifier ({b})"
            )));
        }
        (a, b) => a.or(b).filter(|q| !q.is_empty()),
    };
    Ok((name, qualifier.filter(|q| *q != "$LATEST")))
}

#[derive(Debug, Deserialize)]
pub struct InvokeQuery {
    #[serde(rename = "Qualifier")]
    pub qualifier: Option<String>,
}

async fn invoke(
    State(app): State<Arc<App>>,
    axum::Extension(RequestId(id)): axum::Extension<RequestId>,
    Path(given): Path<String>,
    query: Result<Query<InvokeQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| AwsError::invalid(e.body_text()))?;
        let (name, qualifier) = target_function(&given, q.qualifier.as_deref())?;
        let kind = InvocationType::parse(&headers)?;
        let tail = wants_tail(&headers)?;
        let event = body.map_err(|e| body_error(&e))?;
        let target = crate::versions::resolve(&app, name, qualifier).map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                not_found(&given, &e.message)
            } else {
                AwsError::from(e)
            }
        })?;
        match kind {
            InvocationType::RequestResponse => {
                Ok(request_response(&app, name, &target, &id, event, tail).await)
            }
            InvocationType::Event => queue_event(&app, name, target, &id, event).await,
            InvocationType::DryRun => dry_run(&app, name).await,
        }
    }
    .await;
    result.unwrap_or_else(|e| {
        tracing::debug!(function = %given, request_id = %id, error = %e.message, "lambda invoke failed");
        e.into_response()
    })
}

async fn request_response(
    app: &Arc<App>,
    name: &str,
    target: &crate::versions::Target,
    id: &str,
    event: Bytes,
    tail: bool,
) -> Response {
    let invoked = app
        .pool
        .invoke_via(&target.key, target.alias.as_deref(), id, event)
        .await;
    let (body, content_type, function_error) = match invoked {
        Ok(inv) => (
            inv.body,
            inv.headers.get(CONTENT_TYPE).cloned(),
            matches!(inv.outcome, Outcome::FunctionError { .. }),
        ),
        Err(e) => match failure_of(e, id) {
            Failure::Function {
                error_type,
                message,
            } => {
                let body = serde_json::json!({"errorMessage": message, "errorType": error_type});
                (
                    Bytes::from(body.to_string()),
                    Some(HeaderValue::from_static("application/json")),
                    true,
                )
            }
            Failure::Service(e) => return e.into_response(),
        },
    };
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    if let Some(t) = content_type {
        h.insert(CONTENT_TYPE, t);
    }
    h.insert(
        EXECUTED_VERSION,
        match target.version {
            Some(v) => HeaderValue::from(v),
            None => HeaderValue::from_static("$LATEST"),
        },
    );
    if function_error {
        h.insert(FUNCTION_ERROR, HeaderValue::from_static("Unhandled"));
    }
    if tail && let Some(v) = log_result(app, name, id).await {
        h.insert(LOG_RESULT, v);
    }
    resp
}

/// The end of an invocation's log lines (message text, one a line), base64: `X-Amz-Log-Result`.
async fn log_result(app: &Arc<App>, name: &str, id: &str) -> Option<HeaderValue> {
    let logs = app.logs.clone();
    let function = name.to_string();
    let entries =
        crate::blocking(move || logs.read_from::<LogEntry>(&function, LogFile::Log, None))
            .await
            .map_err(|e| tracing::warn!(function = %name, error = %e.message, "log tail"))
            .ok()?
            .0;
    let mut text = String::new();
    for e in crate::logs::lines_of_request(entries, id) {
        text.push_str(&e.message);
        text.push('\n');
    }
    let tail = last_bytes(&text, LOG_RESULT_BYTES);
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(tail)).ok()
}

/// At most the last `n` bytes of `text`, starting on a character boundary.
fn last_bytes(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

async fn require_function(
    app: &Arc<App>,
    name: &str,
) -> Result<wharf_store::FunctionRecord, AwsError> {
    let record = crate::blocking({
        let (store, name) = (app.store.clone(), name.to_string());
        move || store.get_function(&name)
    })
    .await?;
    record.ok_or_else(|| function_not_found(name))
}

fn function_not_found(name: &str) -> AwsError {
    not_found(name, &format!("deploy it with PUT /v1/functions/{name}"))
}

/// Lambda's words for a function, version or alias that is not there, and Wharf's hint.
fn not_found(given: &str, hint: &str) -> AwsError {
    AwsError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        format!("Function not found: {given} ({hint})"),
    )
}

/// `DryRun`: the function exists and its image is in the local store (a `prepull: false`
/// function's image is pulled by its first call instead). No instance is started.
async fn dry_run(app: &Arc<App>, name: &str) -> Result<Response, AwsError> {
    let record = require_function(app, name).await?;
    let images = app.images.clone();
    let pinned = record.image_pinned.clone();
    let local = crate::blocking(move || images.get(&pinned)).await?;
    if local.is_none() && record.prepull {
        return Err(AwsError::new(
            StatusCode::BAD_GATEWAY,
            "ResourceNotReadyException",
            format!(
                "function {name}: its image {} is not in the local image store: deploy the \
                 function again (PUT /v1/functions/{name}) to pull it",
                record.image_pinned
            ),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn queue_event(
    app: &Arc<App>,
    name: &str,
    target: crate::versions::Target,
    id: &str,
    event: Bytes,
) -> Result<Response, AwsError> {
    if event.len() > MAX_ASYNC_EVENT_BYTES {
        return Err(too_large(
            MAX_ASYNC_EVENT_BYTES,
            "an asynchronous (Event) invocation",
        ));
    }
    require_function(app, name).await?;
    app.events.submit(
        &app.pool,
        QueuedEvent {
            function: target.key,
            alias: target.alias,
            request_id: id.to_string(),
            event,
        },
    )?;
    Ok(StatusCode::ACCEPTED.into_response())
}

struct QueuedEvent {
    /// The pool's key: the function, or one of its versions.
    function: String,
    alias: Option<String>,
    request_id: String,
    event: Bytes,
}

/// The daemon's queue of `Event` invocations: bounded ([`EVENT_QUEUE_DEPTH`]), run in the
/// background, [`EVENT_CONCURRENCY`] at a time. Their results are what the pool records of every
/// call (`GET /v1/functions/{name}/invocations`, the log's START/END/REPORT lines); there are no
/// retries and no destinations. Events still queued when the daemon stops are dropped.
#[derive(Default)]
pub struct EventQueue {
    /// Made, with its worker, by the first `Event` call (inside the runtime).
    tx: OnceLock<mpsc::Sender<QueuedEvent>>,
}

impl EventQueue {
    fn submit(&self, pool: &Pool, event: QueuedEvent) -> Result<(), AwsError> {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(EVENT_QUEUE_DEPTH);
            tokio::spawn(run_events(pool.clone(), rx));
            tx
        });
        tx.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => AwsError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                format!(
                    "Rate Exceeded: {EVENT_QUEUE_DEPTH} asynchronous invocations are already \
                     queued; retry later"
                ),
            ),
            mpsc::error::TrySendError::Closed(_) => AwsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceException",
                "the asynchronous invocation queue has stopped (wharf is shutting down)",
            ),
        })
    }
}

async fn run_events(pool: Pool, mut rx: mpsc::Receiver<QueuedEvent>) {
    let slots = Arc::new(Semaphore::new(EVENT_CONCURRENCY));
    while let Some(ev) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let pool = pool.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // The pool records the outcome (and writes the log lines) of every call.
            let invoked =
                pool.invoke_via(&ev.function, ev.alias.as_deref(), &ev.request_id, ev.event);
            if let Err(e) = invoked.await {
                tracing::info!(function = %ev.function, request_id = %ev.request_id, error = %e, "asynchronous invocation failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn function_names_arns_and_qualifiers() {
        let latest = ("hello", None);
        assert_eq!(target_function("hello", None).unwrap(), latest);
        assert_eq!(target_function("hello", Some("")).unwrap(), latest);
        assert_eq!(target_function("hello", Some("$LATEST")).unwrap(), latest);
        assert_eq!(target_function("hello:$LATEST", None).unwrap(), latest);
        assert_eq!(
            target_function("arn:aws:lambda:us-east-1:123456789012:function:hello", None).unwrap(),
            latest
        );
        assert_eq!(
            target_function(
                "arn:aws:lambda:eu-west-1:1:function:hello:$LATEST",
                Some("$LATEST")
            )
            .unwrap(),
            latest
        );
        assert_eq!(
            target_function("hello", Some("3")).unwrap(),
            ("hello", Some("3"))
        );
        assert_eq!(
            target_function("arn:aws:lambda:r:1:function:hello:prod", None).unwrap(),
            ("hello", Some("prod"))
        );
        for bad in [
            "arn:aws:lambda:us-east-1:1:layer:hello",
            "arn:aws:s3:::bucket",
            "arn:aws:lambda:r:a:function:hello:1:2",
            "arn::lambda:r:a:function:hello",
        ] {
            let e = target_function(bad, None).unwrap_err();
            assert_eq!(e.name, "InvalidParameterValueException", "{bad}");
            assert!(e.message.contains("ARN"), "{bad}: {}", e.message);
        }
        let e = target_function("hello:1", Some("2")).unwrap_err();
        assert!(e.message.contains("does not match"), "{}", e.message);
        let e = target_function("he llo", None).unwrap_err();
        assert_eq!(e.name, "InvalidParameterValueException");
    }

    #[test]
    fn invocation_and_log_types() {
        let mut h = HeaderMap::new();
        assert_eq!(
            InvocationType::parse(&h).unwrap(),
            InvocationType::RequestResponse
        );
        assert!(!wants_tail(&h).unwrap());
        h.insert(INVOCATION_TYPE, HeaderValue::from_static("DryRun"));
        h.insert(LOG_TYPE, HeaderValue::from_static("Tail"));
        assert_eq!(InvocationType::parse(&h).unwrap(), InvocationType::DryRun);
        assert!(wants_tail(&h).unwrap());
        h.insert(INVOCATION_TYPE, HeaderValue::from_static("Async"));
        h.insert(LOG_TYPE, HeaderValue::from_static("All"));
        let e = InvocationType::parse(&h).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains("RequestResponse, Event, DryRun"),
            "{}",
            e.message
        );
        assert!(wants_tail(&h).is_err());
    }

    fn function_failure(e: InvokeError) -> (&'static str, String) {
        match failure_of(e, "rid") {
            Failure::Function {
                error_type,
                message,
            } => (error_type, message),
            Failure::Service(e) => panic!("not a function failure: {e:?}"),
        }
    }

    fn service_failure(e: InvokeError) -> (StatusCode, &'static str) {
        match failure_of(e, "rid") {
            Failure::Service(e) => {
                assert!(!e.message.is_empty());
                (e.status, e.name)
            }
            f => panic!("not a service failure: {f:?}"),
        }
    }

    #[test]
    fn function_failures_answer_like_lambda() {
        let (t, m) = function_failure(InvokeError::Timeout {
            name: "f".into(),
            instance: "f-1".into(),
            timeout: Duration::from_secs(3),
        });
        assert_eq!(t, "Sandbox.Timedout");
        assert!(
            m.starts_with("RequestId: rid Error: Task timed out after 3.00 seconds"),
            "{m}"
        );
        let (t, m) = function_failure(InvokeError::Crashed {
            name: "f".into(),
            instance: "f-1".into(),
            exit: Some(ExitInfo::Exited(3)),
            output: String::new(),
        });
        assert_eq!(t, "Runtime.ExitError");
        assert!(
            m.contains("Runtime exited with error: exit status 3"),
            "{m}"
        );
        let (t, m) = function_failure(InvokeError::OutOfMemory {
            name: "f".into(),
            instance: "f-1".into(),
            limit_mb: 128,
            peak_mb: Some(128),
        });
        assert_eq!(t, "Runtime.OutOfMemory");
        assert!(
            m.contains("signal: killed") && m.contains("limit is 128 MB"),
            "{m}"
        );
        let (t, _) = function_failure(InvokeError::NoCommand {
            name: "f".into(),
            image: "i".into(),
        });
        assert_eq!(t, "Runtime.InvalidEntrypoint");
        let (t, _) = function_failure(InvokeError::ResponseTooLarge {
            name: "f".into(),
            limit: 10,
        });
        assert_eq!(t, "Function.ResponseSizeTooLarge");
        let (t, _) = function_failure(InvokeError::NotStarted {
            name: "f".into(),
            port: 9000,
            message: "nothing listened".into(),
        });
        assert_eq!(t, "Runtime.Unknown");
    }

    #[test]
    fn failures_before_the_function_are_lambda_exceptions() {
        assert_eq!(
            service_failure(InvokeError::FunctionNotFound { name: "f".into() }),
            (StatusCode::NOT_FOUND, "ResourceNotFoundException")
        );
        assert_eq!(
            service_failure(InvokeError::TooManyInstances {
                name: "f".into(),
                max: 2
            }),
            (StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException")
        );
        assert_eq!(
            service_failure(InvokeError::ShuttingDown),
            (StatusCode::SERVICE_UNAVAILABLE, "ServiceException")
        );
        assert_eq!(
            service_failure(InvokeError::Internal {
                name: "f".into(),
                reason: "x".into()
            }),
            (StatusCode::INTERNAL_SERVER_ERROR, "ServiceException")
        );
    }

    #[tokio::test]
    async fn errors_have_lambda_s_shape() {
        let resp = AwsError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            "Function not found: f",
        )
        .into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            resp.headers()["x-amzn-errortype"],
            "ResourceNotFoundException"
        );
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"Type": "User", "message": "Function not found: f"})
        );
    }

    #[test]
    fn the_log_tail_is_cut_on_a_character() {
        assert_eq!(last_bytes("abc", 10), "abc");
        assert_eq!(last_bytes("abcdef", 3), "def");
        assert_eq!(last_bytes("aé", 1), "");
        assert_eq!(last_bytes("aéb", 2), "b");
    }
}
