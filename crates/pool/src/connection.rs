//! The keep-alive HTTP/1 connection to an instance, driven by the request that uses it.
//!
//! hyper's client connection is two halves: a `SendRequest` handle and a `Connection` future
//! that does the I/O. The usual way spawns the future as a task of its own; every request then
//! crosses two tasks (request → connection task → back), each crossing a wake-up and, on a
//! multi-threaded runtime, often a thread switch — the largest part of what a proxy adds to a
//! warm call. Here the request polls the connection future itself while it waits for its
//! answer ([`drive`]), so a warm invocation is one task doing its own I/O.
//!
//! A connection is *checked out* for one exchange and put back when the exchange ends; an
//! exchange cut short (a timeout, a caller that went away) drops its connection, which closes
//! it, so a connection is never left half-way through a message.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use wharf_contract::ContractRequest;

/// Response headers an instance may send, at most; beyond it the response is refused.
const MAX_RESPONSE_HEADERS: usize = 100;

type Driver = Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::NotSent(_, e) => write!(f, "{e}"),
            ExchangeError::Broken(reason) => f.write_str(reason),
            ExchangeError::TooLarge => f.write_str("the answer is too large"),
        }
    }
}

pub(crate) struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// `None` once the connection has ended. Dropping the finished driver is what settles
    /// requests still queued on it (hyper hands them back, unsent).
    driver: Option<Driver>,
}

/// How an exchange failed.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// The request was never written: it may be sent again on another connection.
    NotSent(Box<ContractRequest>, hyper::Error),
    /// The request may have reached the instance; the answer is lost.
    Broken(String),
    /// The answer's body is larger than the limit.
    TooLarge,
}

/// Runs `fut` to completion while driving the connection's I/O.
async fn drive<F: Future>(driver: &mut Option<Driver>, fut: F) -> F::Output {
    tokio::pin!(fut);
    if let Some(d) = driver.as_mut() {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            ended = d.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "instance connection ended");
                }
                *driver = None;
            }
        }
    }
    // The connection is gone: whatever `fut` waits for is settled by now (an error).
    fut.await
}

impl Conn {
    pub async fn open(stream: TcpStream) -> Result<Conn, hyper::Error> {
        let (sender, driver) = http1::Builder::new()
            .max_headers(MAX_RESPONSE_HEADERS)
            .handshake(TokioIo::new(stream))
            .await?;
        Ok(Conn {
            sender,
            driver: Some(Box::pin(driver)),
        })
    }

    /// Whether the connection can take another request.
    pub async fn ready(&mut self) -> bool {
        if self.is_closed() {
            return false;
        }
        let ready = self.sender.ready();
        drive(&mut self.driver, ready).await.is_ok()
    }

    /// Sends `req` and reads the whole answer, its body at most `limit` bytes.
    pub async fn exchange(
        &mut self,
        req: ContractRequest,
        limit: usize,
    ) -> Result<(http::response::Parts, Bytes), ExchangeError> {
        let sent = self.sender.try_send_request(req);
        let answer = async move {
            let resp = match sent.await {
                Ok(resp) => resp,
                Err(mut e) => {
                    return Err(match e.take_message() {
                        Some(req) => ExchangeError::NotSent(Box::new(req), e.into_error()),
                        None => ExchangeError::Broken(e.into_error().to_string()),
                    });
                }
            };
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, limit).collect().await.map_err(|e| {
                if e.is::<LengthLimitError>() {
                    ExchangeError::TooLarge
                } else {
                    ExchangeError::Broken(e.to_string())
                }
            })?;
            Ok((parts, body.to_bytes()))
        };
        drive(&mut self.driver, answer).await
    }

    pub fn is_closed(&self) -> bool {
        self.driver.is_none() || self.sender.is_closed()
    }
}
