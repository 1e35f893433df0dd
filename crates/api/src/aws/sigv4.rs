//! AWS Signature Version 4, the server's side: rebuild the canonical request from what arrived,
//! derive the signing key from the secret, and compare signatures in constant time.
//!
//! Only the `Authorization: AWS4-HMAC-SHA256 …` header form is accepted (no presigned URLs, no
//! unsigned or streaming payloads: over plain HTTP every SDK signs the body's hash).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method};
use ring::{digest, hmac};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far the request's `X-Amz-Date` may be from the server's clock, as AWS allows.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// The header or the request does not have what a SigV4 request must have.
    #[error("{0}")]
    Malformed(String),
    /// The signature is well-formed but is not the one the secret gives.
    #[error(
        "The request signature we calculated does not match the signature you provided. Check \
         your AWS Secret Access Key and signing method."
    )]
    Mismatch,
    #[error(
        "Signature expired: {amz_date} is more than 15 minutes away from the server's time; \
         check this machine's clock"
    )]
    Expired { amz_date: String },
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…,
/// Signature=…` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key: String,
    /// `YYYYMMDD`.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lowercase names, `;`-separated, as signed.
    pub signed_headers: String,
    pub signature: Vec<u8>,
}

fn malformed(why: impl Into<String>) -> SigV4Error {
    SigV4Error::Malformed(why.into())
}

impl Authorization {
    /// Parses the header's value (after the algorithm name has been checked by the caller, or
    /// with it).
    pub fn parse(value: &str) -> Result<Authorization, SigV4Error> {
        let rest = value.trim().strip_prefix(ALGORITHM).ok_or_else(|| {
            malformed(format!(
                "the Authorization header must start with {ALGORITHM}"
            ))
        })?;
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let Some((k, v)) = part.trim().split_once('=') else {
                return Err(malformed(format!(
                    "Authorization header: {:?} is not a key=value pair",
                    part.trim()
                )));
            };
            match k {
                "Credential" => credential = Some(v),
                "SignedHeaders" => signed_headers = Some(v),
                "Signature" => signature = Some(v),
                _ => {}
            }
        }
        let missing = |what: &str| {
            malformed(format!(
                "Authorization header requires '{what}' parameter (Credential, SignedHeaders, \
                 Signature)"
            ))
        };
        let credential = credential.ok_or_else(|| missing("Credential"))?;
        let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
        let signature = signature.ok_or_else(|| missing("Signature"))?;
        // The access key id may itself contain `/`: the scope is the last four parts.
        let mut scope = credential.rsplitn(5, '/');
        let terminator = scope.next();
        let service = scope.next();
        let region = scope.next();
        let date = scope.next();
        let access_key = scope.next();
        let (Some(access_key), Some(date), Some(region), Some(service), Some("aws4_request")) =
            (access_key, date, region, service, terminator)
        else {
            return Err(malformed(format!(
                "Credential {credential:?} must be <access key id>/<YYYYMMDD>/<region>/\
                 <service>/aws4_request"
            )));
        };
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed(format!(
                "Credential: the date {date:?} must be YYYYMMDD"
            )));
        }
        let signature =
            hex::decode(signature).map_err(|_| malformed("Signature must be hexadecimal"))?;
        Ok(Authorization {
            access_key: access_key.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
            signed_headers: signed_headers.to_string(),
            signature,
        })
    }

    fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// What of a request the signature covers.
pub struct SignedRequest<'a> {
    pub method: &'a Method,
    /// The path as it arrived (still percent-encoded).
    pub path: &'a str,
    /// The query as it arrived, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Percent-encodes everything but the unreserved characters (and `/` when `keep_slash`), as
