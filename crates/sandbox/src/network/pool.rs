//! The pool of prepared network namespaces, so that a bridge-mode cold start only takes one.
//!
//! [`POOL_SIZE`] entries are kept ready. Each take asks the preparer for replacements in the
//! background; a start that finds the pool empty waits for the next one to be ready (said at
//! `debug!`) — the first that finishes, not one queued behind the refills. Addresses are
//! allocated when a preparation is queued and released when its slot is dropped (after its
//! veth is deleted) or when the preparation fails. A failed preparation is not retried by
//! itself: the next take or [`Pool::fill`] asks again, so a broken host never spins.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::prepare::{Done, Job, Preparer, remove_veth_now};
use super::subnet::{Addresses, Subnet};
use crate::error::{NetworkError, display_chain};

/// Prepared namespaces kept ready. Each is a namespace, a veth pair and an address, about
/// 0.1 MiB of kernel memory; a few cover a burst of cold starts while the refill catches up.
pub(crate) const POOL_SIZE: usize = 3;

/// A prepared network namespace, taken by one instance.
pub(crate) struct Slot {
    pub netns: Arc<OwnedFd>,
    /// The host end of the veth pair.
    pub veth: String,
    pub addr: Ipv4Addr,
    pub pool: Weak<Pool>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("veth", &self.veth)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Slot {
    /// The path the runtime joins: Wharf's own fd of the namespace. Valid while Wharf holds the
    /// fd, which is all `runtime create` needs; after a crash, nothing of it is left on disk.
    pub fn ns_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.netns.as_raw_fd()
        ))
    }
}

impl Drop for Slot {
    /// The address goes back to the pool. (Whoever drops a slot must not hold the pool's lock.)
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.state.lock().unwrap().addresses.release(self.addr);
        }
    }
}

struct State {
    ready: VecDeque<Slot>,
    /// Preparations queued or running.
    pending: usize,
    /// Starts waiting for a slot (the pool was empty).
    waiters: VecDeque<oneshot::Sender<Result<Slot, NetworkError>>>,
    /// [`Pool::fill`] calls waiting for the pool to be full.
    fillers: Vec<oneshot::Sender<Result<(), String>>>,
    addresses: Addresses,
    closed: bool,
}

pub(crate) struct Pool {
    me: Weak<Pool>,
    state: Mutex<State>,
    preparer: Preparer,
    subnet: Subnet,
    /// Bind-mounted into every instance, when DNS can work through it (`dns`).
    pub resolv_conf: Option<PathBuf>,
}

impl Pool {
    pub fn start(
        bridge: &str,
        bridge_index: u32,
        subnet: Subnet,
        resolv_conf: Option<PathBuf>,
    ) -> Result<Arc<Pool>, NetworkError> {
        let preparer = Preparer::start(bridge, bridge_index, subnet)?;
        Ok(Arc::new_cyclic(|me: &Weak<Pool>| Pool {
            me: me.clone(),
            state: Mutex::new(State {
                ready: VecDeque::new(),
                pending: 0,
                waiters: VecDeque::new(),
                fillers: Vec::new(),
                addresses: Addresses::new(subnet),
                closed: false,
            }),
            preparer,
            subnet,
            resolv_conf,
        }))
    }

    fn exhausted(&self, s: &State) -> NetworkError {
        NetworkError::AddressesExhausted {
            subnet: self.subnet.to_string(),
            in_use: s.addresses.in_use(),
        }
    }

    /// Queue preparations until ready + pending covers the pool and the waiting starts.
    /// Returns the addresses to prepare: send them with [`Pool::send`] *after* unlocking.
    fn refill(&self, s: &mut State) -> Vec<Ipv4Addr> {
        let target = POOL_SIZE + s.waiters.len();
        let mut addrs = Vec::new();
        while s.ready.len() + s.pending < target {
            match s.addresses.allocate() {
                Some(a) => {
                    s.pending += 1;
                    addrs.push(a);
                }
                None => break,
            }
        }
        // Waiters no preparation will serve (waiters only exist while `ready` is empty).
        while s.waiters.len() > s.pending {
            if let Some(w) = s.waiters.pop_back() {
                let _ = w.send(Err(self.exhausted(s)));
            }
        }
        if s.pending == 0 && s.ready.len() < POOL_SIZE {
            let reason = display_chain(&self.exhausted(s));
            for f in s.fillers.drain(..) {
                let _ = f.send(Err(reason.clone()));
            }
        }
        addrs
    }

    fn send(&self, addrs: Vec<Ipv4Addr>) {
        for addr in addrs {
            let pool = self.me.clone();
            let done = Done::new(move |result| match pool.upgrade() {
                Some(pool) => pool.completed(addr, result),
                // The pool is gone: the slot (if any) is dropped with its fd.
                None => None,
            });
            self.preparer.send(Job::Prepare {
                addr,
                pool: self.me.clone(),
                done,
            });
        }
    }

