//! The registry client: `oci-client` for the HTTP and the `WWW-Authenticate` dance, with our own
//! error mapping, re-authentication on 401/403, and a bound on manifest sizes.
//!
//! Redirects (registries answer blob GETs with 307 to S3 and the like) are followed by reqwest's
//! default policy, which drops `Authorization` whenever the host, port or scheme changes, so the
//! registry's token never reaches the storage host. Layers that carry `urls` (non-distributable
//! and foreign layers) are tried at the registry first, then at each http(s) URL, without
//! credentials (oci-client's rule, after CVE-2020-15157); the bytes are verified by digest like
//! any blob.
//!
//! Manifests are fetched by us (oci-client reads a manifest whole before anyone can check its
//! size): a plain GET with the token oci-client's `auth` obtained, read at most
//! [`MAX_MANIFEST_BYTES`], refused at once when `Content-Length` says more. `oci-client` streams
//! blobs; we verify their digests and sizes again while streaming (see `blobs`), because a blob
//! is written to disk before `oci-client`'s own check would fire at the end of the stream.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use oci_client::Client;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol, SizedStream};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth as OciAuth;

use crate::RegistryAuth;
use crate::credentials::RegistrySettings;
use crate::digest::Digest;
use crate::error::{ImageError, human_bytes};
use crate::manifest::ACCEPTED_MANIFEST_TYPES;
use crate::reference::ImageReference;

/// Largest manifest or index accepted (containerd uses the same bound). Manifests are read into
/// memory, so an unbounded one would be a denial of service by the registry.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// How long to wait for a TCP (and TLS) connection to a registry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a registry may stay silent in the middle of a response before the pull fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
const USER_AGENT: &str = concat!("wharf/", env!("CARGO_PKG_VERSION"));

/// What a request was for, to word errors.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fetch<'a> {
    Manifest,
    Blob(&'a str),
}

/// How our own manifest requests authenticate: not at all until the registry answers 401/403
/// (credentials are never volunteered), then with the token its challenge led to, or with the
/// basic credentials when it asked for no token.
#[derive(Clone, Debug)]
enum ManifestAuth {
    None,
    Bearer(String),
    Basic,
}

/// Most bytes of an error answer read (for its message).
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// How many times one request is retried with a fresh token after 401/403: a token can run out
/// again before the retry reaches the registry when other layers share it.
const MAX_REAUTH_ATTEMPTS: usize = 3;

/// A client for one repository of one registry, with one set of credentials.
pub(crate) struct RegistryClient {
    client: Client,
    auth: OciAuth,
    /// What to check when the credentials are refused (their source).
    check: String,
    /// For manifests, which we fetch ourselves to bound what is read.
    http: reqwest::Client,
    /// How manifest requests authenticate, once the registry has asked.
    manifest_auth: std::sync::Mutex<ManifestAuth>,
    /// Whether plain HTTP is used (loopback or listed as insecure).
    plain_http: bool,
    reference: ImageReference,
    oci_ref: oci_client::Reference,
}

/// A blob to fetch: its digest, and where else it may be found (`urls` of non-distributable
/// layers).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlobSource<'a> {
    pub(crate) digest: &'a Digest,
    pub(crate) size: u64,
    pub(crate) media_type: &'a str,
    pub(crate) urls: &'a [String],
}