/// SigV4 wants.
fn uri_encode(input: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(input.len());
    for &b in input {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(input: &str) -> Vec<u8> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// `key=value` pairs, each decoded and re-encoded, sorted by key then value.
fn canonical_query(query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// The canonical request: method, URI (the received path encoded once more, as AWS services
/// other than S3 do), query, signed headers, their names, and the payload's hash.
pub fn canonical_request(
    req: &SignedRequest<'_>,
    signed_headers: &str,
) -> Result<String, SigV4Error> {
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"host") {
        return Err(malformed("SignedHeaders must include host"));
    }
    let mut headers = String::new();
    for name in &names {
        let values: Vec<String> = req
            .headers
            .get_all(*name)
            .iter()
            .map(|v| {
                v.to_str()
                    .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                    .map_err(|_| malformed(format!("the signed header {name} is not ASCII")))
            })
            .collect::<Result<_, _>>()?;
        if values.is_empty() {
            return Err(malformed(format!(
                "the signed header {name} is not in the request"
            )));
        }
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let body_hash = sha256_hex(req.body);
    if let Some(claimed) = req.headers.get("x-amz-content-sha256")
        && claimed.as_bytes() != body_hash.as_bytes()
    {
        return Err(malformed(
            "x-amz-content-sha256 is not the SHA-256 of the body (unsigned payloads are not \
             accepted)",
        ));
    }
    Ok(format!(
        "{}\n{}\n{}\n{headers}\n{signed_headers}\n{body_hash}",
        req.method.as_str(),
        uri_encode(req.path.as_bytes(), true),
        canonical_query(req.query),
    ))
}

fn hmac_sign(key: &[u8], data: &str) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
}

/// The key of `secret` for one day, region and service.
fn signing_key(secret: &str, auth: &Authorization) -> hmac::Key {
    let k_date = hmac_sign(format!("AWS4{secret}").as_bytes(), &auth.date);
    let k_region = hmac_sign(k_date.as_ref(), &auth.region);
    let k_service = hmac_sign(k_region.as_ref(), &auth.service);
    let k_signing = hmac_sign(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    humantime::parse_rfc3339(&format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    ))
    .ok()
}

/// Checks `auth`'s signature of `req` with `secret`, and that it was made within
/// [`MAX_CLOCK_SKEW`] of `now`.
pub fn verify(
    req: &SignedRequest<'_>,
    auth: &Authorization,
    secret: &str,
    now: SystemTime,
) -> Result<(), SigV4Error> {
    let amz_date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| malformed("a SigV4 request needs an X-Amz-Date header"))?;
    let signed_at = parse_amz_date(amz_date)
        .ok_or_else(|| malformed(format!("X-Amz-Date {amz_date:?} must be YYYYMMDDTHHMMSSZ")))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(malformed(format!(
            "Credential should be scoped to a valid date: {} is not the date of X-Amz-Date \
             {amz_date}",
            auth.date
        )));
    }
    let skew = match now.duration_since(signed_at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > MAX_CLOCK_SKEW {
        return Err(SigV4Error::Expired {
            amz_date: amz_date.to_string(),
        });
    }
    let canonical = canonical_request(req, &auth.signed_headers)?;
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        auth.scope(),
        sha256_hex(canonical.as_bytes())
    );
    hmac::verify(
        &signing_key(secret, auth),
        string_to_sign.as_bytes(),
        &auth.signature,
    )
    .map_err(|_| SigV4Error::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn at(amz_date: &str) -> SystemTime {
        parse_amz_date(amz_date).unwrap()
    }

    /// `get-vanilla` of AWS's SigV4 test suite (the signature botocore computes too).
    #[test]
    fn aws_test_suite_get_vanilla() {
        let h = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ]);
        let auth = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        )
        .unwrap();
        let req = SignedRequest {
            method: &Method::GET,
            path: "/",
            query: None,
            headers: &h,
            body: b"",
        };
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        verify(&req, &auth, secret, at("20150830T123600Z")).unwrap();
        assert_eq!(
            verify(&req, &auth, "another secret", at("20150830T123600Z")),
            Err(SigV4Error::Mismatch)
        );
        assert!(matches!(
            verify(&req, &auth, secret, at("20150830T130000Z")),
            Err(SigV4Error::Expired { .. })
        ));
    }

    /// A Lambda Invoke as botocore 1.44.8 signs it (`SigV4Auth.add_auth` with the clock fixed):
    /// an ARN in the path (encoded twice in the canonical URI), a query, a body.
    #[test]
    fn botocore_lambda_invoke() {
        let h = headers(&[
            ("host", "127.0.0.1:9800"),
            ("x-amz-date", "20261203T102500Z"),
            ("x-amz-invocation-type", "RequestResponse"),
            ("x-amz-log-type", "Tail"),
        ]);
        let auth = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=tok3n/20261203/us-east-1/lambda/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-invocation-type;x-amz-log-type, \
             Signature=59926a6569477ad29fb5434b77d5954bc2146fc3785bbd1773b5ed5cdb07a02f",
        )
        .unwrap();
        assert_eq!(auth.access_key, "tok3n");
        assert_eq!(auth.service, "lambda");
        let mut req = SignedRequest {
            method: &Method::POST,
            path: "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Ahello/invocations",
            query: Some("Qualifier=%24LATEST"),
            headers: &h,
            body: br#"{"name": "wharf"}"#,
        };
        let now = at("20261203T102900Z");
        verify(&req, &auth, "tok3n", now).unwrap();
        req.body = br#"{"name": "other"}"#;
        assert_eq!(verify(&req, &auth, "tok3n", now), Err(SigV4Error::Mismatch));
    }

    #[test]
    fn canonical_query_sorts_and_encodes_once() {
        assert_eq!(canonical_query(None), "");
        assert_eq!(
            canonical_query(Some("b=2&a=%24LATEST&a=1&c")),
            "a=%24LATEST&a=1&b=2&c="
        );
        assert_eq!(canonical_query(Some("k=a b")), "k=a%20b");
    }

    #[test]
    fn malformed_headers_are_named() {
        let e = Authorization::parse("AWS4-HMAC-SHA256 Credential=k/2026/us/lambda/aws4_request")
            .unwrap_err();
        assert!(e.to_string().contains("SignedHeaders"), "{e}");
        let e = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=k/20261203/lambda/aws4_request, SignedHeaders=host, \
             Signature=00",
        )
        .unwrap_err();
        assert!(e.to_string().contains("<region>"), "{e}");
        // An access key id with a `/` in it keeps it.
        let a = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=a/b/20261203/r/lambda/aws4_request, SignedHeaders=host, \
             Signature=00",
        )
        .unwrap();
        assert_eq!(a.access_key, "a/b");
    }

    #[test]
    fn host_must_be_signed_and_the_body_hash_must_be_the_body_s() {
        let h = headers(&[("host", "h"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")]);
        let req = SignedRequest {
            method: &Method::POST,
            path: "/",
            query: None,
            headers: &h,
            body: b"x",
        };
        assert!(canonical_request(&req, "x-amz-date").is_err());
        let e = canonical_request(&req, "host").unwrap_err();
        assert!(e.to_string().contains("x-amz-content-sha256"), "{e}");
    }
}
