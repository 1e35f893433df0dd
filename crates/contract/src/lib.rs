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

mod fc;
mod functiongraph;
mod scf;

pub use fc::Fc;
pub use functiongraph::FunctionGraph;
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
}

impl ContractKind {
    pub const SUPPORTED: &'static [&'static str] = &["fc", "functiongraph", "scf"];
    const PLANNED: &'static [&'static str] = &["lambda", "http"];

    pub fn as_str(self) -> &'static str {
        match self {
            ContractKind::Fc => "fc",
            ContractKind::Functiongraph => "functiongraph",
            ContractKind::Scf => "scf",
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

/// Response headers that describe the connection or the framing of the instance's answer, not
/// the function's result: never passed on to the caller.
pub(crate) const HOP_BY_HOP: &[&str] = &[
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
    }
}

/// What an adapter needs to know about the function it talks for. Built by the pool once per
/// function revision.
#[derive(Clone, Debug)]
pub struct FunctionContext {
    pub name: String,
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

/// What an adapter prepares once per function revision.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The request that carries an event.
    pub invoke: RequestTemplate,
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
///   the initialize hook and the invocation, [`log_marker`](Contract::log_marker);
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
        let e = "lambda".parse::<ContractKind>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "contract `lambda` is not supported yet; supported: fc, functiongraph, scf"
        );
        let e = "soap".parse::<ContractKind>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown contract `soap`; supported: fc, functiongraph, scf"
        );
        for kind in [
            ContractKind::Fc,
            ContractKind::Functiongraph,
            ContractKind::Scf,
        ] {
            assert_eq!(kind.as_str().parse::<ContractKind>(), Ok(kind));
            assert_eq!(adapter(kind).kind(), kind);
        }
    }
}
