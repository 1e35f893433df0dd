//! A loopback front for a real registry that behaves the way registries out there do, or the way
//! an attacker would: bearer tokens that stop working after a few requests (answered with 401 or,
//! like some registries, 403), blob GETs redirected (307) to "blob storage" on another loopback
//! address and port, blobs the registry does not have, and tampered bytes for chosen blobs and
//! manifests. It records every request it sees, with its `Authorization` header, so tests can
//! check what a client sent where.
//!
//! The storage side also serves plain files (`serve_file`), standing in for the URLs of
//! non-distributable (foreign) layers.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The `service` the front names in its challenge.
pub const SERVICE: &str = "wharf-front-test";

/// What the front does besides forwarding.
#[derive(Clone, Debug, Default)]
pub struct FrontOptions {
    /// Require bearer tokens issued by the front's realm for these basic-auth credentials.
    pub token_auth: Option<(String, String)>,
    /// A token stops working after this many registry requests (a deterministic stand-in for a
    /// short lifetime: it runs out in the middle of a pull). `None`: never.
    pub token_uses: Option<usize>,
    /// How a request with a used-up token is answered: 401 (with a challenge) or 403 (`DENIED`,
    /// as some registries do).
    pub expired_status: Option<u16>,
    /// Answer blob GETs with 307 to the storage listener (127.0.0.2), which serves the blob.
    pub redirect_blobs: bool,
    /// Blobs (`sha256:…`) served with their last byte flipped.
    pub tamper_blobs: HashSet<String>,
    /// Manifests (the reference in the URL: a tag or a digest) served with a byte appended.
    pub tamper_manifests: HashSet<String>,
    /// Blobs (`sha256:…`) the front says the registry does not have (404 `BLOB_UNKNOWN`).
    pub hide_blobs: HashSet<String>,
}

/// Which listener saw a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The registry front (`Front::host`).
    Registry,
    /// The storage the front redirects to, and that serves files (`Front::storage_url`).
    Storage,
}

/// One request the front saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub listener: Listener,
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub status: u16,
}

struct State {
    backend: String,
    realm: String,
    storage: String,
    options: FrontOptions,
    /// Token → uses left.
    tokens: Mutex<HashMap<String, usize>>,
    issued: Mutex<usize>,
    files: Mutex<HashMap<String, Bytes>>,
    /// `name:reference` → (media type, bytes), served instead of the registry's.
    manifests: Mutex<HashMap<String, (String, Bytes)>>,
    /// Bytes of served manifests handed to connections.
    manifest_bytes_sent: Arc<AtomicU64>,
    seen: Mutex<Vec<Seen>>,
    client: reqwest::Client,
}

/// See the module docs. Stops serving on drop.
pub struct Front {
    addr: SocketAddr,
    storage_addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Front {
    /// Starts a front for the (anonymous) registry at `backend` (`127.0.0.1:PORT`); must run
    /// inside a tokio runtime.
    pub async fn start(backend: &str, options: FrontOptions) -> anyhow::Result<Front> {
        crate::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let storage_listener = tokio::net::TcpListener::bind("127.0.0.2:0").await?;
        let storage_addr = storage_listener.local_addr()?;
        let state = Arc::new(State {
            backend: format!("http://{backend}"),
            realm: format!("http://{addr}/token"),
            storage: format!("http://{storage_addr}"),
            options,
            tokens: Mutex::new(HashMap::new()),
            issued: Mutex::new(0),
            files: Mutex::new(HashMap::new()),
            manifests: Mutex::new(HashMap::new()),
            manifest_bytes_sent: Arc::new(AtomicU64::new(0)),
            seen: Mutex::new(Vec::new()),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        });
        let tasks = vec![
            serve(listener, state.clone(), Listener::Registry),
            serve(storage_listener, state.clone(), Listener::Storage),
        ];
        Ok(Front {
            addr,
            storage_addr,
            state,
            tasks,
        })
    }

    /// `127.0.0.1:PORT` of the registry front: pull from here.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.2:PORT`, the storage side.
    pub fn storage_url(&self) -> String {
        format!("http://{}", self.storage_addr)
    }

    /// Serves `bytes` at `storage_url()/files/<name>`; returns that URL.
    pub fn serve_file(&self, name: &str, bytes: impl Into<Bytes>) -> String {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(name.to_owned(), bytes.into());
        format!("{}/files/{name}", self.storage_url())
    }

    /// Serves `bytes` as manifest `repo:reference` (a tag or digest) instead of asking the
    /// registry: for manifests a registry would refuse to store (distribution refuses layer
    /// `urls` unless configured to allow them). Sent in chunks without a length.
    pub fn serve_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: Vec<u8>) {
        self.state.manifests.lock().unwrap().insert(
            format!("{repo}:{reference}"),
            (media_type.to_owned(), bytes.into()),
        );
    }