impl RegistryClient {
    pub(crate) fn new(
        reference: &ImageReference,
        auth: &RegistryAuth,
        settings: &RegistrySettings,
    ) -> Result<RegistryClient, ImageError> {
        let plain_http =
            reference.is_loopback_registry() || settings.is_insecure(&reference.registry);
        let (auth, check) = settings.auth_for(&reference.registry, auth);
        let protocol = if plain_http {
            ClientProtocol::HttpsExcept(vec![reference.registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let setup_error = |detail: String| ImageError::Registry {
            registry: reference.registry.clone(),
            reference: reference.to_string(),
            what: "the client set-up".into(),
            detail,
        };
        let client = Client::try_from(config).map_err(|e| setup_error(e.to_string()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| setup_error(e.to_string()))?;
        let auth = match auth {
            RegistryAuth::Anonymous => OciAuth::Anonymous,
            RegistryAuth::Basic { username, password } => OciAuth::Basic(username, password),
        };
        Ok(RegistryClient {
            client,
            auth,
            check,
            http,
            manifest_auth: std::sync::Mutex::new(ManifestAuth::None),
            plain_http,
            oci_ref: reference.to_oci(),
            reference: reference.clone(),
        })
    }

    /// Fetches a manifest or index by the reference's tag or digest, or by `digest`. Returns the
    /// bytes and their sha256 digest, checked against the digest asked for.
    pub(crate) async fn manifest(
        &self,
        digest: Option<&Digest>,
    ) -> Result<(Bytes, Digest), ImageError> {
        let target = match digest {
            Some(d) => self.oci_ref.clone_with_digest(d.to_string()),
            None => self.oci_ref.clone(),
        };
        let bytes = self.manifest_bounded(&target).await?;
        let actual = Digest::of(&bytes);
        let expected = digest.or(self.reference.digest.as_ref());
        if let Some(expected) = expected.filter(|e| **e != actual) {
            return Err(ImageError::Corrupt {
                reference: self.reference.to_string(),
                digest: expected.to_string(),
                reason: format!("the registry sent a manifest whose digest is {actual}"),
            });
        }
        Ok((bytes, actual))
    }

    /// GETs a manifest ourselves, so that at most [`MAX_MANIFEST_BYTES`] are ever read
    /// (oci-client reads a manifest whole before anyone can look at its size). Tokens come from
    /// oci-client's `auth` (the `WWW-Authenticate` dance), which also caches them for the blob
    /// requests; basic credentials are sent as they are when the registry asks for no token.
    async fn manifest_bounded(&self, target: &oci_client::Reference) -> Result<Bytes, ImageError> {
        use futures::StreamExt as _;
        let map = |e: OciDistributionError| self.map_error(e, Fetch::Manifest);
        let url = format!(
            "{scheme}://{host}/v2/{repository}/manifests/{reference}",
            scheme = if self.plain_http { "http" } else { "https" },
            host = target.resolve_registry(),
            repository = target.repository(),
            reference = target
                .digest()
                .or(target.tag())
                .unwrap_or(crate::reference::DEFAULT_TAG),
        );
        let mut attempts = 0;
        let response = loop {
            let how = self
                .manifest_auth
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let request = self
                .http
                .get(&url)
                .header(reqwest::header::ACCEPT, ACCEPTED_MANIFEST_TYPES.join(", "));
            let request = match (how, &self.auth) {
                (ManifestAuth::Bearer(token), _) => request.bearer_auth(token),
                (ManifestAuth::Basic, OciAuth::Basic(user, pass)) => {
                    request.basic_auth(user, Some(pass))
                }
                _ => request,
            };
            let response = request.send().await.map_err(|e| map(e.into()))?;
            let status = response.status().as_u16();
            if (status == 401 || status == 403) && attempts < MAX_REAUTH_ATTEMPTS {
                attempts += 1;
                tracing::debug!(
                    registry = %self.reference.registry,
                    status,
                    attempt = attempts,
                    "authenticating for a manifest"
                );
                let how = match self
                    .client
                    .auth(target, &self.auth, RegistryOperation::Pull)
                    .await
                    .map_err(map)?
                {
                    Some(token) => ManifestAuth::Bearer(token),
                    None if matches!(self.auth, OciAuth::Basic(..)) => ManifestAuth::Basic,
                    // Nothing to authenticate with: the answer stands.
                    None => break response,
                };
                *self.manifest_auth.lock().unwrap_or_else(|p| p.into_inner()) = how;
                continue;
            }
            break response;
        };
        let status = response.status();
        if !status.is_success() {
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { break };
                body.extend_from_slice(&chunk);
                if body.len() > MAX_ERROR_BODY_BYTES {
                    body.truncate(MAX_ERROR_BODY_BYTES);
                    break;
                }
            }
            return Err(map(status_error(status.as_u16(), &body, &url)));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES)
        {
            return Err(manifest_too_large(&self.reference));
        }
        let mut bytes = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| map(e.into()))?;
            if (bytes.len() + chunk.len()) as u64 > MAX_MANIFEST_BYTES {
                return Err(manifest_too_large(&self.reference));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(bytes))
    }

    /// Starts streaming a blob: from the registry, else (for a layer with `urls`) from the first
    /// URL that serves it. The stream is verified by `blobs::BlobStore::write_stream`.
    pub(crate) async fn blob(&self, blob: BlobSource<'_>) -> Result<SizedStream, ImageError> {
        let urls: Vec<String> = blob
            .urls
            .iter()
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .cloned()
            .collect();
        if urls.len() < blob.urls.len() {
            tracing::warn!(
                blob = %blob.digest,
                "ignoring layer URLs that are not http or https"
            );
        }
        let descriptor = oci_client::manifest::OciDescriptor {
            media_type: blob.media_type.to_owned(),
            digest: blob.digest.to_string(),
            size: i64::try_from(blob.size).unwrap_or(i64::MAX),
            urls: (!urls.is_empty()).then_some(urls),
            ..Default::default()
        };
        self.with_reauth(|| self.client.pull_blob_stream(&self.oci_ref, &descriptor))
            .await
            .map_err(|e| self.map_error(e, Fetch::Blob(blob.digest.as_str())))
    }

    /// Runs `op`; while the registry answers 401 or 403 (an expired or missing token), fetches a
    /// new token and runs it again, up to [`MAX_REAUTH_ATTEMPTS`] times.
    async fn with_reauth<T, F, Fut>(&self, op: F) -> Result<T, OciDistributionError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempts = 0;
        loop {
            match op().await {
                Err(e) if auth_status(&e).is_some() && attempts < MAX_REAUTH_ATTEMPTS => {
                    attempts += 1;
                    tracing::debug!(
                        registry = %self.reference.registry,
                        status = auth_status(&e),
                        attempt = attempts,
                        "re-authenticating"
                    );
                    self.client
                        .auth(&self.oci_ref, &self.auth, RegistryOperation::Pull)
                        .await?;
                }
                result => return result,
            }
        }
    }

    pub(crate) fn map_error(&self, err: OciDistributionError, fetch: Fetch<'_>) -> ImageError {
        map_error(
            &self.reference,
            &self.auth,
            &self.check,
            self.plain_http,
            err,
            fetch,
        )
    }
}

pub(crate) fn manifest_too_large(r: &ImageReference) -> ImageError {
    ImageError::TooLarge {
        subject: format!("image {r}"),
        what: "the manifest",
        limit: human_bytes(MAX_MANIFEST_BYTES),
        constant: "MAX_MANIFEST_BYTES",
        hint: "this is not a normal image manifest",
    }
}

/// The error an unsuccessful answer stands for, as oci-client words it (so `map_error` treats
/// manifests and blobs alike): 401, an OCI error envelope, or the status and body.
fn status_error(code: u16, body: &[u8], url: &str) -> OciDistributionError {
    if code == 401 {
        return OciDistributionError::UnauthorizedError { url: url.into() };
    }
    if (400..500).contains(&code)
        && let Ok(envelope) = serde_json::from_slice::<oci_client::errors::OciEnvelope>(body)
    {
        return OciDistributionError::RegistryError {
            envelope,
            url: url.into(),
        };
    }
    OciDistributionError::ServerError {
        code,
        url: url.into(),
        message: error_excerpt(body),
    }
}

/// What a registry's error body says, cut to a length fit for an error message (the body is
/// the registry's to choose: it may be a whole HTML page).
fn error_excerpt(body: &[u8]) -> String {
    const MAX_CHARS: usize = 300;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], body.len()),
        None => text.to_owned(),
    }
}

