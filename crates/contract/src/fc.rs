//! Alibaba Function Compute custom container (`fc`), CONTRACTS.md §1.
//!
//! Event functions get `POST /invoke` with the event as an octet-stream body; the hooks are
//! `POST /initialize`, `GET /pre-freeze` and `GET /pre-stop`. Success is status 200, failure 404, and `x-fc-status` (when present)
//! overrides the status line — a server that cannot change its status code can still report an
//! error.

use std::time::Duration;

use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::{
    Contract, ContractKind, FunctionContext, Hook, HookOutcome, LogPoint, Outcome, Prepared,
    RequestTemplate, header,
};

/// The default `CAPort`.
pub const DEFAULT_PORT: u16 = 9000;
/// FC gives a server 120 s to listen.
pub const START_DEADLINE: Duration = Duration::from_secs(120);

/// The `fc` adapter.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fc;

const X_FC_STATUS: &str = "x-fc-status";

/// FC's limits on a caller's request to an HTTP function (CONTRACTS.md §1).
pub const MAX_REQUEST_HEADER_BYTES: usize = 8 * 1024;
pub const MAX_PATH_AND_QUERY_BYTES: usize = 4 * 1024;

/// Response headers FC does not let a function set (CONTRACTS.md §1), besides `x-fc-*`.
const RESERVED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "date",
    "keep-alive",
    "server",
    "transfer-encoding",
];

impl Fc {
    fn template(&self, f: &FunctionContext, method: Method, path: &'static str) -> RequestTemplate {
        let mut h = HeaderMap::with_capacity(16);
        h.insert(HOST, header(format_args!("127.0.0.1:{}", f.port)));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let pairs: [(&'static str, HeaderValue); 11] = [
            ("x-fc-function-name", header(&f.name)),
            ("x-fc-function-memory", header(f.memory_mb)),
            ("x-fc-function-timeout", header(f.timeout.as_secs())),
            ("x-fc-region", header(&f.region)),
            ("x-fc-account-id", header(&f.account_id)),
            ("x-fc-qualifier", header(&f.qualifier)),
            ("x-fc-version-id", header(&f.version)),
            // FC 2.0 groups functions in services; Wharf has none, the function is its own.
            ("x-fc-service-name", header(&f.name)),
            ("x-fc-retry-count", HeaderValue::from_static("0")),
            ("x-fc-control-path", HeaderValue::from_static(path)),
            (
                "x-fc-function-initializer",
                HeaderValue::from_static(if f.initializer_timeout.is_some() {
                    "initialize"
                } else {
                    ""
                }),
            ),
        ];
        for (name, value) in pairs {
            h.insert(HeaderName::from_static(name), value);
        }
        if let Some(t) = f.initializer_timeout {
            h.insert(
                HeaderName::from_static("x-fc-initialization-timeout"),
                header(t.as_secs()),
            );
        }
        RequestTemplate {
            method,
            uri: http::Uri::from_static(path),
            headers: h,
            request_id_header: Some(HeaderName::from_static("x-fc-request-id")),
        }
    }
}

impl Contract for Fc {
    fn kind(&self) -> ContractKind {
        ContractKind::Fc
    }

    fn default_port(&self) -> u16 {
        DEFAULT_PORT
    }

    fn start_deadline(&self) -> Duration {
        START_DEADLINE
    }

    fn default_user(&self) -> Option<(u32, u32)> {
        // FC runs as root unless the image sets USER.
        None
    }

    fn root_allowed(&self) -> bool {
        true
    }

    fn read_only_rootfs(&self) -> bool {
        false
    }

    fn supports_hook(&self, _hook: Hook) -> bool {
        true
    }

    fn environment(&self, f: &FunctionContext) -> Vec<(String, String)> {
        vec![
            ("FC_FUNCTION_NAME".into(), f.name.clone()),
            ("FC_FUNCTION_MEMORY_SIZE".into(), f.memory_mb.to_string()),
            ("FC_SERVER_PORT".into(), f.port.to_string()),
            ("FC_CUSTOM_LISTEN_PORT".into(), f.port.to_string()),
            ("FC_REGION".into(), f.region.clone()),
            ("FC_ACCOUNT_ID".into(), f.account_id.clone()),
            ("FC_QUALIFIER".into(), f.qualifier.clone()),
            ("FC_VERSION_ID".into(), f.version.clone()),
        ]
    }

    fn prepare(&self, f: &FunctionContext) -> Prepared {
        let (invoke, http) = crate::for_mode(
            f.mode,
            || self.template(f, Method::POST, "/invoke"),
            || self.template(f, Method::POST, "/http-invoke"),
        );
        Prepared {
            invoke,
            http,
            initialize: f
                .initializer_timeout
                .map(|_| self.template(f, Method::POST, "/initialize")),
            pre_freeze: f
                .pre_freeze_timeout
                .map(|_| self.template(f, Method::GET, "/pre-freeze")),
            pre_stop: f
                .pre_stop_timeout
                .map(|_| self.template(f, Method::GET, "/pre-stop")),
        }
    }

