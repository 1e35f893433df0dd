//! AWS Lambda container images (`lambda`), CONTRACTS.md §4: the pull model.
//!
//! There is no server in the image: its runtime interface client (awslambdaric, the
//! `lambda_runtime` crate, …) asks the Runtime API at `$AWS_LAMBDA_RUNTIME_API` for work
//! (`GET /2018-06-01/runtime/invocation/next`) and posts each result back. The pool serves that
//! API inside each instance (`wharf-pool`'s `runtime_api`), on the function's port (default
//! 9001); an instance is ready when its client first asks for work.
//!
//! Between the pool and its Runtime API the invocation is an ordinary exchange: the prepared
//! request carries the event and the request id, and the answer is 200 with the function's
//! result, or with `Lambda-Runtime-Function-Error-Type` set when the client posted an error
//! (its `{errorMessage, errorType, stackTrace}` is the body). Function errors are answered with
//! 200, as Lambda's Invoke API does, and marked as function errors.

use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::{
    Contract, ContractKind, FunctionContext, Hook, HookOutcome, Outcome, Prepared, RequestTemplate,
    header,
};

/// Where the Runtime API listens inside an instance unless the function sets `port`.
pub const DEFAULT_PORT: u16 = 9001;
/// Lambda's limit for the init phase.
pub const START_DEADLINE: Duration = Duration::from_secs(10);
/// The header of the answer that says the client posted an error, and its type.
pub const ERROR_TYPE_HEADER: &str = "lambda-runtime-function-error-type";
/// The header of the invoke request that names the function by ARN.
pub const ARN_HEADER: &str = "lambda-runtime-invoked-function-arn";
/// The header of the invoke request that carries the request id.
pub const REQUEST_ID_HEADER: &str = "lambda-runtime-aws-request-id";

/// The `lambda` adapter.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lambda;

/// `$LATEST` is how Lambda spells the unpublished version.
fn version(f: &FunctionContext) -> &str {
    if f.version == "LATEST" {
        "$LATEST"
    } else {
        &f.version
    }
}

/// The function's ARN, as Lambda would write it.
pub fn arn(f: &FunctionContext) -> String {
    format!(
        "arn:aws:lambda:{}:{}:function:{}",
        f.region, f.account_id, f.name
    )
}

impl Contract for Lambda {
    fn kind(&self) -> ContractKind {
        ContractKind::Lambda
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

    /// Lambda's container images run with a read-only root; `/tmp` is writable.
    fn read_only_rootfs(&self) -> bool {
        true
    }

    fn supports_hook(&self, _hook: Hook) -> bool {
        false
    }

    fn pulls_work(&self) -> bool {
        true
    }

    fn environment(&self, f: &FunctionContext) -> Vec<(String, String)> {
        let log_group = format!("/aws/lambda/{}", f.name);
        [
            ("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{}", f.port)),
            ("AWS_LAMBDA_FUNCTION_NAME", f.name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", version(f).to_string()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", f.memory_mb.to_string()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", log_group),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                format!("wharf/{}", f.revision),
            ),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_string()),
            ("AWS_REGION", f.region.clone()),
            ("AWS_DEFAULT_REGION", f.region.clone()),
            ("LAMBDA_TASK_ROOT", "/var/task".to_string()),
            ("LAMBDA_RUNTIME_DIR", "/var/runtime".to_string()),
            ("TZ", ":UTC".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn prepare(&self, f: &FunctionContext) -> Prepared {
        let mut h = HeaderMap::with_capacity(4);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(HeaderName::from_static(ARN_HEADER), header(arn(f)));
        Prepared {
            invoke: RequestTemplate {
                method: Method::POST,
                uri: http::Uri::from_static("/"),
                headers: h,
                request_id_header: Some(HeaderName::from_static(REQUEST_ID_HEADER)),
            },
            http: None,
            initialize: None,
            pre_freeze: None,
            pre_stop: None,
        }
    }

    fn classify_hook(&self, status: StatusCode) -> HookOutcome {
        crate::status_hook_outcome(status)
    }

    fn classify(&self, _status: StatusCode, headers: &HeaderMap) -> Outcome {
        match headers.get(ERROR_TYPE_HEADER) {
            Some(t) => Outcome::FunctionError {
                reason: format!(
                    "Unhandled: {}",
                    String::from_utf8_lossy(t.as_bytes()).trim()
                ),
            },
            None => Outcome::Success,
        }
    }

    fn response_header_allowed(&self, name: &HeaderName) -> bool {
        name == CONTENT_TYPE
    }

    fn not_started_message(&self, port: u16, deadline: Duration, output: &str) -> String {
        format!(
            "the function's runtime client did not ask for work: no GET \
             /2018-06-01/runtime/invocation/next reached the Runtime API at 127.0.0.1:{port} \
             within {}s. The image must run a Lambda runtime interface client that reads \
             AWS_LAMBDA_RUNTIME_API (e.g. ENTRYPOINT [\"python\", \"-m\", \"awslambdaric\"] with \
             CMD [\"app.handler\"], or a binary built with the lambda_runtime crate). Logs: {}",
            deadline.as_secs_f64(),
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
            name: "thumbs".into(),
            revision: 3,
            mode: crate::FunctionMode::Event,
            memory_mb: 256,
            timeout: Duration::from_secs(30),
            initializer_timeout: None,
            pre_freeze_timeout: None,
            pre_stop_timeout: None,
            port: DEFAULT_PORT,
            qualifier: "LATEST".into(),
            version: "LATEST".into(),
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
        }
    }

    #[test]
    fn the_environment_points_at_the_runtime_api() {
        let env = Lambda.environment(&ctx());
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("AWS_LAMBDA_RUNTIME_API"), Some("127.0.0.1:9001"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_NAME"), Some("thumbs"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_VERSION"), Some("$LATEST"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), Some("256"));
        assert_eq!(get("AWS_REGION"), Some("us-east-1"));
        assert_eq!(get("AWS_DEFAULT_REGION"), Some("us-east-1"));
        assert_eq!(get("LAMBDA_TASK_ROOT"), Some("/var/task"));
        assert_eq!(get("TZ"), Some(":UTC"));
    }

    #[test]
    fn the_invoke_request_names_the_call_and_errors_are_function_errors() {
        let req = Lambda
            .prepare(&ctx())
            .invoke
            .request("r-1", Bytes::from_static(b"{}"));
        assert_eq!(req.headers()[REQUEST_ID_HEADER], "r-1");
        assert_eq!(
            req.headers()[ARN_HEADER],
            "arn:aws:lambda:us-east-1:000000000000:function:thumbs"
        );
        let mut h = HeaderMap::new();
        assert_eq!(Lambda.classify(StatusCode::OK, &h), Outcome::Success);
        h.insert(ERROR_TYPE_HEADER, HeaderValue::from_static("ValueError"));
        assert_eq!(
            Lambda.classify(StatusCode::OK, &h),
            Outcome::FunctionError {
                reason: "Unhandled: ValueError".into()
            }
        );
        assert!(!Lambda.response_header_allowed(&HeaderName::from_static(ERROR_TYPE_HEADER)));
        assert!(Lambda.pulls_work());
    }
}
