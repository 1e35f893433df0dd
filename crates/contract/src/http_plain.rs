//! Plain HTTP (Knative Serving, Cloud Run), CONTRACTS.md §5: the server listens on `$PORT`
//! (default 8080) and gets its callers' requests passed through, with `Forwarded` and
//! `X-Forwarded-*` added. Knative's variables name the service, its revision and its
//! configuration. There are no hooks: shutdown is SIGTERM, then SIGKILL after the grace period.
//!
//! Every `http` function is an HTTP function; an event sent to it (`POST /v1/functions/{name}/
//! invoke`) arrives as `POST /` with the event as its body.

use std::time::Duration;

use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::{
    Contract, ContractKind, FunctionContext, HOP_BY_HOP, Hook, HookOutcome, Outcome, Prepared,
    RequestTemplate, header,
};

/// Knative's and Cloud Run's default `$PORT`.
pub const DEFAULT_PORT: u16 = 8080;
/// Cloud Run's default startup probe allows 240 s; Knative's progress deadline is longer. Wharf
/// gives a plain HTTP server as long as FC gives its custom containers.
pub const START_DEADLINE: Duration = Duration::from_secs(120);

/// The `http` adapter.
#[derive(Clone, Copy, Debug, Default)]
pub struct Http;

/// `K_REVISION`: Knative names revisions `<service>-<5-digit generation>`.
fn revision_name(f: &FunctionContext) -> String {
    format!("{}-{:05}", f.name, f.revision)
}

impl Contract for Http {
    fn kind(&self) -> ContractKind {
        ContractKind::Http
    }

    fn default_port(&self) -> u16 {
        DEFAULT_PORT
    }

    fn start_deadline(&self) -> Duration {
        START_DEADLINE
    }

    fn default_user(&self) -> Option<(u32, u32)> {
        None
    }

    fn root_allowed(&self) -> bool {
        true
    }

    fn read_only_rootfs(&self) -> bool {
        false
    }

    fn supports_hook(&self, _hook: Hook) -> bool {
        false
    }

    fn environment(&self, f: &FunctionContext) -> Vec<(String, String)> {
        vec![
            ("PORT".into(), f.port.to_string()),
            ("K_SERVICE".into(), f.name.clone()),
            ("K_REVISION".into(), revision_name(f)),
            ("K_CONFIGURATION".into(), f.name.clone()),
        ]
    }

    fn prepare(&self, f: &FunctionContext) -> Prepared {
        let mut h = HeaderMap::with_capacity(2);
        h.insert(HOST, header(format_args!("127.0.0.1:{}", f.port)));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let template = RequestTemplate {
            method: Method::POST,
            uri: http::Uri::from_static("/"),
            headers: h,
            // Knative sends none; the id reaches the caller and the log, not the server.
            request_id_header: None,
        };
        Prepared {
            invoke: template.clone(),
            http: Some(template),
            initialize: None,
            pre_freeze: None,
            pre_stop: None,
        }
    }

    fn classify_hook(&self, status: StatusCode) -> HookOutcome {
        crate::status_hook_outcome(status)
    }

    fn classify(&self, status: StatusCode, _headers: &HeaderMap) -> Outcome {
        crate::classify_http(status)
    }

    fn response_header_allowed(&self, name: &HeaderName) -> bool {
        !HOP_BY_HOP.contains(&name.as_str())
    }

    fn not_started_message(&self, port: u16, deadline: Duration, output: &str) -> String {
        format!(
            "the function's HTTP server did not start: nothing listened on port {port} within \
             {}s. Make the server listen on 0.0.0.0:$PORT (Wharf sets PORT={port}). Logs: {}",
            deadline.as_secs_f64(),
            crate::printed(output)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FunctionMode, HttpCall, pass_through};
    use bytes::Bytes;

    fn ctx() -> FunctionContext {
        FunctionContext {
            name: "web".into(),
            revision: 7,
            mode: FunctionMode::Http,
            memory_mb: 128,
            timeout: Duration::from_secs(3),
            initializer_timeout: None,
            pre_freeze_timeout: None,
            pre_stop_timeout: None,
            port: 8080,
            qualifier: "LATEST".into(),
            version: "LATEST".into(),
            region: "local".into(),
            account_id: "wharf".into(),
        }
    }

    #[test]
    fn the_environment_is_knative_s() {
        let env = Http.environment(&ctx());
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PORT"), Some("8080"));
        assert_eq!(get("K_SERVICE"), Some("web"));
        assert_eq!(get("K_REVISION"), Some("web-00007"));
        assert_eq!(get("K_CONFIGURATION"), Some("web"));
    }

    #[test]
    fn calls_pass_through_with_forwarding_headers() {
        let prepared = Http.prepare(&ctx());
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("app.example"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer wharf-token"),
        );
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.insert("x-custom", HeaderValue::from_static("1"));
        let req = pass_through(
            prepared.http.as_ref().unwrap(),
            "req-1",
            HttpCall {
                method: Method::PATCH,
                path_and_query: "/a/b?x=1".parse().unwrap(),
                headers,
                body: Bytes::from_static(b"body"),
                client: Some("127.0.0.1".parse().unwrap()),
            },
        );
        assert_eq!(req.method(), Method::PATCH);
        assert_eq!(req.uri(), "/a/b?x=1");
        let h = req.headers();
        assert_eq!(h["host"], "app.example");
        assert_eq!(h["content-type"], "text/plain");
        assert_eq!(h["x-custom"], "1");
        assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http;host=app.example");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert!(h.get("authorization").is_none());
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn a_5xx_is_a_function_error_and_a_404_an_answer() {
        assert_eq!(
            Http.classify(StatusCode::NOT_FOUND, &HeaderMap::new()),
            Outcome::Success
        );
        assert!(matches!(
            Http.classify(StatusCode::BAD_GATEWAY, &HeaderMap::new()),
            Outcome::FunctionError { .. }
        ));
    }
}
