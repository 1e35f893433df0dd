//! Reaching an instance directly: its processes (from its cgroup), its network namespace, and
//! TCP connections created inside that namespace.
//!
//! Every instance listens on the same port in its own netns, which has only `lo`, so "direct"
//! means: a socket that belongs to the instance's netns. A socket belongs to the netns of the
//! thread that created it; the thread that `setns`es here is always a fresh one that ends right
//! after (never a tokio worker or blocking-pool thread, which would go on to open other sockets
//! in the wrong namespace). The connection is then handed to tokio like any other.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustix::thread::LinkNameSpaceType;

/// Where the cgroup `/<parent>/<id>` can be, most specific first: the v1 `pids` hierarchy (v1
/// and hybrid hosts), the v2 root (v2 hosts), the hybrid v2 mount.
fn cgroup_dirs(parent: &str) -> [PathBuf; 3] {
    [
        Path::new("/sys/fs/cgroup/pids").join(parent),
        Path::new("/sys/fs/cgroup").join(parent),
        Path::new("/sys/fs/cgroup/unified").join(parent),
    ]
}

/// The first hierarchy that has the cgroup parent (`None`: no instance was ever created).
fn parent_dir(parent: &str) -> Option<PathBuf> {
    cgroup_dirs(parent)
        .into_iter()
        .find(|d| d.join("cgroup.procs").exists())
}

/// The ids of the instances (child cgroups) under `parent`.
pub fn instances(parent: &str) -> Vec<String> {
    let Some(dir) = parent_dir(parent) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        // `.wharf-freezer-on`, the sandbox's frozen keeper, is no instance.
        .filter(|n| !n.starts_with('.'))
        .collect();
    ids.sort();
    ids
}

/// Whether the instance's cgroup still exists.
pub fn instance_exists(parent: &str, id: &str) -> bool {
    cgroup_dirs(parent).iter().any(|d| d.join(id).exists())
}

/// The host pids in the instance's cgroup.
pub fn instance_pids(parent: &str, id: &str) -> anyhow::Result<Vec<u32>> {
    for dir in cgroup_dirs(parent) {
        let procs = dir.join(id).join("cgroup.procs");
        if let Ok(text) = std::fs::read_to_string(&procs) {
            let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if !pids.is_empty() {
                return Ok(pids);
            }
        }
    }
    bail!("no processes in the cgroup /{parent}/{id} in any hierarchy")
}

/// A network namespace, held open.
#[derive(Clone, Debug)]
pub struct Netns(Arc<OwnedFd>);

impl Netns {
    /// The network namespace of process `pid`.
    pub fn of_pid(pid: u32) -> anyhow::Result<Netns> {
        let path = format!("/proc/{pid}/ns/net");
        let fd = rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .with_context(|| format!("opening {path}"))?;
        Ok(Netns(Arc::new(fd)))
    }

    /// The network namespace of the first process of an instance.
    pub fn of_instance(parent: &str, id: &str) -> anyhow::Result<Netns> {
        let pids = instance_pids(parent, id)?;
        Netns::of_pid(pids[0])
    }

    /// Moves the calling thread into this namespace. Only for threads that end afterwards.
    pub fn enter_this_thread(&self) -> io::Result<()> {
        rustix::thread::move_into_link_name_space(self.0.as_fd(), Some(LinkNameSpaceType::Network))
            .map_err(io::Error::from)
    }

    /// A TCP connection to `127.0.0.1:port` inside this namespace, with `TCP_NODELAY`, made on
    /// a fresh thread (see the module docs).
    pub fn connect(&self, port: u16) -> io::Result<TcpStream> {
        let netns = self.clone();
        std::thread::Builder::new()
            .name("bench-netns".into())
            .spawn(move || -> io::Result<TcpStream> {
                netns.enter_this_thread()?;
                let stream = TcpStream::connect_timeout(
                    &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    Duration::from_secs(5),
                )?;
                stream.set_nodelay(true)?;
                Ok(stream)
            })?
            .join()
            .map_err(|_| io::Error::other("the netns thread panicked"))?
    }
}

/// Sets this thread's timer slack to 1 ns, so that short sleeps end when asked (the default
/// 50 µs slack would blur sub-millisecond backoffs and fixed-rate schedules).
pub fn precise_sleeps_on_this_thread() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes an integer and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}
