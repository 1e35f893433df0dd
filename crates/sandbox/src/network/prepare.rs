//! The preparer: one dedicated std thread that makes network namespaces ready for bridge-mode
//! instances, and deletes their veths again.
//!
//! `unshare(CLONE_NEWNET)` and `setns` change the namespace of the *calling thread* only, so
//! they never run on a tokio worker (whose other tasks would open their sockets in the wrong
//! namespace); the thread also serialises all per-instance netlink work. For one namespace:
//!
//! 1. `unshare(CLONE_NEWNET)`: the thread is now in a new, empty namespace. It opens an fd of
//!    it (`/proc/thread-self/ns/net`), a `NETLINK_ROUTE` socket (which stays bound to this
//!    namespace wherever the thread goes), and turns IPv6 off there (`all` and `default`, so
//!    `lo` and the `eth0` to come have none: no link-local addresses, no router
//!    solicitations). Then it `setns`es back to the host's namespace.
//! 2. From the host: a veth pair whose host end `wh<address in hex>` is enslaved to the bridge
//!    and whose peer `eth0` is created directly in the new namespace (`IFLA_NET_NS_FD`); then
//!    the host end gets IPv6 off, bridge-port isolation on (`IFLA_BRPORT_ISOLATED`: isolated
//!    ports exchange no frames with each other) and is brought up.
//! 3. Through the socket from step 1: `lo` up (the runtime does not do it for a namespace it
//!    joins, and the connector reaches the instance over it), `eth0` up with the instance's
//!    address, a default route via the bridge.
//!
//! Deleting the host end deletes the pair; the namespace itself lives as long as its fd (and
//! any process in it). If the thread ever fails to return to the host's namespace it stops,
//! rather than create one more interface in the wrong place; every request then fails.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Instant;

use rustix::thread::{LinkNameSpaceType, UnshareFlags};
use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use super::bridge::{disable_ipv6, veth_name, write_sysctl};
use super::netlink::{self, NetlinkError, Rtnl};
use super::pool::{Pool, Slot};
use super::subnet::Subnet;
use crate::error::NetworkError;
use crate::netns::open_ns;

/// The peer's name inside the instance.
pub(crate) const INSTANCE_INTERFACE: &str = "eth0";

/// Called on the preparer thread with the outcome of one preparation; a slot it hands back is
/// removed there and then (the pool was shut down meanwhile). Called with
/// [`NetworkError::ThreadStopped`] if the job is dropped unrun, so that nobody waits forever.
type DoneFn = Box<dyn FnOnce(Result<Slot, NetworkError>) -> Option<Slot> + Send>;

pub(crate) struct Done(Option<DoneFn>);

impl Done {
    pub fn new(
        f: impl FnOnce(Result<Slot, NetworkError>) -> Option<Slot> + Send + 'static,
    ) -> Done {
        Done(Some(Box::new(f)))
    }

    fn call(mut self, result: Result<Slot, NetworkError>) -> Option<Slot> {
        (self.0.take().expect("called once"))(result)
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(NetworkError::ThreadStopped));
        }
    }
}