    fn classify_hook(&self, status: StatusCode) -> HookOutcome {
        match status {
            s if s.is_success() => HookOutcome::Success,
            StatusCode::INTERNAL_SERVER_ERROR => HookOutcome::Restart,
            status => HookOutcome::Failed { status },
        }
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
        let fc_status = headers.get(X_FC_STATUS).and_then(|v| v.to_str().ok());
        match fc_status {
            Some(s) if s.trim() == "200" => Outcome::Success,
            Some(s) => Outcome::FunctionError {
                reason: format!("the function answered with x-fc-status: {}", s.trim()),
            },
            None if status == StatusCode::NOT_FOUND => Outcome::FunctionError {
                reason: "the function answered with status 404".into(),
            },
            // FC documents 200 and 404 only; a 5xx from the server is a failure to any user, so
            // it is reported as a function error rather than passed off as a success.
            None if status.is_server_error() => Outcome::FunctionError {
                reason: format!("the function answered with status {}", status.as_u16()),
            },
            None => Outcome::Success,
        }
    }

    fn response_header_allowed(&self, name: &HeaderName) -> bool {
        let n = name.as_str();
        !n.starts_with("x-fc-") && !RESERVED_RESPONSE_HEADERS.contains(&n)
    }

    fn job_event_variable(&self) -> Option<&'static str> {
        Some("FC_CUSTOM_CONTAINER_EVENT")
    }

    fn not_started_message(&self, port: u16, deadline: Duration, output: &str) -> String {
        let logs = crate::printed(output);
        format!(
            "the function's HTTP server did not start: nothing listened on port {port} within \
             {}s. Make the server listen on 0.0.0.0:{port} (the function's port), or set the \
             function's port to the one it listens on. Logs: {logs}",
            deadline.as_secs_f64()
        )
    }

    fn qualifier_header(&self) -> Option<http::HeaderName> {
        Some(http::HeaderName::from_static("x-fc-qualifier"))
    }

    fn log_marker(&self, point: LogPoint, request_id: &str) -> Option<String> {
        let what = match point {
            LogPoint::InitializeStart => "Initialize Start",
            LogPoint::InitializeEnd => "Initialize End",
            LogPoint::InvokeStart => "Invoke Start",
            LogPoint::InvokeEnd => "Invoke End",
        };
        Some(format!("FC {what} RequestId: {request_id}"))
    }

