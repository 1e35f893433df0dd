//! Contracts: how Wharf talks to the server inside a function image, one adapter per dialect
//! (`../shared/CONTRACTS.md`).
//!
//! A contract knows the wire: the port and start deadline, the environment it promises the
//! image, the lifecycle hooks, how an event becomes an HTTP request with the vendor's headers, and
//! how a response is recognised as a success or a function error. It knows nothing about scaling
//! or storage; the pool drives it through the [`Contract`] trait, whose methods are called at the
//! points of an instance's life that each method documents.
//!
//! Adapters build plain `http::Request`s; the pool owns the connections. That keeps every adapter
//! a pure function of its inputs, unit-testable without a network.

pub mod apigw;
mod fc;
mod functiongraph;
mod http_plain;
pub mod lambda;
mod scf;

pub use fc::Fc;
pub use functiongraph::FunctionGraph;
pub use http_plain::Http;
pub use lambda::Lambda;
pub use scf::Scf;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

/// The request type adapters produce: a complete body, ready to send.
pub type ContractRequest = Request<Full<Bytes>>;

/// The dialects Wharf speaks. The names of those not implemented yet are recognised, so that the
/// error says they are not supported yet rather than that they are unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContractKind {
    Fc,
    Functiongraph,
    Scf,
    Http,
    Lambda,
}

impl ContractKind {
    pub const SUPPORTED: &'static [&'static str] =
        &["fc", "functiongraph", "scf", "http", "lambda"];
    const PLANNED: &'static [&'static str] = &[];

    pub fn as_str(self) -> &'static str {
        match self {
            ContractKind::Fc => "fc",
            ContractKind::Functiongraph => "functiongraph",
            ContractKind::Scf => "scf",
            ContractKind::Http => "http",
            ContractKind::Lambda => "lambda",
        }
    }
}

/// How a function is called: with events (the contract's invoke request carries each), as an
/// HTTP server that gets its callers' requests passed through (FC's HTTP functions, SCF's web
/// functions, FunctionGraph's HTTP functions, every `http` function), or as a job: an image with
/// no server, run once per event (given in the contract's variable) until it exits (FC's and
/// SCF's no-server mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionMode {
    #[default]
    Event,
    Http,
    Job,
}

impl FunctionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionMode::Event => "event",
            FunctionMode::Http => "http",
            FunctionMode::Job => "job",
        }
    }
}

impl fmt::Display for FunctionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FunctionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "event" => Ok(FunctionMode::Event),
            "http" => Ok(FunctionMode::Http),
            "job" => Ok(FunctionMode::Job),
            other => Err(format!(
                "unknown mode `{other}`; use `event`, `http` or `job`"
            )),
        }
    }
}

impl fmt::Display for ContractKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseContractError {
    #[error("contract `{0}` is not supported yet; supported: {supported}", supported = ContractKind::SUPPORTED.join(", "))]
    NotYetSupported(String),
    #[error("unknown contract `{0}`; supported: {supported}", supported = ContractKind::SUPPORTED.join(", "))]
    Unknown(String),
}

impl FromStr for ContractKind {
    type Err = ParseContractError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fc" => Ok(ContractKind::Fc),
            "functiongraph" => Ok(ContractKind::Functiongraph),
            "scf" => Ok(ContractKind::Scf),
            "http" => Ok(ContractKind::Http),
            "lambda" => Ok(ContractKind::Lambda),
            other if ContractKind::PLANNED.contains(&other) => {
                Err(ParseContractError::NotYetSupported(other.to_string()))
            }
            other => Err(ParseContractError::Unknown(other.to_string())),
        }
    }
}

/// A header value from something Wharf built (validated names, numbers); never fails.
pub(crate) fn header(v: impl ToString) -> http::HeaderValue {
    http::HeaderValue::from_str(&v.to_string())
        .unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// Headers that describe a connection or the framing of a message, not its content: never passed
/// on, neither from a caller to a function nor from a function to its caller.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The rule of contracts that document only "a valid HTTP response" (FunctionGraph, SCF): a 2xx
/// answer is a success, anything else a function error, its status and body kept.
pub(crate) fn status_outcome(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Success
    } else {
        Outcome::FunctionError {
            reason: format!("the function answered with status {}", status.as_u16()),
        }
    }
}

/// A hook of such a contract: a 2xx succeeded, anything else failed.
pub(crate) fn status_hook_outcome(status: StatusCode) -> HookOutcome {
    if status.is_success() {
        HookOutcome::Success
    } else {
        HookOutcome::Failed { status }
    }
}

/// What an instance printed, for an error message: trimmed, or a note that it printed nothing.
pub fn printed(output: &str) -> &str {
    match output.trim_end() {
        "" => "(the instance printed nothing)",
        text => text,
    }
}

