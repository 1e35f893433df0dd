//! The API-gateway event (CONTRACTS.md §2): what an *event* function gets when it is called
//! through an HTTP trigger, and how its answer becomes the HTTP response.
//!
//! The event is FunctionGraph's (and close to Lambda's API Gateway v1 event): method, path,
//! query, headers, and the body in base64 (`isBase64Encoded: true`, so binary bodies survive).
//! The function answers `{"isBase64Encoded", "statusCode", "headers", "body"}`; anything else is
//! a gateway error whose message says what was wrong with the answer.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::{Map, Value, json};

use crate::HttpCall;

/// Largest response body the gateway passes on (FunctionGraph's limit), after base64 decoding.
pub const MAX_RESPONSE_BODY_BYTES: usize = 6 * 1024 * 1024;

/// The event for `call`, with `request_id` in its request context.
pub fn event(call: &HttpCall, request_id: &str) -> Bytes {
    let mut headers = Map::new();
    for (name, value) in &call.headers {
        if name == http::header::AUTHORIZATION {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        // Repeated headers are joined, as a proxy folding them would.
        match headers.get_mut(name.as_str()) {
            Some(Value::String(before)) => {
                before.push(',');
                before.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    if let Some(ip) = call.client {
        headers
            .entry("x-forwarded-for")
            .or_insert_with(|| Value::String(ip.to_string()));
    }
    let mut query = Map::new();
    for pair in call.path_and_query.query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        query.insert(percent_decode(k), Value::String(percent_decode(v)));
    }
    let event = json!({
        "body": STANDARD.encode(&call.body),
        "requestContext": {
            "apiId": "wharf",
            "requestId": request_id,
            "stage": "RELEASE",
        },
        "queryStringParameters": query,
        "httpMethod": call.method.as_str(),
        "pathParameters": {},
        "headers": headers,
        "path": percent_decode(call.path_and_query.path()),
        "isBase64Encoded": true,
    });
    Bytes::from(serde_json::to_vec(&event).expect("a JSON value serializes"))
}

/// `%xx` decoded, `+` as a space (form encoding, as gateways decode queries); invalid escapes
/// are kept as they are; the result is UTF-8 (invalid sequences replaced).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The HTTP response the function's answer describes.
#[derive(Debug)]
pub struct GatewayResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Reads the function's answer; `Err` says, for the caller, what is wrong with it.
pub fn response(answer: &[u8]) -> Result<GatewayResponse, String> {
    const FORM: &str = "an API-gateway answer must be a JSON object \
        {\"isBase64Encoded\": bool, \"statusCode\": int, \"headers\": {..}, \"body\": \"...\"}";
    let v: Value = serde_json::from_slice(answer)
        .map_err(|e| format!("the function's answer is not JSON ({e}); {FORM}"))?;
    let Value::Object(o) = v else {
        return Err(format!(
            "the function's answer is JSON but not an object; {FORM}"
        ));
    };
    let status = match o.get("statusCode") {
        None => return Err(format!("the function's answer has no statusCode; {FORM}")),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .and_then(|n| StatusCode::from_u16(n).ok())
            .filter(|s| (200..=599).contains(&s.as_u16()))
            .ok_or_else(|| {
                format!("the function's statusCode {n} is not an HTTP status (200 to 599)")
            })?,
        Some(other) => {
            return Err(format!(
                "the function's statusCode must be an integer, not {other}"
            ));
        }
    };
    let base64 = match o.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "the function's isBase64Encoded must be true or false, not {other}"
            ));
        }
    };
    let body = match o.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if base64 => {
            STANDARD.decode(s.trim()).map(Bytes::from).map_err(|e| {
                format!(
                    "the function's body is not valid base64 although isBase64Encoded is true: {e}"
                )
            })?
        }
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(other) => {
            return Err(format!(
                "the function's body must be a string (base64 when isBase64Encoded), not {}",
                kind(other)
            ));
        }
    };
    if body.len() > MAX_RESPONSE_BODY_BYTES {
        return Err(format!(
            "the function's response body is {} bytes, more than the limit of {} bytes",
            body.len(),
            MAX_RESPONSE_BODY_BYTES
        ));
    }
    let mut headers = HeaderMap::new();
    match o.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    other => {
                        return Err(format!(
                            "the function's header {k:?} must be a string, not {}",
                            kind(other)
                        ));
                    }
                };
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("the function's header name {k:?} is not valid"))?;
                let value = HeaderValue::from_str(&text)
                    .map_err(|_| format!("the function's header {k:?} has an invalid value"))?;
                headers.append(name, value);
            }
        }
        Some(other) => {
            return Err(format!(
                "the function's headers must be an object of strings, not {}",
                kind(other)
            ));
        }
    }
    Ok(GatewayResponse {
        status,
        headers,
        body,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(target: &str, body: &'static [u8]) -> HttpCall {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.test"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert("authorization", HeaderValue::from_static("Bearer secret"));
        HttpCall {
            method: http::Method::PUT,
            path_and_query: target.parse().unwrap(),
            headers,
            body: Bytes::from_static(body),
            client: Some("10.0.0.7".parse().unwrap()),
        }
    }

    #[test]
    fn the_event_carries_the_request_with_a_base64_body() {
        let e: Value = serde_json::from_slice(&event(
            &call("/a%20b/c?k=v%26w&flag&x=1+2", b"\x00\xffbin"),
            "r-1",
        ))
        .unwrap();
        assert_eq!(e["httpMethod"], "PUT");
        assert_eq!(e["path"], "/a b/c");
        assert_eq!(e["isBase64Encoded"], true);
        assert_eq!(
            STANDARD.decode(e["body"].as_str().unwrap()).unwrap(),
            b"\x00\xffbin"
        );
        assert_eq!(
            e["queryStringParameters"],
            json!({"k": "v&w", "flag": "", "x": "1 2"})
        );
        assert_eq!(e["headers"]["host"], "example.test");
        assert_eq!(e["headers"]["x-multi"], "a,b");
        assert_eq!(e["headers"]["x-forwarded-for"], "10.0.0.7");
        assert!(
            e["headers"].get("authorization").is_none(),
            "Wharf's token stays out"
        );
        assert_eq!(e["requestContext"]["requestId"], "r-1");
        assert_eq!(e["requestContext"]["stage"], "RELEASE");
        assert_eq!(e["pathParameters"], json!({}));
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%E4%BD%A0"), "你");
    }

    #[test]
    fn a_well_formed_answer_becomes_the_response() {
        let r = response(
            br#"{"isBase64Encoded":true,"statusCode":201,"headers":{"content-type":"image/png","x-n":3},"body":"AP8="}"#,
        )
        .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.headers["content-type"], "image/png");
        assert_eq!(r.headers["x-n"], "3");
        assert_eq!(&r.body[..], b"\x00\xff");
        let plain = response(br#"{"statusCode":200,"body":"hi"}"#).unwrap();
        assert_eq!(&plain.body[..], b"hi");
    }

    #[test]
    fn a_malformed_answer_says_what_is_wrong() {
        for (answer, says) in [
            (&b"Hello"[..], "is not JSON"),
            (b"[1]", "not an object"),
            (b"{\"body\":\"x\"}", "has no statusCode"),
            (b"{\"statusCode\":\"200\"}", "must be an integer"),
            (b"{\"statusCode\":42}", "not an HTTP status"),
            (
                b"{\"statusCode\":200,\"isBase64Encoded\":true,\"body\":\"!!\"}",
                "not valid base64",
            ),
            (b"{\"statusCode\":200,\"body\":{}}", "must be a string"),
            (
                b"{\"statusCode\":200,\"headers\":[]}",
                "must be an object of strings",
            ),
            (
                b"{\"statusCode\":200,\"headers\":{\"a b\":\"x\"}}",
                "header name \"a b\"",
            ),
            (
                b"{\"statusCode\":200,\"isBase64Encoded\":\"yes\"}",
                "true or false",
            ),
        ] {
            let e = response(answer).unwrap_err();
            assert!(e.contains(says), "{}: {e}", String::from_utf8_lossy(answer));
        }
        let big = format!(
            "{{\"statusCode\":200,\"body\":\"{}\"}}",
            "x".repeat(MAX_RESPONSE_BODY_BYTES + 1)
        );
        assert!(
            response(big.as_bytes())
                .unwrap_err()
                .contains("more than the limit")
        );
    }
}