    /// How many bytes of manifests given to `serve_manifest` were sent (or buffered to send).
    pub fn manifest_bytes_sent(&self) -> u64 {
        self.state.manifest_bytes_sent.load(Ordering::Relaxed)
    }

    /// How many tokens the realm has issued.
    pub fn tokens_issued(&self) -> usize {
        *self.state.issued.lock().unwrap()
    }

    /// Every request seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    which: Listener,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.handle(which, req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// A whole body, or a streamed one.
type Body = Either<Full<Bytes>, Chunked>;

/// A body sent in 64 KiB chunks without a length (chunked encoding), counting what it hands to
/// the connection: a client that stops reading stops the count.
pub struct Chunked {
    bytes: Bytes,
    sent: Arc<AtomicU64>,
}

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.bytes.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.bytes.len().min(64 << 10);
        let chunk = self.bytes.split_to(n);
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Either::Left(Full::new(body.into())));
    *r.status_mut() = status;
    r
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// `/v2/<name>/<kind>/<reference>` → (name, reference) when kind matches.
fn split_v2<'a>(path: &'a str, kind: &str) -> Option<(&'a str, &'a str)> {
    let rest = path.strip_prefix("/v2/")?;
    let marker = format!("/{kind}/");
    let i = rest.rfind(&marker)?;
    Some((&rest[..i], &rest[i + marker.len()..]))
}

impl State {
    async fn handle(&self, which: Listener, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let response = match which {
            Listener::Registry => self.registry(&req, &path, authorization.as_deref()).await,
            Listener::Storage => self.storage(&req, &path).await,
        };
        self.seen.lock().unwrap().push(Seen {
            listener: which,
            method,
            path,
            authorization,
            status: response.status().as_u16(),
        });
        response
    }

