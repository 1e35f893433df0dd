//! HTTP triggers: `ANY /v1/functions/{name}/http/{path…}`.
//!
//! An HTTP function (`mode: http`, every `http` function) gets the caller's method, path (after
//! the trigger's prefix), query, headers and body passed through, with the contract's headers and
//! `Forwarded` / `X-Forwarded-*` added, and its response goes back as it is (under the contract's
//! response header rules). An event function gets the API-gateway event of CONTRACTS.md §2
//! instead, and its `{isBase64Encoded, statusCode, headers, body}` answer becomes the response;
//! an answer of another form is a 502 that says what is wrong with it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde::Deserialize;
use wharf_contract::{ContractKind, FunctionMode, HttpCall, Outcome, apigw};
use wharf_pool::Invocation;

use crate::invoke::{
    MAX_EVENT_BYTES, REQUEST_ID, new_request_id, response_of, target_of, wharf_headers,
};
use crate::{ApiError, App, versions};

#[derive(Debug, Deserialize)]
pub struct TriggerPath {
    pub name: String,
}

/// How much of a failed function's answer a gateway error quotes.
const QUOTED_ANSWER_BYTES: usize = 1024;

/// `{name}` may be `NAME:QUALIFIER`, or the caller names the version or alias in
/// `x-fc-qualifier` (which the function does not see). The query is the function's: it carries
/// no qualifier.
pub async fn trigger(
    State(app): State<Arc<App>>,
    Path(TriggerPath { name: given }): Path<TriggerPath>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    method: Method,
    uri: Uri,
    mut headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = new_request_id();
    let rid = HeaderValue::from_str(&request_id).expect("a request id is ASCII");
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let name = given.split_once(':').map_or(given.as_str(), |(n, _)| n);
    let target = target_of(&app, &given, None, &headers);
    headers.remove(versions::FC_QUALIFIER);
    let mut resp = match target.and_then(|t| Ok((t, call_of(peer, method, &uri, headers, body)?))) {
        Ok((target, call)) => {
            let mut resp = serve(&app, name, &target, &request_id, call).await;
            resp.headers_mut()
                .insert(versions::VERSION, target.version_header());
            resp
        }
        Err(e) => e.for_contract(app.pool.contract_of(name)),
    };
    resp.headers_mut().insert(REQUEST_ID, rid);
    resp
}

/// The request the function sees: the path after `/v1/functions/{name}/http`, `/` when nothing
/// follows it.
fn call_of(
    peer: Option<SocketAddr>,
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<HttpCall, ApiError> {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                format!("the request body is larger than the limit of {MAX_EVENT_BYTES} bytes"),
            ));
        }
        Err(e) => return Err(ApiError::invalid("body", e.body_text())),
    };
    // What follows `/v1/functions/{name}/http`, read from the raw path (the name segment may
    // be percent-encoded there).
    let rest = uri
        .path()
        .strip_prefix("/v1/functions/")
        .and_then(|p| p.split_once('/'))
        .and_then(|(_, p)| p.strip_prefix("http"))
        .unwrap_or("/");
    let path = if rest.is_empty() { "/" } else { rest };
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let path_and_query = target.parse().map_err(|e| {
        ApiError::invalid("path", format!("{target:?} is not a request target: {e}"))
    })?;
    Ok(HttpCall {
        method,
        path_and_query,
        headers,
        body,
        client: peer.map(|addr| addr.ip()),
    })
}

/// Calls `target` (function `name`, or one of its versions).
async fn serve(
    app: &App,
    name: &str,
    target: &versions::Target,
    request_id: &str,
    call: HttpCall,
) -> Response {
    let (key, alias) = (target.key.as_str(), target.alias.as_deref());
    let Some((contract, mode)) = app.pool.contract_and_mode(key) else {
        return ApiError::function_not_found(name).into_response();
    };
    let result = match mode {
        FunctionMode::Http => app
            .pool
            .invoke_http(key, alias, request_id, call)
            .await
            .map(response_of),
        FunctionMode::Job => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                format!(
                    "function {name} is a job (an image with no server): it cannot be behind an \
                     HTTP trigger; invoke it with POST /v1/functions/{name}/invoke"
                ),
            )
            .for_contract(Some(contract));
        }
        FunctionMode::Event => {
            let event = apigw::event(&call, request_id);
            app.pool
                .invoke_via(key, alias, request_id, event)
                .await
                .map(|inv| gateway_response(name, contract, inv))
        }
    };
    result.unwrap_or_else(|e| ApiError::from(e).for_contract(Some(contract)))
}

/// An event function's answer, read as an API-gateway response.
fn gateway_response(name: &str, contract: ContractKind, inv: Invocation) -> Response {
    let error = |code: &'static str, message: String| {
        let mut resp =
            ApiError::new(StatusCode::BAD_GATEWAY, code, message).for_contract(Some(contract));
        wharf_headers(resp.headers_mut(), &inv);
        resp
    };
    if let Outcome::FunctionError { reason } = &inv.outcome {
        return error(
            "FunctionError",
            format!(
                "function {name} failed ({reason}); it answered: {}",
                quote(&inv.body)
            ),
        );
    }
    match apigw::response(&inv.body) {
        Ok(g) => {
            let mut resp = Response::new(Body::from(g.body));
            *resp.status_mut() = g.status;
            let h = resp.headers_mut();
            for (name, value) in g.headers {
                // Only the server that writes the response may set its framing.
                if let Some(name) = name
                    && !wharf_contract::HOP_BY_HOP.contains(&name.as_str())
                {
                    h.append(name, value);
                }
            }
            wharf_headers(h, &inv);
            resp
        }
        Err(what) => error(
            "InvalidFunctionResponse",
            format!(
                "function {name} is behind an HTTP trigger but did not answer as an API gateway \
                 expects: {what}. It answered: {}",
                quote(&inv.body)
            ),
        ),
    }
}

/// The start of an answer, as text, for an error message.
fn quote(body: &[u8]) -> String {
    let cut = body.len().min(QUOTED_ANSWER_BYTES);
    let text = String::from_utf8_lossy(&body[..cut]);
    if body.len() > cut {
        format!("{text:?}… ({} bytes)", body.len())
    } else if body.is_empty() {
        "(nothing)".into()
    } else {
        format!("{text:?}")
    }
}
