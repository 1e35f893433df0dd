//! The Lambda Runtime API (`/2018-06-01`), served by the pool inside each instance of a
//! contract whose image pulls its work ([`Contract::pulls_work`](wharf_contract::Contract)).
//!
//! The listener is bound inside the instance's network namespace before its process starts
//! (`InstanceSpec::listen`), so the runtime client can connect as its first act. The client
//! asks for work with `GET /runtime/invocation/next`, which waits until an invocation comes
//! (no timeout, as on Lambda); it answers with `POST /runtime/invocation/{id}/response` or
//! `/error`, and reports a failed init with `POST /runtime/init/error`.
//!
//! To the pool an invocation is an exchange like any other ([`RuntimeApi::exchange`]): the
//! contract's request (event as body, request id and ARN in headers) is queued for the next
//! `/next`, and the client's answer comes back as a 200 response — with
//! `Lambda-Runtime-Function-Error-Type` set when it was an error — that the contract classifies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;
use wharf_contract::ContractRequest;
use wharf_contract::lambda::{ARN_HEADER, ERROR_TYPE_HEADER, REQUEST_ID_HEADER};

use crate::connection::ExchangeError;

/// Largest response or error a runtime client may post (Lambda's synchronous payload limit).
pub const MAX_RESULT_BYTES: usize = 6 * 1024 * 1024;
const PREFIX: &str = "/2018-06-01/runtime";

/// What the client said about its init.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    Waiting,
    /// It asked for work.
    Ready,
    /// It posted `/init/error`: the error type and message.
    InitFailed(String),
}

/// An invocation on its way to the client.
struct Work {
    request_id: String,
    arn: HeaderValue,
    deadline_ms: u64,
    event: Bytes,
    answer: oneshot::Sender<Result<Answer, ExchangeError>>,
}

struct Answer {
    body: Bytes,
    error_type: Option<HeaderValue>,
}

struct Shared {
    work: tokio::sync::Mutex<mpsc::Receiver<Work>>,
    /// Invocations the client took and has not answered, by request id.
    taken: Mutex<HashMap<String, oneshot::Sender<Result<Answer, ExchangeError>>>>,
    readiness: watch::Sender<Readiness>,
    stop: CancellationToken,
    timeout: Duration,
}

/// One instance's Runtime API.
pub(crate) struct RuntimeApi {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Work>,
}

impl RuntimeApi {
    /// Serves the API on `listener` (tasks on `tasks`) until [`stop`](Self::stop).
    /// `timeout` is the function's: each invocation's deadline is that far from when the
    /// client takes it.
    pub fn serve(listener: TcpListener, tasks: &TaskTracker, timeout: Duration) -> RuntimeApi {
        let (queue, work) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            work: tokio::sync::Mutex::new(work),
            taken: Mutex::new(HashMap::new()),
            readiness: watch::channel(Readiness::Waiting).0,
            stop: CancellationToken::new(),
            timeout,
        });
        let accept = shared.clone();
        let conns = tasks.clone();
        tasks.spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            debug!(error = %e, "runtime API accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = accept.stop.cancelled() => return,
                };
                let shared = accept.clone();
                conns.spawn(async move {
                    let stop = shared.stop.clone();
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let conn =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        RuntimeApi { shared, queue }
    }

    /// Waits until the client asks for work or reports a failed init.
    pub async fn ready(&self) -> Readiness {
        let mut rx = self.shared.readiness.subscribe();
        match rx.wait_for(|r| *r != Readiness::Waiting).await {
            Ok(r) => r.clone(),
            Err(_) => Readiness::Waiting,
        }
    }

    /// Hands `req` to the client and waits for its answer.
    pub async fn exchange(
        &self,
        req: ContractRequest,
    ) -> Result<(http::response::Parts, Bytes), ExchangeError> {
        let (parts, body) = req.into_parts();
        let event = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let request_id = parts
            .headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let arn = parts
            .headers
            .get(ARN_HEADER)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(""));
        let (answer, answered) = oneshot::channel();
        let deadline = SystemTime::now() + self.shared.timeout;
        let work = Work {
            request_id,
            arn,
            deadline_ms: crate::report::unix_ms(deadline),
            event,
            answer,
        };
        self.queue
            .send(work)
            .await
            .map_err(|_| ExchangeError::Broken("the Runtime API has stopped".into()))?;
        let answer = answered.await.map_err(|_| {
            ExchangeError::Broken("the runtime client went away without answering".into())
        })??;
        let mut resp = Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(t) = answer.error_type {
            resp = resp.header(ERROR_TYPE_HEADER, t);
        }
        let (parts, ()) = resp.body(()).expect("a valid response head").into_parts();
        Ok((parts, answer.body))
    }

    /// Stops serving: open connections close, a waiting `/next` ends.
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Lambda's error body for the client.
fn client_error(status: StatusCode, error_type: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"errorType": error_type, "errorMessage": message});
    reply(status, body.to_string())
}

