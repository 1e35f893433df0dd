//! The connector: opens TCP sockets *inside* an instance's network namespace.
//!
//! Every instance listens on the same port in its own netns, which has only `lo`; there is no
//! veth, no address and no port to allocate. A socket belongs to the network namespace it was
//! created in, so a dedicated std thread `setns`es into the instance's netns, creates a
//! non-blocking socket, and `setns`es back to the host netns (opened when the thread starts);
//! it replies with the fd over a oneshot channel. The connect itself happens afterwards on the
//! tokio runtime, like any other connect. `setns` is per thread, which is why it must be a
//! dedicated thread and not a tokio worker: a worker in the wrong netns would open every other
//! socket of the process there.
//!
//! If the thread cannot return to the host netns it stops serving (every later request fails)
//! rather than create a single socket in the wrong namespace.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, mpsc};

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::thread::LinkNameSpaceType;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, error};

struct Request {
    netns: Arc<OwnedFd>,
    reply: oneshot::Sender<io::Result<OwnedFd>>,
}

/// Handle to the connector thread; the thread ends when the last handle is dropped.
pub(crate) struct Connector {
    requests: mpsc::Sender<Request>,
}

impl Connector {
    pub fn start() -> io::Result<Connector> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name("wharf-netns".into())
            .spawn(move || {
                // Our own netns, to come back to: the thread's, before it ever moves.
                let host_netns = match open_ns("/proc/thread-self/ns/net") {
                    Ok(fd) => {
                        let _ = ready_tx.send(Ok(()));
                        fd
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                serve(&host_netns, rx);
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the connector thread died at start"))??;
        Ok(Connector { requests: tx })
    }

    /// A non-blocking, close-on-exec TCP socket that belongs to `netns`.
    pub async fn socket(&self, netns: &Arc<OwnedFd>) -> io::Result<OwnedFd> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request {
                netns: netns.clone(),
                reply,
            })
            .map_err(|_| io::Error::other("the netns connector has stopped"))?;
        answer
            .await
            .map_err(|_| io::Error::other("the netns connector has stopped"))?
    }

    /// A listener on `127.0.0.1:port` inside `netns`.
    pub async fn listen(&self, netns: &Arc<OwnedFd>, port: u16) -> io::Result<TcpListener> {
        let fd = self.socket(netns).await?;
        rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
        rustix::net::bind(&fd, &SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
        rustix::net::listen(&fd, 128)?;
        TcpListener::from_std(std::net::TcpListener::from(fd))
    }

    /// Connect to `127.0.0.1:port` inside `netns`, with `TCP_NODELAY`.
    pub async fn connect(&self, netns: &Arc<OwnedFd>, port: u16) -> io::Result<TcpStream> {
        self.connect_to(netns, Ipv4Addr::LOCALHOST, port).await
    }

    /// Connect to `ip:port` inside `netns`, with `TCP_NODELAY`.
    pub async fn connect_to(
        &self,
        netns: &Arc<OwnedFd>,
        ip: Ipv4Addr,
        port: u16,
    ) -> io::Result<TcpStream> {
        let fd = self.socket(netns).await?;
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        let stream = socket.connect(SocketAddr::from((ip, port))).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

pub(crate) fn open_ns(path: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

fn serve(host_netns: &OwnedFd, requests: mpsc::Receiver<Request>) {
    for request in requests {
        let result = socket_in(&request.netns);
        let back = rustix::thread::move_into_link_name_space(
            host_netns.as_fd(),
            Some(LinkNameSpaceType::Network),
        );
        let _ = request.reply.send(result);
        if let Err(e) = back {
            error!(error = %e, "the netns connector cannot return to the host netns; stopping it");
            return;
        }
    }
    debug!("netns connector stopped");
}

fn socket_in(netns: &OwnedFd) -> io::Result<OwnedFd> {
    rustix::thread::move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))?;
    Ok(rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}