/// The HTTP status an authentication/authorisation failure stands for, if `err` is one.
fn auth_status(err: &OciDistributionError) -> Option<u16> {
    match err {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Some(401),
        OciDistributionError::ServerError { code, .. } if *code == 401 || *code == 403 => {
            Some(*code)
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().find_map(|e| match e.code {
                OciErrorCode::Unauthorized => Some(401),
                OciErrorCode::Denied => Some(403),
                _ => None,
            })
        }
        _ => None,
    }
}

fn map_error(
    reference: &ImageReference,
    auth: &OciAuth,
    check: &str,
    plain_http: bool,
    err: OciDistributionError,
    fetch: Fetch<'_>,
) -> ImageError {
    let registry = reference.registry.clone();
    let not_found = || match fetch {
        Fetch::Manifest => ImageError::NotFound {
            reference: reference.to_string(),
            registry: registry.clone(),
        },
        Fetch::Blob(digest) => ImageError::BlobNotFound {
            reference: reference.to_string(),
            registry: registry.clone(),
            digest: digest.to_owned(),
        },
    };
    if let Some(status) = auth_status(&err) {
        let repository = reference.repository.clone();
        return match auth {
            OciAuth::Anonymous => ImageError::CredentialsRequired {
                registry,
                repository,
                status,
            },
            _ => ImageError::Unauthorized {
                registry,
                repository,
                status,
                check: check.to_owned(),
            },
        };
    }
    let what = match fetch {
        Fetch::Manifest => "the manifest".to_owned(),
        Fetch::Blob(d) => format!("blob {d}"),
    };
    let detail = match err {
        OciDistributionError::RequestError(e) if !plain_http && is_tls_error(&e) => format!(
            "the TLS handshake failed ({}); if {registry} serves plain HTTP, start wharf serve \
             with --insecure-registry {registry}",
            transport_reason(&e)
        ),
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
            return ImageError::Unreachable {
                registry,
                reason: transport_reason(&e),
            };
        }
        OciDistributionError::RequestError(e) => transport_reason(&e),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                return not_found();
            }
            if codes.contains(&&OciErrorCode::Toomanyrequests) {
                "it is rate-limiting this client (429); retry later or authenticate".to_owned()
            } else {
                envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => return not_found(),
        OciDistributionError::ServerError { code, message, .. } => {
            let message: String = message.trim().chars().take(200).collect();
            format!("http status {code}: {message}")
        }
        OciDistributionError::DigestError(e) => {
            return ImageError::Corrupt {
                reference: reference.to_string(),
                digest: match fetch {
                    Fetch::Blob(d) => d.to_owned(),
                    Fetch::Manifest => reference
                        .digest
                        .as_ref()
                        .map_or_else(|| "(manifest)".to_owned(), ToString::to_string),
                },
                reason: match fetch {
                    Fetch::Blob(_) => e.to_string(),
                    Fetch::Manifest => format!("the manifest sent does not match it ({e})"),
                },
            };
        }
        other => other.to_string(),
    };
    ImageError::Registry {
        registry,
        reference: reference.to_string(),
        what,
        detail,
    }
}