/// The adapter for a contract.
pub fn adapter(kind: ContractKind) -> Arc<dyn Contract> {
    match kind {
        ContractKind::Fc => Arc::new(Fc),
        ContractKind::Functiongraph => Arc::new(FunctionGraph),
        ContractKind::Scf => Arc::new(Scf),
        ContractKind::Http => Arc::new(Http),
        ContractKind::Lambda => Arc::new(Lambda),
    }
}

/// What an adapter needs to know about the function it talks for. Built by the pool once per
/// function revision.
#[derive(Clone, Debug)]
pub struct FunctionContext {
    pub name: String,
    /// Increases with every update of the function (Knative's `K_REVISION` is named after it).
    pub revision: u64,
    pub mode: FunctionMode,
    pub memory_mb: u32,
    pub timeout: Duration,
    /// The initialize hook's timeout, when the function has an initializer.
    pub initializer_timeout: Option<Duration>,
    /// The pre-freeze hook's timeout, when the function has one.
    pub pre_freeze_timeout: Option<Duration>,
    /// The pre-stop hook's timeout, when the function has one.
    pub pre_stop_timeout: Option<Duration>,
    /// The port the function's server listens on inside its instance.
    pub port: u16,
    /// Alias or `LATEST`.
    pub qualifier: String,
    /// Published version, or `LATEST`.
    pub version: String,
    pub region: String,
    pub account_id: String,
}

/// A request that is the same for every call of a function revision but for its request id and
/// body: built once per revision ([`Contract::prepare`]), stamped per call.
#[derive(Clone, Debug)]
pub struct RequestTemplate {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    /// The header that carries the request id, if the contract sends one.
    pub request_id_header: Option<http::HeaderName>,
}

impl RequestTemplate {
    /// The same request at another path.
    pub fn at(mut self, path: &'static str) -> RequestTemplate {
        self.uri = http::Uri::from_static(path);
        self
    }

    /// The request for one call: the template's headers, this call's id and body.
    pub fn request(&self, request_id: &str, body: Bytes) -> ContractRequest {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        let mut headers = self.headers.clone();
        if let Some(name) = &self.request_id_header
            && let Ok(value) = http::HeaderValue::from_str(request_id)
        {
            headers.insert(name.clone(), value);
        }
        *req.headers_mut() = headers;
        req
    }
}

/// A caller's HTTP request for an HTTP function, passed through by [`pass_through`].
#[derive(Clone, Debug)]
pub struct HttpCall {
    pub method: http::Method,
    /// The path and query the function sees (the trigger's prefix already taken off).
    pub path_and_query: http::uri::PathAndQuery,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The caller's address, for `Forwarded` / `X-Forwarded-For`.
    pub client: Option<std::net::IpAddr>,
}

/// The request that passes `call` through to an HTTP function: the caller's method, path, query,
/// headers (but for the hop-by-hop ones and Wharf's token) and body; the contract's own headers
/// from `template` (they win over a caller's of the same name); this call's request id; and
/// `Forwarded`, `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`, so that the
/// server knows who called it and how, as behind any reverse proxy.
pub fn pass_through(
    template: &RequestTemplate,
    request_id: &str,
    call: HttpCall,
) -> ContractRequest {
    use http::header::{CONTENT_TYPE, HOST};
    let mut headers = HeaderMap::with_capacity(call.headers.len() + template.headers.len() + 4);
    for (name, value) in &call.headers {
        // Wharf's token is not the function's business either.
        if !HOP_BY_HOP.contains(&name.as_str()) && name != http::header::AUTHORIZATION {
            headers.append(name.clone(), value.clone());
        }
    }
    let host = headers.get(HOST).cloned();
    for (name, value) in &template.headers {
        // The caller's body, the caller's type; the caller's Host, as a proxy keeps it.
        if name == CONTENT_TYPE || (name == HOST && host.is_some()) {
            continue;
        }
        headers.insert(name.clone(), value.clone());
    }
    if let Some(name) = &template.request_id_header
        && let Ok(value) = http::HeaderValue::from_str(request_id)
    {
        headers.insert(name.clone(), value);
    }
    let client = call.client.map(|ip| ip.to_string());
    let host_text = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let mut forwarded = Vec::with_capacity(3);
    if let Some(ip) = &call.client {
        forwarded.push(match ip {
            std::net::IpAddr::V4(v4) => format!("for={v4}"),
            std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        });
    }
    forwarded.push("proto=http".to_string());
    if let Some(h) = host_text
        .as_deref()
        .filter(|h| !h.contains(['"', '\\', ';', ',']))
    {
        forwarded.push(format!("host={h}"));
    }
    headers.append(http::header::FORWARDED, header(forwarded.join(";")));
    if let Some(ip) = client {
        let xff = http::HeaderName::from_static("x-forwarded-for");
        let chain = match headers.get(&xff).and_then(|v| v.to_str().ok()) {
            Some(before) if !before.trim().is_empty() => format!("{before}, {ip}"),
            _ => ip,
        };
        headers.insert(xff, header(chain));
    }
    headers.insert(
        http::HeaderName::from_static("x-forwarded-proto"),
        http::HeaderValue::from_static("http"),
    );
    if let Some(h) = host {
        headers.insert(http::HeaderName::from_static("x-forwarded-host"), h);
    }
    let mut req = Request::new(Full::new(call.body));
    *req.method_mut() = call.method;
    *req.uri_mut() = http::Uri::from(call.path_and_query);
    *req.headers_mut() = headers;
    req
}

