//! Tencent Cloud SCF image function (`scf`), CONTRACTS.md §3 and the seed article "云函数 SCF
//! 支持容器镜像交付".
//!
//! The image runs an HTTP server on port 9000 ("固定为9000"), which must listen within 30 s. An
//! event function gets `POST /event-invoke` with the event as its body and its context in
//! `X-Scf-*` headers; the environment carries the `SCF_*`/`TENCENTCLOUD_*` variables. The root
//! filesystem is read-only, only `/tmp` is writable. SCF image functions have no lifecycle hooks.
//!
//! SCF is silent on how an image function reports a failure; a 2xx is a success, anything else
//! a function error (its status and body are kept).

use std::time::Duration;

use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::{
    Contract, ContractKind, FunctionContext, HOP_BY_HOP, Hook, HookOutcome, Outcome, Prepared,
    RequestTemplate, header,
};

/// The port of every SCF image function.
pub const DEFAULT_PORT: u16 = 9000;
/// SCF gives the server 30 s to listen.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// SCF's namespace of a function; Wharf has one.
const NAMESPACE: &str = "default";

/// The `scf` adapter.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scf;

/// `$LATEST` is how SCF spells the unpublished version.
fn version(f: &FunctionContext) -> &str {
    if f.version == "LATEST" {
        "$LATEST"
    } else {
        &f.version
    }
}

impl Contract for Scf {
    fn kind(&self) -> ContractKind {
        ContractKind::Scf
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
        true
    }

    fn supports_hook(&self, _hook: Hook) -> bool {
        false
    }

    fn environment(&self, f: &FunctionContext) -> Vec<(String, String)> {
        [
            ("TENCENTCLOUD_RUNENV", "SCF"),
            ("USER_CODE_ROOT", "/var/user/"),
            ("USER", "qcloud"),
            ("SCF_FUNCTIONNAME", &f.name),
            ("SCF_FUNCTIONVERSION", version(f)),
            ("SCF_NAMESPACE", NAMESPACE),
            ("TENCENTCLOUD_REGION", &f.region),
            ("TENCENTCLOUD_APPID", &f.account_id),
            ("TENCENTCLOUD_UIN", &f.account_id),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn prepare(&self, f: &FunctionContext) -> Prepared {
        let mut h = HeaderMap::with_capacity(12);
        h.insert(HOST, header(format_args!("127.0.0.1:{}", f.port)));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let pairs: [(&'static str, HeaderValue); 8] = [
            ("x-scf-name", header(&f.name)),
            ("x-scf-memory", header(f.memory_mb)),
            // Seconds, as the function's timeout is configured on SCF.
            ("x-scf-timeout", header(f.timeout.as_secs())),
            ("x-scf-version", header(version(f))),
            ("x-scf-namespace", HeaderValue::from_static(NAMESPACE)),
            ("x-scf-region", header(&f.region)),
            ("x-scf-appid", header(&f.account_id)),
            ("x-scf-uin", header(&f.account_id)),
        ];
        for (name, value) in pairs {
            h.insert(HeaderName::from_static(name), value);
        }
        let template = RequestTemplate {
            method: Method::POST,
            uri: http::Uri::from_static("/event-invoke"),
            headers: h,
            request_id_header: Some(HeaderName::from_static("x-scf-request-id")),
        };
        let (invoke, http) = crate::for_mode(f.mode, || template.clone(), || template.clone());
        Prepared {
            invoke,
            http,
            initialize: None,
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

    /// SCF's own text, word for word (its missing space included), then what the instance
    /// printed.
    fn job_event_variable(&self) -> Option<&'static str> {
        Some("SCF_CUSTOM_CONTAINER_EVENT")
    }

    fn not_started_message(&self, port: u16, deadline: Duration, output: &str) -> String {
        format!(
            "The request timed out in {}ms.Please confirm your http server have enabled \
             listening on port {port}. Logs: {}",
            deadline.as_millis(),
            crate::printed(output)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ctx() -> FunctionContext {
        FunctionContext {
            name: "web".into(),
            revision: 1,
            mode: crate::FunctionMode::Event,
            memory_mb: 128,
            timeout: Duration::from_secs(3),
            initializer_timeout: None,
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
    fn event_invoke_carries_the_scf_headers() {
        let req = Scf
            .prepare(&ctx())
            .invoke
            .request("rid", Bytes::from_static(b"{}"));
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/event-invoke");
        let h = req.headers();
        let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("x-scf-request-id").as_deref(), Some("rid"));
        assert_eq!(get("x-scf-name").as_deref(), Some("web"));
        assert_eq!(get("x-scf-memory").as_deref(), Some("128"));
        assert_eq!(get("x-scf-timeout").as_deref(), Some("3"));
        assert_eq!(get("x-scf-version").as_deref(), Some("$LATEST"));
        assert_eq!(get("x-scf-namespace").as_deref(), Some("default"));
        assert_eq!(get("x-scf-region").as_deref(), Some("local"));
        assert_eq!(get("x-scf-appid").as_deref(), Some("wharf"));
        assert_eq!(get("x-scf-uin").as_deref(), Some("wharf"));
    }

    #[test]
    fn environment_and_rules() {
        let env = Scf.environment(&ctx());
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("TENCENTCLOUD_RUNENV"), Some("SCF"));
        assert_eq!(get("USER_CODE_ROOT"), Some("/var/user/"));
        assert_eq!(get("USER"), Some("qcloud"));
        assert_eq!(get("SCF_FUNCTIONNAME"), Some("web"));
        assert_eq!(get("SCF_FUNCTIONVERSION"), Some("$LATEST"));
        assert_eq!(get("TENCENTCLOUD_REGION"), Some("local"));
        assert!(Scf.read_only_rootfs());
        assert!(Scf.root_allowed());
        assert!(!Scf.supports_hook(Hook::Initialize));
        let p = Scf.prepare(&ctx());
        assert!(p.initialize.is_none() && p.pre_freeze.is_none() && p.pre_stop.is_none());
    }

    #[test]
    fn not_started_is_scf_s_own_text() {
        let m = Scf.not_started_message(9000, START_DEADLINE, "boom\n");
        assert!(
            m.starts_with(
                "The request timed out in 30000ms.Please confirm your http server have enabled \
                 listening on port 9000."
            ),
            "{m}"
        );
        assert!(m.ends_with("Logs: boom"), "{m}");
    }

    #[test]
    fn outcomes() {
        let h = HeaderMap::new();
        assert_eq!(Scf.classify(StatusCode::OK, &h), Outcome::Success);
        assert!(matches!(
            Scf.classify(StatusCode::BAD_GATEWAY, &h),
            Outcome::FunctionError { .. }
        ));
    }
}
