//! A loopback front for a registry that counts what it is asked for and can slow blob downloads
//! down: tests see how many times each blob was fetched (single-flight) and can catch a pull
//! reliably in the middle (a daemon killed mid-pull).
//!
//! It forwards every request to the registry behind it and streams the answer back; blob
//! bodies (`GET /v2/<name>/blobs/<digest>`) go out in [`PIECE_BYTES`] pieces, at most
//! [`RegistryFront::set_rate`] bytes per second when a rate is set. It runs on a thread of its
//! own with its own runtime, so a test that blocks its own runtime (`assert_eventually!`) does
//! not stall it. Stops serving on drop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};

/// Blob bodies are sent in pieces of this size (the unit of throttling).
pub const PIECE_BYTES: usize = 64 * 1024;

/// One request the front forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
}

#[derive(Default)]
struct State {
    backend: String,
    /// Bytes per second for blob bodies; 0: as fast as the registry answers.
    rate: AtomicU64,
    seen: Mutex<Vec<Seen>>,
    /// Blob body bytes sent, by digest.
    sent: Mutex<HashMap<String, u64>>,
    client: Option<reqwest::Client>,
}

/// See the module docs.
pub struct RegistryFront {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RegistryFront {
    /// Starts a front for the registry at `backend` (`127.0.0.1:PORT`).
    pub fn start(backend: &str) -> anyhow::Result<RegistryFront> {
        crate::install_crypto_provider();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the front")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            backend: format!("http://{backend}"),
            client: Some(
                reqwest::Client::builder()
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()?,
            ),
            ..State::default()
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = state.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("registry-front".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("registry front: {e}");
                            return;
                        }
                    };
                    let accept = async {
                        loop {
                            let Ok((stream, _)) = listener.accept().await else {
                                continue;
                            };
                            let state = serving.clone();
                            tokio::spawn(async move {
                                let service = service_fn(move |req| {
                                    let state = state.clone();
                                    async move { Ok::<_, Infallible>(forward(&state, req).await) }
                                });
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(RegistryFront {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT` of the front: pull from here.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Blob bodies at most `bytes_per_second` from now on (also for downloads in progress);
    /// `None`: as fast as the registry answers.
    pub fn set_rate(&self, bytes_per_second: Option<u64>) {
        self.state
            .rate
            .store(bytes_per_second.unwrap_or(0), Ordering::SeqCst);
    }

    /// Every request forwarded so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many times blob `digest` was asked for with GET.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let suffix = format!("/blobs/{digest}");
        self.seen()
            .iter()
            .filter(|s| s.method == "GET" && s.path.ends_with(&suffix))
            .count()
    }

    /// GETs of manifests (by tag or digest).
    pub fn manifest_gets(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == "GET" && s.path.contains("/manifests/"))
            .count()
    }

    /// Bytes of blob `digest` sent so far, over all its downloads.
    pub fn blob_bytes_sent(&self, digest: &str) -> u64 {
        self.state
            .sent
            .lock()
            .unwrap()
            .get(digest)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for RegistryFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A body fed by a task through a channel.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn error_response(status: StatusCode, message: String) -> Response<ChannelBody> {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Ok(Bytes::from(message)));
    let mut r = Response::new(ChannelBody { rx });
    *r.status_mut() = status;
    r
}

async fn forward(state: &Arc<State>, req: Request<Incoming>) -> Response<ChannelBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    state.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: path.clone(),
    });
    let blob = (method == http::Method::GET)
        .then(|| path.rsplit_once("/blobs/").map(|(_, d)| d.to_string()))
        .flatten();
    let url = format!(
        "{}{}",
        state.backend,
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let client = state.client.as_ref().expect("a client");
    let mut out = client.request(method, url);
    for (name, value) in req.headers() {
        if name != http::header::HOST
            && name != http::header::CONNECTION
            && name != http::header::CONTENT_LENGTH
        {
            out = out.header(name, value);
        }
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut upstream = match out.body(body).send().await {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    let (tx, rx) = mpsc::channel(4);
    let mut r = Response::new(ChannelBody { rx });
    *r.status_mut() = upstream.status();
    for (name, value) in upstream.headers() {
        if name != http::header::CONNECTION && name != http::header::TRANSFER_ENCODING {
            r.headers_mut().append(name, value.clone());
        }
    }
    let state = state.clone();
    tokio::spawn(async move {
        loop {
            let chunk = match upstream.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            };
            let Some(digest) = &blob else {
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                continue;
            };
            for piece in chunk.chunks(PIECE_BYTES) {
                let rate = state.rate.load(Ordering::SeqCst);
                if rate > 0 {
                    tokio::time::sleep(Duration::from_secs_f64(piece.len() as f64 / rate as f64))
                        .await;
                }
                if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                    // The client went away (a killed daemon).
                    return;
                }
                *state
                    .sent
                    .lock()
                    .unwrap()
                    .entry(digest.clone())
                    .or_default() += piece.len() as u64;
            }
        }
    });
    r
}