/// The `invoke` and `http` requests of a function in `mode`: an event function's invoke request
/// is `event`; an HTTP function has `http` (the contract's headers for every passed-through
/// call), and its events go as `POST /` with the same headers.
pub(crate) fn for_mode(
    mode: FunctionMode,
    event: impl FnOnce() -> RequestTemplate,
    http: impl FnOnce() -> RequestTemplate,
) -> (RequestTemplate, Option<RequestTemplate>) {
    match mode {
        // A job gets its event in a variable; the request is never sent.
        FunctionMode::Event | FunctionMode::Job => (event(), None),
        FunctionMode::Http => {
            let t = http().at("/");
            (t.clone(), Some(t))
        }
    }
}

/// The outcome of an HTTP function's answer: its status is the caller's business (a 404 is an
/// answer, not a failure), but a 5xx is a failure to any user, so it is recorded as a function
/// error — and still passed on as the function sent it.
pub fn classify_http(status: StatusCode) -> Outcome {
    if status.is_server_error() {
        Outcome::FunctionError {
            reason: format!("the function answered with status {}", status.as_u16()),
        }
    } else {
        Outcome::Success
    }
}

/// What an adapter prepares once per function revision.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The request that carries an event (for an HTTP function: `POST /` with the event as body).
    pub invoke: RequestTemplate,
    /// For an HTTP function: the headers every passed-through call gets ([`pass_through`]).
    pub http: Option<RequestTemplate>,
    /// The initialize hook's request, if the function has an initializer.
    pub initialize: Option<RequestTemplate>,
    /// The pre-freeze hook's request (before an idle instance is frozen), if configured.
    pub pre_freeze: Option<RequestTemplate>,
    /// The pre-stop hook's request (before an instance gets SIGTERM), if configured.
    pub pre_stop: Option<RequestTemplate>,
}

/// The lifecycle hooks a contract may call on an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Once per instance, before its first invocation.
    Initialize,
    /// Before an idle instance is frozen.
    PreFreeze,
    /// Before an instance is stopped.
    PreStop,
}

impl Hook {
    /// The function field that configures the hook.
    pub fn field(self) -> &'static str {
        match self {
            Hook::Initialize => "initializer",
            Hook::PreFreeze => "pre_freeze",
            Hook::PreStop => "pre_stop",
        }
    }
}

/// Points of an invocation at which a vendor writes a line of its own into the function's log
/// (besides the `START`/`END`/`REPORT` lines Wharf writes for every contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogPoint {
    InitializeStart,
    InitializeEnd,
    InvokeStart,
    InvokeEnd,
}

/// How the function answered an invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The function reported a failure (for `fc`: status 404 or `x-fc-status: 404`).
    FunctionError {
        reason: String,
    },
}

/// How an initialize (or other lifecycle) hook ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookOutcome {
    Success,
    /// Failed; the hook is tried again before the next invocation on this instance.
    Failed {
        status: StatusCode,
    },
    /// The instance asked to be restarted (500 from an `fc` hook).
    Restart,
}

