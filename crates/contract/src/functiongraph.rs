//! Huawei Cloud FunctionGraph container image (`functiongraph`), CONTRACTS.md §2 and the seed
//! document "使用容器镜像部署函数".
//!
//! The image runs an HTTP server on port 8000. An event function gets `POST /invoke` with the
//! event as its body and, when the function has an initializer, `POST /init` once per instance
//! before the first invocation. Context travels in `X-CFF-*` headers. Instances run as uid/gid
//! 1003 unless the function says otherwise, and never as root ("overridable, not to root").
//!
//! FunctionGraph documents only that the server must answer "a valid HTTP response"; a 2xx is a
//! success, anything else is reported as a function error (its status and body are kept).

use std::time::Duration;

use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::{
    Contract, ContractKind, FunctionContext, HOP_BY_HOP, Hook, HookOutcome, Outcome, Prepared,
    RequestTemplate, header,
};

/// The port every FunctionGraph container image listens on.
pub const DEFAULT_PORT: u16 = 8000;
/// FunctionGraph is silent on how long a server may take to listen; its initializer may take up
/// to 300 s, its cold starts are known to be slow. Wharf gives it FC's 120 s.
pub const START_DEADLINE: Duration = Duration::from_secs(120);
/// "用户容器会使用属主1003、属组1003启动": the default uid and gid.
pub const DEFAULT_USER: (u32, u32) = (1003, 1003);

/// The `functiongraph` adapter.
#[derive(Clone, Copy, Debug, Default)]
pub struct FunctionGraph;

impl FunctionGraph {
    fn template(&self, f: &FunctionContext, path: &'static str) -> RequestTemplate {
        let mut h = HeaderMap::with_capacity(12);
        h.insert(HOST, header(format_args!("127.0.0.1:{}", f.port)));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let version = if f.version == "LATEST" {
            "latest"
        } else {
            f.version.as_str()
        };
        let pairs: [(&'static str, HeaderValue); 7] = [
            ("x-cff-func-name", header(&f.name)),
            ("x-cff-memory", header(f.memory_mb)),
            ("x-cff-timeout", header(f.timeout.as_secs())),
            ("x-cff-func-version", header(version)),
            ("x-cff-project-id", header(&f.account_id)),
            // FunctionGraph groups functions in applications ("packages"); Wharf has one.
            ("x-cff-package", HeaderValue::from_static("default")),
            ("x-cff-region", header(&f.region)),
        ];
        for (name, value) in pairs {
            h.insert(HeaderName::from_static(name), value);
        }
        RequestTemplate {
            method: Method::POST,
            uri: http::Uri::from_static(path),
            headers: h,
            request_id_header: Some(HeaderName::from_static("x-cff-request-id")),
        }
    }
}

impl Contract for FunctionGraph {
    fn kind(&self) -> ContractKind {
        ContractKind::Functiongraph
    }

    fn default_port(&self) -> u16 {
        DEFAULT_PORT
    }

    fn start_deadline(&self) -> Duration {
        START_DEADLINE
    }

    fn default_user(&self) -> Option<(u32, u32)> {
        Some(DEFAULT_USER)
    }

    fn root_allowed(&self) -> bool {
        false
    }

    fn read_only_rootfs(&self) -> bool {
        false
    }

    fn supports_hook(&self, hook: Hook) -> bool {
        hook == Hook::Initialize
    }

    fn environment(&self, _f: &FunctionContext) -> Vec<(String, String)> {
        // The seed documents no variables for container images besides the function's own.
        Vec::new()
    }

    fn prepare(&self, f: &FunctionContext) -> Prepared {
        let (invoke, http) = crate::for_mode(
            f.mode,
            || self.template(f, "/invoke"),
            || self.template(f, "/invoke"),
        );
        Prepared {
            invoke,
            http,
            initialize: f.initializer_timeout.map(|_| self.template(f, "/init")),
            pre_freeze: None,
            pre_stop: None,
        }
    }

