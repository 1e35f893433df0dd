//! `POST /v1/functions/{name}/invoke`: the body is the event, the answer is the function's.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use wharf_contract::Outcome;

use crate::{ApiError, App};

/// Largest event accepted on the synchronous invoke path (FC's limit).
pub const MAX_EVENT_BYTES: usize = 32 * 1024 * 1024;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-wharf-request-id");
pub const INSTANCE_ID: HeaderName = HeaderName::from_static("x-wharf-instance-id");
pub const COLD_START: HeaderName = HeaderName::from_static("x-wharf-cold-start");
pub const DURATION_MS: HeaderName = HeaderName::from_static("x-wharf-duration-ms");
pub const INIT_DURATION_MS: HeaderName = HeaderName::from_static("x-wharf-init-duration-ms");
/// Present when the function ran and reported a failure; the value says how.
pub const FUNCTION_ERROR: HeaderName = HeaderName::from_static("x-wharf-function-error");

/// A request id in the UUID v4 text form the clouds use.
pub fn new_request_id() -> String {
    let b = rand::random::<u128>().to_be_bytes();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn ms(d: std::time::Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3)).expect("a number is ASCII")
}

pub async fn invoke(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = new_request_id();
    let rid = HeaderValue::from_str(&request_id).expect("a request id is ASCII");
    let result = match body {
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("the event is larger than the limit of {MAX_EVENT_BYTES} bytes"),
        )),
        Err(e) => Err(ApiError::invalid("body", e.body_text())),
        Ok(event) => app
            .pool
            .invoke(&name, &request_id, event)
            .await
            .map_err(ApiError::from),
    };
    let mut resp = match result {
        Ok(inv) => {
            let mut resp = Response::new(Body::from(inv.body));
            *resp.status_mut() = inv.status;
            let h = resp.headers_mut();
            *h = inv.headers;
            // The x-wharf-* headers are Wharf's word about the call: a function cannot set them.
            let forged: Vec<_> = h
                .keys()
                .filter(|n| n.as_str().starts_with("x-wharf-"))
                .cloned()
                .collect();
            for name in forged {
                h.remove(name);
            }
            h.insert(
                INSTANCE_ID,
                HeaderValue::from_str(&inv.instance_id).expect("instance ids are ASCII"),
            );
            h.insert(
                COLD_START,
                HeaderValue::from_static(if inv.cold_start { "true" } else { "false" }),
            );
            h.insert(DURATION_MS, ms(inv.duration));
            if let Some(d) = inv.init_duration {
                h.insert(INIT_DURATION_MS, ms(d));
            }
            if let Outcome::FunctionError { reason } = inv.outcome {
                h.insert(
                    FUNCTION_ERROR,
                    HeaderValue::from_str(&reason)
                        .unwrap_or_else(|_| HeaderValue::from_static("true")),
                );
            }
            resp
        }
        Err(e) => {
            tracing::debug!(function = %name, request_id = %request_id, error = %e.message, "invoke failed");
            e.into_response()
        }
    };
    resp.headers_mut().insert(REQUEST_ID, rid);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_uuid_v4() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!("89ab".contains(&id[19..20]));
        assert_ne!(id, new_request_id());
    }
}
