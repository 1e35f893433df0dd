//! A registry that speaks the bearer-token dance, as Docker Hub, GHCR, Harbor and the cloud
//! registries do: a real (anonymous) distribution registry behind a loopback front that answers
//! `401` with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`, issues tokens at the realm
//! for the right basic-auth credentials, and forwards requests that carry a token it issued.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::registry::Registry;

/// The `service` the front names in its challenge.
pub const SERVICE: &str = "wharf-token-test";

struct Front {
    backend: String,
    realm: String,
    credentials: (String, String),
    issued: Mutex<HashSet<String>>,
    client: reqwest::Client,
}

/// See the module docs. Stops serving on drop.
pub struct TokenAuthRegistry {
    backend: Registry,
    addr: SocketAddr,
    front: Arc<Front>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenAuthRegistry {
    /// Starts the registry and its front; must run inside a tokio runtime.
    pub async fn start(user: &str, pass: &str) -> anyhow::Result<TokenAuthRegistry> {
        crate::install_crypto_provider();
        let backend = Registry::start()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let front = Arc::new(Front {
            backend: format!("http://{}", backend.host()),
            realm: format!("http://{addr}/token"),
            credentials: (user.to_string(), pass.to_string()),
            issued: Mutex::new(HashSet::new()),
            client: reqwest::Client::builder().no_proxy().build()?,
        });
        let serving = front.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let front = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let front = front.clone();
                        async move { Ok::<_, Infallible>(front.handle(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(TokenAuthRegistry {
            backend,
            addr,
            front,
            task,
        })
    }

    /// `127.0.0.1:PORT` of the front: pull from here.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The registry behind the front, anonymous: push test images there.
    pub fn backend(&self) -> &Registry {
        &self.backend
    }

    /// How many tokens the realm has issued.
    pub fn tokens_issued(&self) -> usize {
        self.front.issued.lock().unwrap().len()
    }
}

impl Drop for TokenAuthRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
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

impl Front {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if path == "/token" {
            return self.token(&req);
        }
        let authorized = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| self.issued.lock().unwrap().contains(t));
        if !authorized {
            return self.challenge(&path);
        }
        self.forward(req).await
    }

    fn challenge(&self, path: &str) -> Response<Full<Bytes>> {
        let mut value = format!("Bearer realm=\"{}\",service=\"{SERVICE}\"", self.realm);
        // /v2/<name>/(manifests|blobs)/<ref>: the scope names the repository.
        if let Some(rest) = path.strip_prefix("/v2/")
            && let Some(i) = rest.find("/manifests/").or_else(|| rest.find("/blobs/"))
        {
            value.push_str(&format!(",scope=\"repository:{}:pull\"", &rest[..i]));
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

    fn token(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let expected = basic(&self.credentials.0, &self.credentials.1);
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return respond(
                StatusCode::UNAUTHORIZED,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
            );
        }
        let token = format!("t{:032x}", rand::random::<u128>());
        self.issued.lock().unwrap().insert(token.clone());
        respond(
            StatusCode::OK,
            format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#),
        )
    }

    async fn forward(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let url = format!(
            "{}{}",
            self.backend,
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
        );
        let method = req.method().clone();
        let mut out = self.client.request(method, url);
        for name in [http::header::ACCEPT, http::header::CONTENT_TYPE] {
            if let Some(v) = req.headers().get(&name) {
                out = out.header(name, v.clone());
            }
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let resp = match out.body(body).send().await {
            Ok(r) => r,
            Err(e) => return respond(StatusCode::BAD_GATEWAY, e.to_string()),
        };
        let mut r = respond(resp.status(), Bytes::new());
        for name in [
            http::header::CONTENT_TYPE,
            http::header::HeaderName::from_static("docker-content-digest"),
        ] {
            if let Some(v) = resp.headers().get(&name) {
                r.headers_mut().insert(name, v.clone());
            }
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        *r.body_mut() = Full::new(bytes);
        r
    }
}
