//! The reference relay: the least any user-space proxy between a client and an instance can
//! do — accept a connection, open one to the instance inside its network namespace, and copy
//! bytes both ways (no HTTP parsing, no routing, no auth) — on one thread with its own tokio
//! runtime, as Wharf's data plane has by default.
//!
//! On a machine where a loopback hop or a wake-up is expensive (a VM whose vCPUs exit to the
//! hypervisor to wake each other), the relay's added latency and lost throughput are the floor
//! for every proxy; Wharf's figures are read against that floor as well as against direct calls.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::netns::Netns;

/// A running relay; it stops when dropped.
pub struct Relay {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays each accepted connection to `port` in the next of `backends` (round robin).
    pub fn start(backends: Vec<Netns>, port: u16) -> anyhow::Result<Relay> {
        anyhow::ensure!(!backends.is_empty(), "the relay needs an instance");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let backends = Arc::new(backends);
        let thread = std::thread::Builder::new()
            .name("bench-relay".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the relay's runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    let serve = async {
                        let mut next = 0usize;
                        loop {
                            let Ok((client, _)) = listener.accept().await else {
                                continue;
                            };
                            let netns = backends[next % backends.len()].clone();
                            next += 1;
                            tokio::spawn(async move {
                                let _ = relay(client, netns, port).await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = stopped => {}
                    }
                });
            })
            .context("starting the relay thread")?;
        Ok(Relay {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn relay(mut client: TcpStream, netns: Netns, port: u16) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let upstream = tokio::task::spawn_blocking(move || netns.connect(port)).await??;
    upstream.set_nonblocking(true)?;
    let mut upstream = TcpStream::from_std(upstream)?;
    upstream.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