    /// On the preparer thread: a preparation ended. A slot returned is to be removed.
    fn completed(&self, addr: Ipv4Addr, result: Result<Slot, NetworkError>) -> Option<Slot> {
        let mut s = self.state.lock().unwrap();
        s.pending -= 1;
        match result {
            Ok(slot) if s.closed => Some(slot),
            Ok(mut slot) => {
                while let Some(w) = s.waiters.pop_front() {
                    match w.send(Ok(slot)) {
                        Ok(()) => return None,
                        // That start was cancelled: the next one, or the pool, gets it.
                        Err(back) => slot = back.expect("sent Ok"),
                    }
                }
                s.ready.push_back(slot);
                if s.ready.len() >= POOL_SIZE {
                    for f in s.fillers.drain(..) {
                        let _ = f.send(Ok(()));
                    }
                }
                None
            }
            Err(e) => {
                s.addresses.release(addr);
                let reason = display_chain(&e);
                for f in s.fillers.drain(..) {
                    let _ = f.send(Err(reason.clone()));
                }
                match s.waiters.pop_front() {
                    Some(w) => {
                        let _ = w.send(Err(e));
                    }
                    None if !s.closed => {
                        warn!(%addr, error = %reason, "preparing a network namespace for the pool failed")
                    }
                    None => {}
                }
                None
            }
        }
    }

    /// A prepared namespace: from the pool when it has one (and a replacement is queued), else
    /// the next one to be ready.
    pub async fn take(&self) -> Result<Slot, NetworkError> {
        let (answer, addrs) = {
            let mut s = self.state.lock().unwrap();
            if s.closed {
                return Err(NetworkError::ShutDown);
            }
            if let Some(slot) = s.ready.pop_front() {
                let addrs = self.refill(&mut s);
                drop(s);
                self.send(addrs);
                return Ok(slot);
            }
            debug!(
                pending = s.pending,
                "the network namespace pool is empty: this start waits for one to be prepared"
            );
            let (tx, rx) = oneshot::channel();
            s.waiters.push_back(tx);
            (rx, self.refill(&mut s))
        };
        self.send(addrs);
        answer.await.map_err(|_| NetworkError::ThreadStopped)?
    }

    /// Wait until the pool is full (or a preparation failed).
    pub async fn fill(&self) -> Result<(), NetworkError> {
        let (answer, addrs) = {
            let mut s = self.state.lock().unwrap();
            if s.closed {
                return Err(NetworkError::ShutDown);
            }
            if s.ready.len() >= POOL_SIZE {
                return Ok(());
            }
            let addrs = self.refill(&mut s);
            if s.pending == 0 {
                return Err(self.exhausted(&s));
            }
            let (tx, rx) = oneshot::channel();
            s.fillers.push(tx);
            (rx, addrs)
        };
        self.send(addrs);
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(NetworkError::Refill { reason }),
            Err(_) => Err(NetworkError::ThreadStopped),
        }
    }

    /// Delete the slot's veth (on the preparer thread), then let the slot go: its address is
    /// free again and its namespace fd closed.
    pub async fn remove(&self, slot: Slot) -> Result<(), NetworkError> {
        let (reply, answer) = oneshot::channel();
        self.preparer.send(Job::Remove {
            veth: slot.veth.clone(),
            reply,
        });
        let result = match answer.await {
            Ok(result) => result,
            // The thread has stopped: delete it from here.
            Err(_) => {
                let veth = slot.veth.clone();
                tokio::task::spawn_blocking(move || remove_veth_now(&veth))
                    .await
                    .unwrap_or(Err(NetworkError::ThreadStopped))
            }
        };
        drop(slot);
        result
    }

    /// Refuse new takes, fail the waiting ones, remove the ready entries, and wait for the
    /// preparations in flight (which remove their slots themselves once closed).
    pub async fn close(&self) -> Vec<NetworkError> {
        let (ready, waiters, fillers) = {
            let mut s = self.state.lock().unwrap();
            s.closed = true;
            (
                std::mem::take(&mut s.ready),
                std::mem::take(&mut s.waiters),
                std::mem::take(&mut s.fillers),
            )
        };
        for w in waiters {
            let _ = w.send(Err(NetworkError::ShutDown));
        }
        for f in fillers {
            let _ = f.send(Err(NetworkError::ShutDown.to_string()));
        }
        let mut errors = Vec::new();
        for slot in ready {
            if let Err(e) = self.remove(slot).await {
                errors.push(e);
            }
        }
        let (tx, rx) = oneshot::channel();
        self.preparer.send(Job::Barrier(tx));
        let _ = rx.await;
        errors
    }
}
