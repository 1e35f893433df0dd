//! The HTTP client of the load generator: hyper 1, HTTP/1.1, keep-alive, the same code for
//! Wharf and for direct calls. Only how a connection is made and what the request looks like
//! differ: a loopback connection to Wharf's API with the bearer token, or a connection created
//! inside the instance's network namespace (see [`crate::netns`]) to the function's port.
//!
//! A blocking one-shot client ([`probe`]) serves the baselines' cold starts: it runs on the
//! thread that entered a container's netns.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::netns::Netns;

/// Where requests go.
#[derive(Clone, Debug)]
pub enum Target {
    /// `POST /v1/functions/<function>/invoke` on Wharf's API.
    Wharf {
        addr: SocketAddr,
        function: String,
        token: String,
    },
    /// `POST /invoke` on the function's port inside the instance's netns.
    Direct { netns: Netns, port: u16 },
    /// The same request as direct, through the reference relay ([`crate::relay`]).
    Relay { addr: SocketAddr, port: u16 },
}

/// A request, prepared once and cloned cheaply for every send.
#[derive(Clone, Debug)]
pub struct Prepared {
    uri: Uri,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    body: Bytes,
}

impl Target {
    pub fn label(&self) -> &'static str {
        match self {
            Target::Wharf { .. } => "wharf",
            Target::Direct { .. } => "direct",
            Target::Relay { .. } => "relay",
        }
    }

    /// A new keep-alive connection.
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let stream = match self {
            Target::Wharf { addr, .. } | Target::Relay { addr, .. } => {
                let s = TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connecting to {addr}"))?;
                s.set_nodelay(true)?;
                s
            }
            Target::Direct { netns, port } => {
                let (netns, port) = (netns.clone(), *port);
                let std = tokio::task::spawn_blocking(move || netns.connect(port))
                    .await?
                    .with_context(|| {
                        format!("connecting to port {port} in the instance's netns")
                    })?;
                std.set_nonblocking(true)?;
                TcpStream::from_std(std)?
            }
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender })
    }

    /// The invoke request with `body`.
    pub fn prepare(&self, body: impl Into<Bytes>) -> Prepared {
        let (uri, host, auth) = match self {
            Target::Wharf {
                addr,
                function,
                token,
            } => (
                format!("/v1/functions/{function}/invoke"),
                addr.to_string(),
                Some(HeaderValue::from_str(&format!("Bearer {token}")).expect("a token is ASCII")),
            ),
            Target::Direct { port, .. } | Target::Relay { port, .. } => {
                ("/invoke".to_string(), format!("127.0.0.1:{port}"), None)
            }
        };
        Prepared {
            uri: uri.parse().expect("a valid path"),
            host: HeaderValue::from_str(&host).expect("an address is ASCII"),
            auth,
            body: body.into(),
        }
    }
}

/// One answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `x-wharf-cold-start: true`.
    pub fn cold(&self) -> bool {
        self.header("x-wharf-cold-start") == Some("true")
    }

    pub fn instance(&self) -> Option<&str> {
        self.header("x-wharf-instance-id")
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends the request and reads the whole answer.
    pub async fn call(&mut self, p: &Prepared) -> anyhow::Result<Answer> {
        let mut req = Request::new(Full::new(p.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = p.uri.clone();
        let h = req.headers_mut();
        h.insert(HOST, p.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(a) = &p.auth {
            h.insert(AUTHORIZATION, a.clone());
        }
        self.sender.ready().await.context("connection closed")?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Like [`Conn::call`], and the time it took; an answer other than 200 is an error.
    pub async fn timed(&mut self, p: &Prepared) -> anyhow::Result<(Duration, Answer)> {
        let t0 = Instant::now();
        let answer = self.call(p).await?;
        let took = t0.elapsed();
        if answer.status != StatusCode::OK {
            bail!(
                "answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
            );
        }
        Ok((took, answer))
    }
}

/// How [`probe`] waits between refused connections: Wharf's readiness backoff (200 µs, ×1.5,
/// at most 5 ms), so that the baseline waits exactly as Wharf does.
pub const FIRST_BACKOFF: Duration = Duration::from_micros(200);
pub const MAX_BACKOFF: Duration = Duration::from_millis(5);

/// Blocking: connect to `127.0.0.1:port` (in the calling thread's netns) until something
/// listens, then `POST path` with `body` and read the whole answer (`Connection: close`).
/// Returns the status. Gives up at `deadline`.
pub fn probe(port: u16, path: &str, body: &[u8], deadline: Instant) -> anyhow::Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut backoff = FIRST_BACKOFF;
    let mut stream = loop {
        match StdTcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                if Instant::now() > deadline {
                    bail!("nothing listened on {addr} in time");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 3 / 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {addr}")),
        }
    };
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1)),
    ))?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request)?;
    let mut answer = Vec::with_capacity(512);
    stream.read_to_end(&mut answer)?;
    parse_status(&answer)
}

/// The status code of an HTTP/1.x answer.
pub fn parse_status(answer: &[u8]) -> anyhow::Result<u16> {
    let line_end = answer
        .iter()
        .position(|&b| b == b'\r')
        .context("no status line in the answer")?;
    let line = std::str::from_utf8(&answer[..line_end])?;
    let mut words = line.split(' ');
    match (words.next(), words.next().and_then(|c| c.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => bail!("not an HTTP status line: {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\n").unwrap(), 200);
        assert_eq!(
            parse_status(b"HTTP/1.0 404 Not Found\r\nx: y\r\n").unwrap(),
            404
        );
        assert!(parse_status(b"garbage").is_err());
        assert!(parse_status(b"SSH-2.0 x\r\n").is_err());
    }
}