    fn classify_hook(&self, status: StatusCode) -> HookOutcome {
        crate::status_hook_outcome(status)
    }

    fn classify(&self, status: StatusCode, _headers: &HeaderMap) -> Outcome {
        crate::status_outcome(status)
    }

    fn response_header_allowed(&self, name: &HeaderName) -> bool {
        !HOP_BY_HOP.contains(&name.as_str())
    }

    fn not_started_message(&self, port: u16, deadline: Duration, output: &str) -> String {
        format!(
            "the function's HTTP server did not start: nothing listened on port {port} within \
             {}s. A FunctionGraph container image must run an HTTP server listening on \
             0.0.0.0:{DEFAULT_PORT}. Logs: {}",
            deadline.as_secs_f64(),
            crate::printed(output)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ctx(initializer: bool) -> FunctionContext {
        FunctionContext {
            name: "express".into(),
            revision: 1,
            mode: crate::FunctionMode::Event,
            memory_mb: 512,
            timeout: Duration::from_secs(15),
            initializer_timeout: initializer.then(|| Duration::from_secs(3)),
            pre_freeze_timeout: None,
            pre_stop_timeout: None,
            port: DEFAULT_PORT,
            qualifier: "LATEST".into(),
            version: "LATEST".into(),
            region: "local".into(),
            account_id: "wharf".into(),
        }
    }

    #[test]
    fn invoke_carries_the_cff_headers() {
        let req = FunctionGraph
            .prepare(&ctx(false))
            .invoke
            .request("req-9", Bytes::from_static(b"{\"k\":1}"));
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/invoke");
        let h = req.headers();
        let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("x-cff-request-id").as_deref(), Some("req-9"));
        assert_eq!(get("x-cff-func-name").as_deref(), Some("express"));
        assert_eq!(get("x-cff-memory").as_deref(), Some("512"));
        assert_eq!(get("x-cff-timeout").as_deref(), Some("15"));
        assert_eq!(get("x-cff-func-version").as_deref(), Some("latest"));
        assert_eq!(get("x-cff-project-id").as_deref(), Some("wharf"));
        assert_eq!(get("x-cff-package").as_deref(), Some("default"));
        assert_eq!(get("x-cff-region").as_deref(), Some("local"));
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert_eq!(get("host").as_deref(), Some("127.0.0.1:8000"));
    }

    #[test]
    fn init_only_with_an_initializer_and_no_other_hooks() {
        assert!(FunctionGraph.prepare(&ctx(false)).initialize.is_none());
        let p = FunctionGraph.prepare(&ctx(true));
        assert_eq!(
            p.initialize.unwrap().request("r", Bytes::new()).uri(),
            "/init"
        );
        assert!(p.pre_freeze.is_none() && p.pre_stop.is_none());
        assert!(FunctionGraph.supports_hook(Hook::Initialize));
        assert!(!FunctionGraph.supports_hook(Hook::PreFreeze));
        assert!(!FunctionGraph.supports_hook(Hook::PreStop));
    }

    #[test]
    fn identity_and_outcomes() {
        assert_eq!(FunctionGraph.default_user(), Some((1003, 1003)));
        assert!(!FunctionGraph.root_allowed());
        assert_eq!(FunctionGraph.default_port(), 8000);
        let h = HeaderMap::new();
        assert_eq!(FunctionGraph.classify(StatusCode::OK, &h), Outcome::Success);
        assert_eq!(
            FunctionGraph.classify(StatusCode::INTERNAL_SERVER_ERROR, &h),
            Outcome::FunctionError {
                reason: "the function answered with status 500".into()
            }
        );
        assert!(!FunctionGraph.response_header_allowed(&HeaderName::from_static("connection")));
        assert!(FunctionGraph.response_header_allowed(&HeaderName::from_static("x-custom")));
        let m = FunctionGraph.not_started_message(8000, START_DEADLINE, "");
        assert!(m.contains("0.0.0.0:8000"), "{m}");
        assert!(m.contains("(the instance printed nothing)"), "{m}");
    }
}