/// Whether a transport error is a TLS failure (a plain-HTTP server answers a TLS hello with
/// bytes rustls calls a corrupt message).
fn is_tls_error(err: &reqwest::Error) -> bool {
    fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
        if e.is::<rustls::Error>() {
            return true;
        }
        // io::Error's `source` skips the error it wraps (often another io::Error around the
        // rustls error): look inside.
        e.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .is_some_and(|inner| is_tls(inner))
    }
    let mut source = err.source();
    while let Some(s) = source {
        if is_tls(s) {
            return true;
        }
        source = s.source();
    }
    false
}

/// The innermost cause of a transport error, worded for people (`connection refused`).
pub(crate) fn transport_reason(err: &reqwest::Error) -> String {
    let mut innermost: &dyn std::error::Error = err;
    let mut source = err.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                std::io::ErrorKind::TimedOut => return "connection timed out".into(),
                _ => {}
            }
        }
        innermost = s;
        source = s.source();
    }
    if err.is_timeout() {
        return "timed out".into();
    }
    innermost.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_error_bodies_are_cut_short() {
        assert_eq!(super::error_excerpt(b"  denied \n"), "denied");
        let page = "x".repeat(10_000);
        let cut = super::error_excerpt(page.as_bytes());
        assert!(cut.starts_with(&"x".repeat(300)), "{cut}");
        assert!(cut.ends_with("… (10000 bytes in all)"), "{cut}");
        assert!(cut.len() < 400);
    }

    use super::*;
    use oci_client::errors::{OciEnvelope, OciError};

    fn reference() -> ImageReference {
        ImageReference::parse("127.0.0.1:5000/hello:latest").unwrap()
    }

    fn envelope(code: OciErrorCode) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: "m".into(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "u".into(),
        }
    }

    #[test]
    fn unknown_tag_and_repository_are_not_found() {
        for code in [OciErrorCode::ManifestUnknown, OciErrorCode::NameUnknown] {
            let e = map_error(
                &reference(),
                &OciAuth::Anonymous,
                "check registry_auth",
                true,
                envelope(code),
                Fetch::Manifest,
            );
            assert!(matches!(e, ImageError::NotFound { .. }), "{e}");
        }
        let e = map_error(
            &reference(),
            &OciAuth::Anonymous,
            "check registry_auth",
            true,
            envelope(OciErrorCode::BlobUnknown),
            Fetch::Blob("sha256:x"),
        );
        assert!(matches!(e, ImageError::BlobNotFound { .. }), "{e}");
    }

    #[test]
    fn auth_failures_depend_on_whether_credentials_were_given() {
        let unauthorized = || OciDistributionError::UnauthorizedError { url: "u".into() };
        let e = map_error(
            &reference(),
            &OciAuth::Anonymous,
            "check registry_auth",
            true,
            unauthorized(),
            Fetch::Manifest,
        );
        assert!(e.to_string().contains("requires credentials"), "{e}");
        let basic = OciAuth::Basic("u".into(), "p".into());
        let e = map_error(
            &reference(),
            &basic,
            "check registry_auth",
            true,
            unauthorized(),
            Fetch::Manifest,
        );
        assert_eq!(
            e.to_string(),
            "registry 127.0.0.1:5000 refused the credentials for repository hello (401): check \
             registry_auth"
        );
        let e = map_error(
            &reference(),
            &basic,
            "check registry_auth",
            true,
            envelope(OciErrorCode::Denied),
            Fetch::Manifest,
        );
        assert!(e.to_string().contains("(403)"), "{e}");
    }
}