const ACCEPTED: &str = r#"{"status":"OK"}"#;

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return client_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such Runtime API path",
        );
    };
    match (req.method(), rest) {
        (&Method::GET, "/invocation/next") => next(shared).await,
        (&Method::POST, "/init/error") => {
            let body = read_body(req).await.unwrap_or_default();
            let why = describe_error(&body);
            shared.readiness.send_replace(Readiness::InitFailed(why));
            reply(StatusCode::ACCEPTED, ACCEPTED)
        }
        (&Method::POST, rest) => {
            let Some((id, what)) = rest
                .strip_prefix("/invocation/")
                .and_then(|r| r.rsplit_once('/'))
            else {
                return client_error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "no such Runtime API path",
                );
            };
            let error_type = match what {
                "response" => None,
                "error" => Some(
                    req.headers()
                        .get("lambda-runtime-function-error-type")
                        .cloned()
                        .unwrap_or_else(|| HeaderValue::from_static("Unhandled")),
                ),
                _ => {
                    return client_error(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        "no such Runtime API path",
                    );
                }
            };
            let Some(answer) = shared
                .taken
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id)
            else {
                return client_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestID",
                    "no invocation with this request id is waiting for an answer",
                );
            };
            match read_body(req).await {
                Ok(body) => {
                    // awslambdaric sends `Unhandled` in the header and the exception's type in
                    // the body: the body's says more.
                    let error_type =
                        error_type.map(|header| error_type_of(&body).unwrap_or(header));
                    let _ = answer.send(Ok(Answer { body, error_type }));
                    reply(StatusCode::ACCEPTED, ACCEPTED)
                }
                Err(BodyError::TooLarge) => {
                    let _ = answer.send(Err(ExchangeError::TooLarge));
                    client_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestEntityTooLarge",
                        &format!(
                            "the response is larger than the limit of {MAX_RESULT_BYTES} bytes"
                        ),
                    )
                }
                Err(BodyError::Broken(e)) => {
                    let _ = answer.send(Err(ExchangeError::Broken(format!(
                        "the runtime client's answer broke off: {e}"
                    ))));
                    client_error(StatusCode::BAD_REQUEST, "InvalidRequest", &e)
                }
            }
        }
        _ => client_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the Runtime API does not take this method here",
        ),
    }
}

/// `GET /invocation/next`: the next invocation, when there is one.
async fn next(shared: &Shared) -> Response<Full<Bytes>> {
    shared.readiness.send_if_modified(|r| {
        let first = *r == Readiness::Waiting;
        if first {
            *r = Readiness::Ready;
        }
        first
    });
    let work = {
        let mut queue = shared.work.lock().await;
        tokio::select! {
            work = queue.recv() => work,
            () = shared.stop.cancelled() => None,
        }
    };
    let Some(work) = work else {
        return client_error(
            StatusCode::GONE,
            "InstanceStopping",
            "the instance is being stopped",
        );
    };
    let mut r = reply(StatusCode::OK, work.event);
    let h = r.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&work.request_id) {
        h.insert(REQUEST_ID_HEADER, id);
    }
    h.insert(
        "lambda-runtime-deadline-ms",
        HeaderValue::from(work.deadline_ms),
    );
    h.insert(ARN_HEADER, work.arn);
    h.insert("lambda-runtime-trace-id", trace_id());
    shared
        .taken
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(work.request_id, work.answer);
    r
}

/// An X-Ray trace header, as Lambda sends one with every invocation (not sampled).
fn trace_id() -> HeaderValue {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let r: u128 = rand::random();
    let p: u64 = rand::random();
    let text = format!(
        "Root=1-{secs:08x}-{:024x};Parent={p:016x};Sampled=0",
        r & ((1 << 96) - 1)
    );
    HeaderValue::from_str(&text).expect("hex digits")
}

enum BodyError {
    TooLarge,
    Broken(String),
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, BodyError> {
    match Limited::new(req.into_body(), MAX_RESULT_BYTES)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Broken(e.to_string())),
    }
}

/// The `errorType` of a Lambda error body, when it has one.
fn error_type_of(body: &[u8]) -> Option<HeaderValue> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    HeaderValue::from_str(v.get("errorType")?.as_str()?).ok()
}

/// `errorType: errorMessage` of a Lambda error body, or the body itself.
fn describe_error(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match (v["errorType"].as_str(), v["errorMessage"].as_str()) {
        (Some(t), Some(m)) => format!("{t}: {m}"),
        (Some(t), None) => t.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned(),
    }
}
