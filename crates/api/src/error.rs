//! Every error that reaches a client is mapped to HTTP here, and only here: a status, a stable
//! code, and a message that names the thing and what to do. The body is always
//! `{"error":{"code":"...","message":"..."}}`; for a call of an `fc` function it also has FC's
//! own fields, `"errorCode"` and `"errorMessage"` (the same code and message), so that a client
//! written for FC reads it as it would FC's ([`ApiError::fc_response`]).

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;
use wharf_image::{ImageError, ImageErrorKind};
use wharf_pool::{DeployError, InvokeError};
use wharf_store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A request field is missing or wrong.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            format!("{field}: {why}"),
        )
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    }

    pub fn function_not_found(name: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "FunctionNotFound",
            format!("function {name} does not exist (deploy it with PUT /v1/functions/{name})"),
        )
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FcBody<'a> {
    error: Inner<'a>,
    error_code: &'a str,
    error_message: &'a str,
}

impl ApiError {
    /// The response for a caller of an `fc` function: Wharf's body with FC's fields beside.
    pub fn fc_response(self) -> Response {
        let body = FcBody {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
            error_code: self.code,
            error_message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }

    /// The response for a caller of a function of `contract` (`None`: unknown function).
    pub fn for_contract(self, contract: Option<wharf_contract::ContractKind>) -> Response {
        match contract {
            Some(wharf_contract::ContractKind::Fc) => self.fc_response(),
            _ => self.into_response(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Status and code of an image error at deploy time.
fn image_status_code(kind: ImageErrorKind) -> (StatusCode, &'static str) {
    use ImageErrorKind as K;
    match kind {
        K::InvalidReference => (StatusCode::BAD_REQUEST, "InvalidImageReference"),
        K::NotFound => (StatusCode::BAD_REQUEST, "ImageNotFound"),
        K::Unauthorized => (StatusCode::BAD_REQUEST, "RegistryUnauthorized"),
        K::Unreachable => (StatusCode::BAD_GATEWAY, "RegistryUnreachable"),
        K::Registry => (StatusCode::BAD_GATEWAY, "RegistryError"),
        K::NoPlatform => (StatusCode::BAD_REQUEST, "ImagePlatformUnsupported"),
        K::Corrupt => (StatusCode::BAD_GATEWAY, "ImageCorrupt"),
        K::HostileLayer => (StatusCode::BAD_REQUEST, "ImageRejected"),
        K::TooLarge => (StatusCode::BAD_REQUEST, "ImageTooLarge"),
        K::Io => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let (status, code) = image_status_code(e.kind());
        ApiError::new(status, code, e.to_string())
    }
}

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        let message = e.to_string();
        let status = match &e {
            InvokeError::FunctionNotFound { name } => return ApiError::function_not_found(name),
            // At invoke time an image is pulled only for a `prepull: false` function or when its
            // layers were removed: the call reached no function (502), and the code says why
            // (ImageTooLarge, ImageCorrupt, RegistryUnavailable, …), the message what to do.
            InvokeError::Image { source, .. } => {
                return ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    image_status_code(source.kind()).1,
                    message,
                );
            }
            InvokeError::NoCommand { .. }
            | InvokeError::StartFailed { .. }
            | InvokeError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            InvokeError::NotStarted { .. }
            | InvokeError::InitializeFailed { .. }
            | InvokeError::Crashed { .. }
            | InvokeError::OutOfMemory { .. }
            | InvokeError::Unreachable { .. }
            | InvokeError::ResponseTooLarge { .. } => StatusCode::BAD_GATEWAY,
            InvokeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            InvokeError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            InvokeError::TooManyInstances { .. } => StatusCode::TOO_MANY_REQUESTS,
            InvokeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        // The code is the pool's (`InvokeError::code`): records and REPORT lines use the same.
        ApiError::new(status, e.code(), message)
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        let (status, code) = match &e {
            DeployError::Invalid { .. } => (StatusCode::BAD_REQUEST, "InvalidArgument"),
            // The host, not the request: the operator has to act (the message says how).
            DeployError::Network { .. } => (StatusCode::SERVICE_UNAVAILABLE, "NetworkUnavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "state store");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("the state store failed: {e}"),
        )
    }
}

#[cfg(test)]
mod fc_tests {
    use super::*;

    #[tokio::test]
    async fn fc_callers_get_fc_s_fields_too() {
        let resp = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "ResourceExhausted", "busy")
            .for_contract(Some(wharf_contract::ContractKind::Fc));
        assert_eq!(resp.status(), 429);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "error": {"code": "ResourceExhausted", "message": "busy"},
                "errorCode": "ResourceExhausted",
                "errorMessage": "busy",
            })
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn invoke_errors_map_to_status_and_code() {
        let cases: Vec<(InvokeError, StatusCode, &str)> = vec![
            (
                InvokeError::FunctionNotFound { name: "f".into() },
                StatusCode::NOT_FOUND,
                "FunctionNotFound",
            ),
            (
                InvokeError::NotStarted {
                    name: "f".into(),
                    port: 9000,
                    message: "nothing listened on port 9000".into(),
                },
                StatusCode::BAD_GATEWAY,
                "FunctionNotStarted",
            ),
            (
                InvokeError::Timeout {
                    name: "f".into(),
                    instance: "i".into(),
                    timeout: Duration::from_secs(1),
                },
                StatusCode::GATEWAY_TIMEOUT,
                "FunctionTimeout",
            ),
            (
                InvokeError::TooManyInstances {
                    name: "f".into(),
                    max: 3,
                },
                StatusCode::TOO_MANY_REQUESTS,
                "ResourceExhausted",
            ),
            (
                InvokeError::OutOfMemory {
                    name: "f".into(),
                    instance: "i".into(),
                    limit_mb: 128,
                    peak_mb: Some(128),
                },
                StatusCode::BAD_GATEWAY,
                "FunctionOutOfMemory",
            ),
            (
                InvokeError::ShuttingDown,
                StatusCode::SERVICE_UNAVAILABLE,
                "ShuttingDown",
            ),
        ];
        for (e, status, code) in cases {
            let text = e.to_string();
            let a = ApiError::from(e);
            assert_eq!((a.status, a.code), (status, code), "{text}");
            assert!(!a.message.is_empty());
        }
    }

    #[test]
    fn out_of_memory_names_the_limit_and_the_peak() {
        let oom = |peak_mb| InvokeError::OutOfMemory {
            name: "f".into(),
            instance: "f-1".into(),
            limit_mb: 128,
            peak_mb,
        };
        assert_eq!(
            oom(Some(128)).to_string(),
            "function f: the instance ran out of memory: its limit is 128 MB, it peaked at \
             128 MB; raise memory_mb (instance f-1 was killed and will be replaced)"
        );
        // No memory controller to read the peak from: the limit alone.
        assert_eq!(
            oom(None).to_string(),
            "function f: the instance ran out of memory: its limit is 128 MB; raise memory_mb \
             (instance f-1 was killed and will be replaced)"
        );
    }

    #[tokio::test]
    async fn body_has_the_error_shape() {
        let resp = ApiError::invalid("memory_mb", "must be between 64 and 32768").into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "InvalidArgument");
        assert_eq!(
            v["error"]["message"],
            "memory_mb: must be between 64 and 32768"
        );
    }
}