    async fn registry(
        &self,
        req: &Request<Incoming>,
        path: &str,
        authorization: Option<&str>,
    ) -> Response<Body> {
        if path == "/token" {
            return self.token(authorization);
        }
        if self.options.token_auth.is_some() {
            let token = authorization.and_then(|v| v.strip_prefix("Bearer "));
            let mut tokens = self.tokens.lock().unwrap();
            match token.and_then(|t| tokens.get_mut(t)) {
                None => return self.challenge(path),
                Some(0) => {
                    return match self.options.expired_status {
                        Some(403) => respond(
                            StatusCode::FORBIDDEN,
                            r#"{"errors":[{"code":"DENIED","message":"token expired"}]}"#,
                        ),
                        _ => self.challenge(path),
                    };
                }
                Some(left) => {
                    if self.options.token_uses.is_some() {
                        *left -= 1;
                    }
                }
            }
        }
        if let Some((name, reference)) = split_v2(path, "manifests")
            && let Some((media_type, bytes)) = self
                .manifests
                .lock()
                .unwrap()
                .get(&format!("{name}:{reference}"))
                .cloned()
        {
            let mut r = Response::new(Either::Right(Chunked {
                bytes,
                sent: self.manifest_bytes_sent.clone(),
            }));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_str(&media_type).expect("ASCII"),
            );
            return r;
        }
        if let Some((name, digest)) = split_v2(path, "blobs") {
            if self.options.hide_blobs.contains(digest) {
                return respond(
                    StatusCode::NOT_FOUND,
                    r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
                );
            }
            if self.options.redirect_blobs && req.method() == http::Method::GET {
                let mut r = respond(StatusCode::TEMPORARY_REDIRECT, Bytes::new());
                let location = format!(
                    "{}/s/v2/{name}/blobs/{digest}?X-Amz-Signature=0123",
                    self.storage
                );
                r.headers_mut().insert(
                    http::header::LOCATION,
                    HeaderValue::from_str(&location).expect("ASCII"),
                );
                return r;
            }
        }
        self.forward(req, path).await
    }

    async fn storage(&self, req: &Request<Incoming>, path: &str) -> Response<Body> {
        if let Some(name) = path.strip_prefix("/files/") {
            return match self.files.lock().unwrap().get(name) {
                Some(bytes) => respond(StatusCode::OK, bytes.clone()),
                None => respond(StatusCode::NOT_FOUND, "no such file"),
            };
        }
        match path.strip_prefix("/s") {
            Some(v2) if v2.starts_with("/v2/") => self.forward(req, v2).await,
            _ => respond(StatusCode::NOT_FOUND, "no such object"),
        }
    }

    fn challenge(&self, path: &str) -> Response<Body> {
        let mut value = format!("Bearer realm=\"{}\",service=\"{SERVICE}\"", self.realm);
        if let Some((name, _)) = split_v2(path, "manifests").or_else(|| split_v2(path, "blobs")) {
            value.push_str(&format!(",scope=\"repository:{name}:pull\""));
        }
        let mut r = respond(
            StatusCode::UNAUTHORIZED,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&value).expect("ASCII"),
        );
        r
    }

    fn token(&self, authorization: Option<&str>) -> Response<Body> {
        let Some((user, pass)) = &self.options.token_auth else {
            return respond(StatusCode::NOT_FOUND, "no token service");
        };
        if authorization != Some(basic(user, pass).as_str()) {
            return respond(
                StatusCode::UNAUTHORIZED,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
            );
        }
        let token = format!("t{:032x}", rand::random::<u128>());
        let uses = self.options.token_uses.unwrap_or(usize::MAX);
        self.tokens.lock().unwrap().insert(token.clone(), uses);
        *self.issued.lock().unwrap() += 1;
        respond(
            StatusCode::OK,
            format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#),
        )
    }

    /// Forwards `path` (with the query) to the backend, tampering on the way back if told to.
    async fn forward(&self, req: &Request<Incoming>, path: &str) -> Response<Body> {
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let url = format!("{}{path}{query}", self.backend);
        let mut out = self.client.request(req.method().clone(), url);
        if let Some(v) = req.headers().get(http::header::ACCEPT) {
            out = out.header(http::header::ACCEPT, v.clone());
        }
        let resp = match out.send().await {
            Ok(r) => r,
            Err(e) => return respond(StatusCode::BAD_GATEWAY, e.to_string()),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let mut bytes = resp.bytes().await.unwrap_or_default().to_vec();
        if status.is_success() && req.method() == http::Method::GET {
            if let Some((_, digest)) = split_v2(path, "blobs")
                && self.options.tamper_blobs.contains(digest)
                && let Some(last) = bytes.last_mut()
            {
                *last ^= 0xff;
            }
            if let Some((_, reference)) = split_v2(path, "manifests")
                && self.options.tamper_manifests.contains(reference)
            {
                bytes.push(b'\n');
            }
        }
        let mut r = respond(status, bytes);
        for name in [
            http::header::CONTENT_TYPE,
            http::header::HeaderName::from_static("docker-content-digest"),
        ] {
            if let Some(v) = headers.get(&name) {
                r.headers_mut().insert(name, v.clone());
            }
        }
        r
    }
}