/// One dialect. Lifecycle of the calls:
///
/// - once per function revision: [`default_port`](Contract::default_port),
///   [`start_deadline`](Contract::start_deadline), [`default_user`](Contract::default_user),
///   [`prepare`](Contract::prepare) (the requests, but for their id and body),
///   [`root_allowed`](Contract::root_allowed), [`read_only_rootfs`](Contract::read_only_rootfs),
///   [`supports_hook`](Contract::supports_hook) (also at deploy, to validate the function);
/// - once per instance, before it starts: [`environment`](Contract::environment);
/// - once per instance, after its server listens, until it succeeds: the prepared initialize
///   request, then [`classify_hook`](Contract::classify_hook);
/// - per invocation: the prepared invoke request, then [`classify`](Contract::classify) and
///   [`response_header_allowed`](Contract::response_header_allowed) for each header; around
///   the initialize hook and the invocation, [`log_marker`](Contract::log_marker); for a
///   call passed through to an HTTP function, [`check_http_call`](Contract::check_http_call)
///   first (before an instance is taken), then the prepared `http` headers ([`pass_through`]),
///   and [`classify_http`] instead of `classify`;
/// - before an idle instance is frozen, and before an instance is stopped: the prepared
///   pre-freeze and pre-stop requests (when configured), then
///   [`classify_hook`](Contract::classify_hook);
/// - when an instance never listens: [`not_started_message`](Contract::not_started_message).
///
/// No method blocks or does I/O.
pub trait Contract: Send + Sync + 'static {
    fn kind(&self) -> ContractKind;
    /// The port the server listens on when the function does not say.
    fn default_port(&self) -> u16;
    /// How long an instance may take to listen before the invocation fails.
    fn start_deadline(&self) -> Duration;
    /// The uid/gid instances run as when the function does not say; `None`: the image's `USER`.
    fn default_user(&self) -> Option<(u32, u32)>;
    /// Whether instances may run as root (uid 0). FunctionGraph's may not.
    fn root_allowed(&self) -> bool;
    /// Whether the image's files are read-only unless the function says otherwise (SCF: only
    /// `/tmp` is writable).
    fn read_only_rootfs(&self) -> bool;
    /// Whether the contract has `hook` (a function configuring another is refused at deploy).
    fn supports_hook(&self, hook: Hook) -> bool;
    /// Variables the contract promises the image, applied over the image's own environment
    /// and under the function's.
    fn environment(&self, f: &FunctionContext) -> Vec<(String, String)>;
    /// The requests of a function revision: everything but each call's id and body, built
    /// once so that a call only stamps them.
    fn prepare(&self, f: &FunctionContext) -> Prepared;
    fn classify_hook(&self, status: StatusCode) -> HookOutcome;
    /// Success or function error, from the response head.
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Outcome;
    /// Whether a response header of the function may be passed on to the caller.
    fn response_header_allowed(&self, name: &http::HeaderName) -> bool;
    /// The text of the error when nothing listened on `port` within `deadline`; `output` is the
    /// last thing the instance printed.
    fn not_started_message(&self, port: u16, deadline: Duration, output: &str) -> String;
    /// The vendor's own log line at `point` of the call `request_id`, if it writes one there
    /// (FC: `FC Invoke Start RequestId: …`).
    fn log_marker(&self, _point: LogPoint, _request_id: &str) -> Option<String> {
        None
    }
    /// The request header that tells the function which qualifier (alias) it was called by, if
    /// the contract has one: set per call, over the version's own value, when a call comes
    /// through an alias (FC: `x-fc-qualifier`).
    fn qualifier_header(&self) -> Option<http::HeaderName> {
        None
    }
    /// Whether the image has no server but a runtime client that pulls its work from an API
    /// Wharf serves inside the instance on the function's port (Lambda's Runtime API). The
    /// instance is then ready when the client first asks for work, not when something listens.
    fn pulls_work(&self) -> bool {
        false
    }
    /// The variable that carries a job's event, for a contract with a no-server mode (FC:
    /// `FC_CUSTOM_CONTAINER_EVENT`, SCF: `SCF_CUSTOM_CONTAINER_EVENT`); `None`: no job mode.
    fn job_event_variable(&self) -> Option<&'static str> {
        None
    }
    /// Whether a caller's request may be passed through to an HTTP function; `Err` says what is
    /// wrong with it (FC: its header and URL limits, no `x-fc-*` headers from callers).
    fn check_http_call(&self, _call: &HttpCall) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_parse_with_helpful_errors() {
        assert_eq!("fc".parse::<ContractKind>(), Ok(ContractKind::Fc));
        assert_eq!("scf".parse::<ContractKind>(), Ok(ContractKind::Scf));
        assert_eq!(
            "functiongraph".parse::<ContractKind>(),
            Ok(ContractKind::Functiongraph)
        );
        assert_eq!(
            ParseContractError::NotYetSupported("grpc".into()).to_string(),
            "contract `grpc` is not supported yet; supported: fc, functiongraph, scf, http, lambda"
        );
        let e = "soap".parse::<ContractKind>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown contract `soap`; supported: fc, functiongraph, scf, http, lambda"
        );
        for kind in [
            ContractKind::Fc,
            ContractKind::Functiongraph,
            ContractKind::Scf,
            ContractKind::Http,
            ContractKind::Lambda,
        ] {
            assert_eq!(kind.as_str().parse::<ContractKind>(), Ok(kind));
            assert_eq!(adapter(kind).kind(), kind);
        }
    }
}