pub(crate) enum Job {
    Prepare {
        addr: Ipv4Addr,
        /// The slot's address goes back there when the slot is dropped.
        pool: Weak<Pool>,
        done: Done,
    },
    /// Delete a host-side veth (its peer goes with it).
    Remove {
        veth: String,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    /// Answered once every job sent before it is done.
    Barrier(oneshot::Sender<()>),
}

/// Handle to the preparer thread; it ends when the handle is dropped.
pub(crate) struct Preparer {
    jobs: mpsc::Sender<Job>,
}

impl Preparer {
    pub fn start(
        bridge: &str,
        bridge_index: u32,
        subnet: Subnet,
    ) -> Result<Preparer, NetworkError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), NetworkError>>();
        let bridge = bridge.to_owned();
        std::thread::Builder::new()
            .name("wharf-net".into())
            .spawn(move || {
                // Opened before the thread ever moves: the host's namespace, and a socket in it.
                let worker = open_ns("/proc/thread-self/ns/net")
                    .map_err(|source| NetworkError::Namespace {
                        op: "open the host's",
                        source,
                    })
                    .and_then(|host_netns| {
                        let rtnl = Rtnl::open().map_err(|e| NetworkError::Netlink {
                            op: "open a socket for",
                            interface: bridge.clone(),
                            source: NetlinkError::from_io(e),
                        })?;
                        Ok(Worker {
                            host_netns,
                            rtnl,
                            bridge_index,
                            subnet,
                            broken: false,
                        })
                    });
                match worker {
                    Ok(worker) => {
                        let _ = ready_tx.send(Ok(()));
                        worker.serve(rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|source| NetworkError::ThreadStart { source })?;
        ready_rx.recv().map_err(|_| NetworkError::ThreadStopped)??;
        Ok(Preparer { jobs })
    }

    /// Queue a job. When the thread has stopped, the job is dropped here (a `Prepare`'s
    /// [`Done`] then reports [`NetworkError::ThreadStopped`]): never call with a lock held
    /// that the `Done` takes.
    pub fn send(&self, job: Job) {
        let _ = self.jobs.send(job);
    }
}

struct Worker {
    host_netns: OwnedFd,
    /// In the host's namespace.
    rtnl: Rtnl,
    bridge_index: u32,
    subnet: Subnet,
    broken: bool,
}

fn nl(op: &'static str, interface: &str) -> impl FnOnce(NetlinkError) -> NetworkError {
    let interface = interface.to_owned();
    move |source| NetworkError::Netlink {
        op,
        interface,
        source,
    }
}

impl Worker {
    fn serve(mut self, jobs: mpsc::Receiver<Job>) {
        for job in jobs {
            match job {
                Job::Prepare { addr, pool, done } => {
                    let result = self.prepare(addr, pool);
                    if let Some(slot) = done.call(result) {
                        if let Err(e) = self.remove(&slot.veth) {
                            warn!(veth = %slot.veth, error = %crate::error::display_chain(&e), "removing a veth failed");
                        }
                        drop(slot);
                    }
                    if self.broken {
                        error!(
                            "the network preparation thread cannot return to the host's network namespace; stopping it"
                        );
                        return;
                    }
                }
                Job::Remove { veth, reply } => {
                    let _ = reply.send(self.remove(&veth));
                }
                Job::Barrier(reply) => {
                    let _ = reply.send(());
                }
            }
        }
        debug!("network preparation thread stopped");
    }

    fn remove(&mut self, veth: &str) -> Result<(), NetworkError> {
        match self.rtnl.ack(netlink::del_link(veth)) {
            Ok(()) => {
                debug!(veth, "deleted the veth");
                Ok(())
            }
            Err(e) if e.errno == libc::ENODEV => Ok(()),
            Err(e) => Err(nl("delete the veth", veth)(e)),
        }
    }

    fn prepare(&mut self, addr: Ipv4Addr, pool: Weak<Pool>) -> Result<Slot, NetworkError> {
        let started = Instant::now();
        let veth = veth_name(addr);
        let (netns, mut inner) = self.new_netns()?;
        if let Err(e) = self.attach(&veth, netns.as_fd(), &mut inner, addr) {
            // The peer is in the new namespace: deleting the host end removes both.
            let _ = self.remove(&veth);
            return Err(e);
        }
        debug!(%veth, %addr, took = ?started.elapsed(), "network namespace prepared");
        Ok(Slot {
            netns: Arc::new(netns),
            veth,
            addr,
            pool,
        })
    }

    /// Step 1: a new namespace, its fd and a socket in it; always back in the host's after.
    fn new_netns(&mut self) -> Result<(OwnedFd, Rtnl), NetworkError> {
        // SAFETY: only CLONE_NEWNET, which touches no state other threads share (no file
        // descriptor table, no file system information is unshared).
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }.map_err(|e| {
            NetworkError::Namespace {
                op: "create (unshare)",
                source: e.into(),
            }
        })?;
        let inside = (|| -> Result<(OwnedFd, Rtnl), NetworkError> {
            let fd =
                open_ns("/proc/thread-self/ns/net").map_err(|source| NetworkError::Namespace {
                    op: "open the new",
                    source,
                })?;
            let rtnl = Rtnl::open().map_err(|e| NetworkError::Netlink {
                op: "open a socket in",
                interface: "the new namespace".into(),
                source: NetlinkError::from_io(e),
            })?;
            // /proc/sys/net shows the namespace of the thread that opens the file.
            for conf in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                match write_sysctl(Path::new(&path), "1") {
                    Err(NetworkError::Sysctl { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    other => other?,
                }
            }
            Ok((fd, rtnl))
        })();
        if let Err(e) = rustix::thread::move_into_link_name_space(
            self.host_netns.as_fd(),
            Some(LinkNameSpaceType::Network),
        ) {
            self.broken = true;
            return Err(NetworkError::Namespace {
                op: "return to the host's namespace from",
                source: e.into(),
            });
        }
        inside
    }

    /// Steps 2 and 3.
    fn attach(
        &mut self,
        veth: &str,
        netns: BorrowedFd<'_>,
        inner: &mut Rtnl,
        addr: Ipv4Addr,
    ) -> Result<(), NetworkError> {
        self.rtnl
            .ack(netlink::new_veth(
                veth,
                self.bridge_index,
                INSTANCE_INTERFACE,
                netns,
            ))
            .map_err(nl("create the veth", veth))?;
        disable_ipv6(veth)?;
        self.rtnl
            .ack(netlink::set_bridge_port(veth, true))
            .map_err(nl("isolate and bring up the bridge port", veth))?;

        inner
            .ack(netlink::set_up("lo", true))
            .map_err(nl("bring up (in the instance's namespace)", "lo"))?;
        let eth0 = inner
            .link(INSTANCE_INTERFACE)
            .map_err(nl(
                "look up (in the instance's namespace)",
                INSTANCE_INTERFACE,
            ))?
            .index;
        inner
            .ack(netlink::set_up(INSTANCE_INTERFACE, true))
            .map_err(nl(
                "bring up (in the instance's namespace)",
                INSTANCE_INTERFACE,
            ))?;
        inner
            .ack(netlink::new_addr(eth0, addr, self.subnet.prefix_len, false))
            .map_err(nl("add the instance's address to", INSTANCE_INTERFACE))?;
        inner
            .ack(netlink::new_default_route(self.subnet.gateway(), eth0))
            .map_err(nl("add the default route via", INSTANCE_INTERFACE))?;
        Ok(())
    }
}

/// Delete a veth from the calling thread (in the host's namespace), for when the preparer
/// is gone.
pub(crate) fn remove_veth_now(veth: &str) -> Result<(), NetworkError> {
    let mut rtnl =
        Rtnl::open().map_err(|e| nl("open a socket for", veth)(NetlinkError::from_io(e)))?;
    match rtnl.ack(netlink::del_link(veth)) {
        Ok(()) => Ok(()),
        Err(e) if e.errno == libc::ENODEV => Ok(()),
        Err(e) => Err(nl("delete the veth", veth)(e)),
    }
}