    /// FC's rules for what a caller sends an HTTP function: `x-fc-*` headers are FC's own, the
    /// headers are at most 8 KB (names, values and their separators) and the path and query at
    /// most 4 KB.
    fn check_http_call(&self, call: &crate::HttpCall) -> Result<(), String> {
        if let Some(name) = call
            .headers
            .keys()
            .find(|n| n.as_str().starts_with("x-fc-"))
        {
            return Err(format!(
                "the request has header {name}: x-fc-* headers are set by the platform, a caller \
                 cannot send them; remove it"
            ));
        }
        let header_bytes: usize = call
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > MAX_REQUEST_HEADER_BYTES {
            return Err(format!(
                "the request's headers are {header_bytes} bytes, more than FC's limit of \
                 {MAX_REQUEST_HEADER_BYTES}"
            ));
        }
        let target = call.path_and_query.as_str().len();
        if target > MAX_PATH_AND_QUERY_BYTES {
            return Err(format!(
                "the request's path and query are {target} bytes, more than FC's limit of \
                 {MAX_PATH_AND_QUERY_BYTES}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn http_functions_get_http_invoke_and_callers_follow_fc_s_rules() {
        let mut f = ctx(None);
        f.mode = crate::FunctionMode::Http;
        let p = Fc.prepare(&f);
        let http = p.http.expect("an HTTP function passes calls through");
        assert_eq!(http.headers["x-fc-control-path"], "/http-invoke");
        assert_eq!(p.invoke.uri, "/");
        assert!(Fc.prepare(&ctx(None)).http.is_none());

        let call = |target: &str, headers: &[(&'static str, String)]| {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            crate::HttpCall {
                method: Method::GET,
                path_and_query: target.parse().unwrap(),
                headers: h,
                body: Bytes::new(),
                client: None,
            }
        };
        assert_eq!(
            Fc.check_http_call(&call("/ok?a=1", &[("x-a", "1".into())])),
            Ok(())
        );
        let e = Fc
            .check_http_call(&call("/", &[("x-fc-request-id", "forged".into())]))
            .unwrap_err();
        assert!(e.contains("x-fc-request-id"), "{e}");
        let e = Fc
            .check_http_call(&call("/", &[("x-big", "v".repeat(9000))]))
            .unwrap_err();
        assert!(e.contains("limit of 8192"), "{e}");
        let long = format!("/?q={}", "a".repeat(4100));
        let e = Fc.check_http_call(&call(&long, &[])).unwrap_err();
        assert!(e.contains("limit of 4096"), "{e}");
    }

    #[test]
    fn fc_writes_its_own_markers() {
        assert_eq!(
            Fc.log_marker(LogPoint::InvokeStart, "r-1").as_deref(),
            Some("FC Invoke Start RequestId: r-1")
        );
        assert_eq!(
            Fc.log_marker(LogPoint::InitializeEnd, "r-1").as_deref(),
            Some("FC Initialize End RequestId: r-1")
        );
    }

    fn ctx(initializer: Option<u64>) -> FunctionContext {
        FunctionContext {
            name: "hello".into(),
            revision: 1,
            mode: crate::FunctionMode::Event,
            memory_mb: 256,
            timeout: Duration::from_secs(30),
            initializer_timeout: initializer.map(Duration::from_secs),
            pre_freeze_timeout: None,
            pre_stop_timeout: None,
            port: 9000,
            qualifier: "LATEST".into(),
            version: "LATEST".into(),
            region: "local".into(),
            account_id: "wharf".into(),
        }
    }

    #[test]
    fn invoke_request_carries_the_fc_headers() {
        let req = Fc
            .prepare(&ctx(Some(5)))
            .invoke
            .request("req-1", Bytes::from_static(b"{}"));
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/invoke");
        let h = req.headers();
        let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("x-fc-request-id").as_deref(), Some("req-1"));
        assert_eq!(get("x-fc-function-name").as_deref(), Some("hello"));
        assert_eq!(get("x-fc-function-memory").as_deref(), Some("256"));
        assert_eq!(get("x-fc-function-timeout").as_deref(), Some("30"));
        assert_eq!(get("x-fc-control-path").as_deref(), Some("/invoke"));
        assert_eq!(get("x-fc-initialization-timeout").as_deref(), Some("5"));
        assert_eq!(
            get("x-fc-function-initializer").as_deref(),
            Some("initialize")
        );
        assert_eq!(get("x-fc-qualifier").as_deref(), Some("LATEST"));
        assert_eq!(
            get("content-type").as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(get("host").as_deref(), Some("127.0.0.1:9000"));
    }

    #[test]
    fn initialize_only_when_configured() {
        assert!(Fc.prepare(&ctx(None)).initialize.is_none());
        let req = Fc
            .prepare(&ctx(Some(3)))
            .initialize
            .unwrap()
            .request("r", Bytes::new());
        assert_eq!(req.uri(), "/initialize");
        assert_eq!(
            req.headers()["x-fc-control-path"].to_str().unwrap(),
            "/initialize"
        );
    }

    #[test]
    fn freeze_and_stop_hooks_are_gets_when_configured() {
        let none = Fc.prepare(&ctx(None));
        assert!(none.pre_freeze.is_none() && none.pre_stop.is_none());
        let mut f = ctx(None);
        f.pre_freeze_timeout = Some(Duration::from_secs(2));
        f.pre_stop_timeout = Some(Duration::from_secs(4));
        let p = Fc.prepare(&f);
        for (template, path) in [(p.pre_freeze, "/pre-freeze"), (p.pre_stop, "/pre-stop")] {
            let req = template.unwrap().request("r", Bytes::new());
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.uri(), path);
            assert_eq!(req.headers()["x-fc-control-path"].to_str().unwrap(), path);
            assert_eq!(req.headers()["x-fc-request-id"].to_str().unwrap(), "r");
        }
        assert!(Fc.root_allowed() && !Fc.read_only_rootfs());
    }

    #[test]
    fn status_and_x_fc_status_decide_the_outcome() {
        let mut h = HeaderMap::new();
        assert_eq!(Fc.classify(StatusCode::OK, &h), Outcome::Success);
        assert!(matches!(
            Fc.classify(StatusCode::NOT_FOUND, &h),
            Outcome::FunctionError { .. }
        ));
        h.insert(X_FC_STATUS, HeaderValue::from_static("404"));
        assert!(matches!(
            Fc.classify(StatusCode::OK, &h),
            Outcome::FunctionError { .. }
        ));
        h.insert(X_FC_STATUS, HeaderValue::from_static("200"));
        assert_eq!(Fc.classify(StatusCode::NOT_FOUND, &h), Outcome::Success);
    }

    #[test]
    fn hooks_and_headers() {
        assert_eq!(Fc.classify_hook(StatusCode::OK), HookOutcome::Success);
        assert_eq!(
            Fc.classify_hook(StatusCode::INTERNAL_SERVER_ERROR),
            HookOutcome::Restart
        );
        assert!(matches!(
            Fc.classify_hook(StatusCode::NOT_FOUND),
            HookOutcome::Failed { .. }
        ));
        assert!(!Fc.response_header_allowed(&HeaderName::from_static("x-fc-request-id")));
        assert!(!Fc.response_header_allowed(&HeaderName::from_static("content-length")));
        assert!(Fc.response_header_allowed(&HeaderName::from_static("content-type")));
    }

    #[test]
    fn not_started_names_the_port_and_the_output() {
        let m = Fc.not_started_message(9000, START_DEADLINE, "listening on 127.0.0.1\n");
        assert!(m.contains("port 9000"), "{m}");
        assert!(m.contains("listening on 127.0.0.1"), "{m}");
        assert!(m.contains("120s"), "{m}");
    }
}
