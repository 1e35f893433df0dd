//! `POST /v1/functions/{name}/invoke`: the body is the event, the answer is the function's.
//! `{name}` may carry a qualifier (`NAME:1`, `NAME:prod`; see [`crate::versions`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use wharf_contract::Outcome;
use wharf_pool::Invocation;

use crate::{ApiError, App, versions};

/// Largest event accepted on the synchronous invoke path (FC's limit).
pub const MAX_EVENT_BYTES: usize = 32 * 1024 * 1024;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-wharf-request-id");
pub const INSTANCE_ID: HeaderName = HeaderName::from_static("x-wharf-instance-id");
pub const COLD_START: HeaderName = HeaderName::from_static("x-wharf-cold-start");
pub const DURATION_MS: HeaderName = HeaderName::from_static("x-wharf-duration-ms");
pub const INIT_DURATION_MS: HeaderName = HeaderName::from_static("x-wharf-init-duration-ms");
/// Present when the instance was frozen and thawed for this call: how long the thaw took.
pub const THAW_DURATION_MS: HeaderName = HeaderName::from_static("x-wharf-thaw-duration-ms");
/// The instance's memory peak so far, in MB rounded up (Lambda's "Max Memory Used").
pub const MEMORY_PEAK_MB: HeaderName = HeaderName::from_static("x-wharf-memory-peak-mb");
/// Present when the function ran and reported a failure; the value says how.
pub const FUNCTION_ERROR: HeaderName = HeaderName::from_static("x-wharf-function-error");

/// A request id in the UUID v4 text form the clouds use.
pub fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = rand::random::<u128>().to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut id = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(HEX[usize::from(byte >> 4)] as char);
        id.push(HEX[usize::from(byte & 0xf)] as char);
    }
    id
}

/// Milliseconds with three decimals (`12.345`), written without a heap allocation.
fn ms(d: std::time::Duration) -> HeaderValue {
    let micros = d.as_micros();
    let mut buf = [0u8; 48];
    let mut start = buf.len() - 4;
    let frac = micros % 1000;
    buf[start..].copy_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
    let mut whole = micros / 1000;
    loop {
        start -= 1;
        buf[start] = b'0' + (whole % 10) as u8;
        whole /= 10;
        if whole == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&buf[start..]).expect("digits and a dot")
}

/// The function's answer as the caller gets it: its status, the headers the contract let
/// through, its body, and Wharf's headers.
pub(crate) fn response_of(mut inv: Invocation) -> Response {
    let mut resp = Response::new(Body::from(std::mem::take(&mut inv.body)));
    *resp.status_mut() = inv.status;
    *resp.headers_mut() = std::mem::take(&mut inv.headers);
    wharf_headers(resp.headers_mut(), &inv);
    resp
}

/// Wharf's word about the call, in `h` (the answer's headers): the instance, cold or warm, the
/// times, the memory peak, and the function error if there was one. A function cannot set these
/// headers itself: any `x-wharf-*` header it sent is removed first.
pub(crate) fn wharf_headers(h: &mut http::HeaderMap, inv: &Invocation) {
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
    if let Some(d) = inv.thaw_duration {
        h.insert(THAW_DURATION_MS, ms(d));
    }
    if let Some(peak) = inv.memory_peak_bytes {
        h.insert(
            MEMORY_PEAK_MB,
            HeaderValue::from(peak.div_ceil(1024 * 1024)),
        );
    }
    if let Outcome::FunctionError { reason } = &inv.outcome {
        h.insert(
            FUNCTION_ERROR,
            HeaderValue::from_str(reason).unwrap_or_else(|_| HeaderValue::from_static("true")),
        );
    }
}

/// `?qualifier=` of an invocation.
#[derive(Debug, Default, serde::Deserialize)]
pub struct QualifierQuery {
    pub qualifier: Option<String>,
}

/// `POST /v1/functions/{name}/invoke`, where `{name}` may be `NAME:QUALIFIER` (a version number
/// or an alias), or the qualifier is in `?qualifier=` or `x-fc-qualifier`.
pub async fn invoke(
    State(app): State<Arc<App>>,
    Path(given): Path<String>,
    query: Result<Query<QualifierQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = new_request_id();
    let rid = HeaderValue::from_str(&request_id).expect("a request id is ASCII");
    let name = given.split_once(':').map_or(given.as_str(), |(n, _)| n);
    let target = query
        .map_err(|e| ApiError::invalid("query", e.body_text()))
        .and_then(|Query(q)| target_of(&app, &given, q.qualifier.as_deref(), &headers));
    let result = match (target, body) {
        (Err(e), _) => Err(e),
        (_, Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("the event is larger than the limit of {MAX_EVENT_BYTES} bytes"),
        )),
        (_, Err(e)) => Err(ApiError::invalid("body", e.body_text())),
        (Ok(target), Ok(event)) => app
            .pool
            .invoke_via(&target.key, target.alias.as_deref(), &request_id, event)
            .await
            .map(|inv| (target, inv))
            .map_err(ApiError::from),
    };
    let mut resp = match result {
        Ok((target, inv)) => {
            let mut resp = response_of(inv);
            resp.headers_mut()
                .insert(versions::VERSION, target.version_header());
            resp
        }
        Err(e) => {
            tracing::debug!(function = %given, request_id = %request_id, error = %e.message, "invoke failed");
            e.for_contract(app.pool.contract_of(name))
        }
    };
    resp.headers_mut().insert(REQUEST_ID, rid);
    resp
}

/// Where a call of `given` (`NAME` or `NAME:QUALIFIER`) goes, with the qualifier of
/// `?qualifier=` or of `x-fc-qualifier` if the caller gave one that way.
pub(crate) fn target_of(
    app: &App,
    given: &str,
    query_qualifier: Option<&str>,
    headers: &HeaderMap,
) -> Result<versions::Target, ApiError> {
    let header = match headers.get(versions::FC_QUALIFIER) {
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::invalid(
                "x-fc-qualifier",
                "is not visible ASCII; give a version or an alias",
            )
        })?),
        None => None,
    };
    let other = match (query_qualifier, header) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid(
                "qualifier",
                format!("?qualifier= says {a:?} and x-fc-qualifier says {b:?}; give one"),
            ));
        }
        (a, b) => a.or(b),
    };
    let (name, qualifier) = versions::split_target(given, other)?;
    versions::resolve(app, name, qualifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_have_three_decimals() {
        use std::time::Duration;
        assert_eq!(ms(Duration::from_micros(12_345)), "12.345");
        assert_eq!(ms(Duration::from_micros(7)), "0.007");
        assert_eq!(ms(Duration::from_secs(86_400)), "86400000.000");
    }

    #[test]
    fn request_ids_look_like_uuid_v4() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(
            id.char_indices()
                .filter(|(_, c)| *c == '-')
                .map(|(i, _)| i)
                .collect::<Vec<_>>(),
            [8, 13, 18, 23]
        );
        assert_eq!(&id[14..15], "4");
        assert!("89ab".contains(&id[19..20]));
        assert_ne!(id, new_request_id());
    }
}
