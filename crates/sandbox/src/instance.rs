//! [`Instance`]: one running container, from the moment `runtime start` returned until
//! `stop` has removed every trace of it.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::output::OutputCapture;
use crate::rootfs::InstancePaths;
use crate::sandbox::SandboxInner;
use crate::{ExitInfo, NotListening, StartTimings, StopReport};

/// A running instance. Always [`stop`](Instance::stop) it: dropping it without stopping
/// leaves the container running (and logs a warning) until [`crate::Sandbox::recover`].
pub struct Instance {
    pub(crate) sandbox: Arc<SandboxInner>,
    pub(crate) id: String,
    pub(crate) pid: u32,
    pub(crate) pidfd: Arc<OwnedFd>,
    pub(crate) netns: Arc<OwnedFd>,
    pub(crate) exit: watch::Receiver<Option<ExitInfo>>,
    pub(crate) output: OutputCapture,
    pub(crate) paths: InstancePaths,
    pub(crate) timings: StartTimings,
    /// The first stop's report, returned again by later calls.
    pub(crate) stop_report: tokio::sync::Mutex<Option<StopReport>>,
    pub(crate) stopped: AtomicBool,
    /// The cgroup's peak file, opened on first use and re-read with `pread`: 0.7 µs a read
    /// here, against 9 µs for open + read + close.
    pub(crate) peak_file: OnceLock<Option<File>>,
    /// Frozen or not, and the freezer files kept open (`instance_freeze`).
    pub(crate) freezer: crate::instance_freeze::Freezer,
    pub(crate) events: crate::events::Events,
    /// The OOM watcher, ended by the stop (`oom`). `None` without a memory controller or when
    /// it could not be registered.
    pub(crate) oom_watch: std::sync::Mutex<Option<crate::oom::OomWatch>>,
    /// The listeners of [`InstanceSpec::listen`](crate::InstanceSpec::listen), until taken.
    pub(crate) listeners: std::sync::Mutex<Vec<(u16, tokio::net::TcpListener)>>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .field("exit", &*self.exit.borrow())
            .finish()
    }
}

impl Instance {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The init process's pid, as seen from the host.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The listener on `127.0.0.1:port` inside the instance that the spec asked for
    /// ([`InstanceSpec::listen`](crate::InstanceSpec::listen)); `None` if there is none or it
    /// was taken already.
    pub fn take_listener(&self, port: u16) -> Option<tokio::net::TcpListener> {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let at = listeners.iter().position(|(p, _)| *p == port)?;
        Some(listeners.swap_remove(at).1)
    }

    /// A TCP connection to `127.0.0.1:port` inside the instance's network namespace, with
    /// `TCP_NODELAY`.
    pub async fn connect(&self, port: u16) -> std::io::Result<TcpStream> {
        self.sandbox.connector.connect(&self.netns, port).await
    }

    /// A TCP connection to `ip:port` inside the instance's network namespace. The namespace
    /// has only `lo`, which answers for all of 127.0.0.0/8: connecting to another loopback
    /// address than 127.0.0.1 tells whether a server listens on every address or on 127.0.0.1
    /// only.
    pub async fn connect_to(
        &self,
        ip: std::net::Ipv4Addr,
        port: u16,
    ) -> std::io::Result<TcpStream> {
        self.sandbox
            .connector
            .connect_to(&self.netns, ip, port)
            .await
    }

    /// Wait until something listens on `port` inside the instance and return that first
    /// connection; [`NotListening::Exited`] as soon as the init exits,
    /// [`NotListening::Deadline`] after `deadline`.
    pub async fn wait_listening(
        &self,
        port: u16,
        deadline: Duration,
    ) -> Result<TcpStream, NotListening> {
        crate::readiness::wait_listening(
            &self.sandbox.connector,
            &self.netns,
            port,
            deadline,
            &self.exit,
        )
        .await
    }

    /// How the init process ended, once it has.
    pub fn exit_status(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Wait for the init process to end.
    pub async fn exited(&self) -> ExitInfo {
        let mut exit = self.exit.clone();
        // Copy out of the watch guard at once: it must not live across an await (not Send).
        let status = exit.wait_for(Option::is_some).await.map(|info| *info);
        match status {
            Ok(info) => info.unwrap_or(ExitInfo::Signaled(libc::SIGKILL)),
            // The watcher never drops its sender without sending, except when the tokio
            // runtime shuts down; then nothing will ever report.
            Err(_) => std::future::pending().await,
        }
    }

    /// Waits (at most `patience`) until every line the instance printed so far has reached its
    /// output sink; immediate when it printed nothing since the last call. The pool calls it
    /// when an invocation ends, so the function's lines precede the line that closes the
    /// invocation in the log.
    pub async fn output_settled(&self, patience: Duration) {
        self.output.settle(patience).await;
    }

    /// The last few KB the instance printed (stdout and stderr interleaved).
    pub fn recent_output(&self) -> String {
        self.output.recent()
    }

    /// The memory peak of the instance's cgroup so far.
    pub fn memory_peak_bytes(&self) -> Option<u64> {
        self.sandbox
            .cgroups
            .memory_stats(
                self.sandbox.host.as_ref(),
                &self.sandbox.config.cgroup_parent,
                &self.id,
            )
            .peak_bytes
    }

    /// The memory peak of the instance's cgroup so far, read cheaply enough for every
    /// invocation (one `pread` of a file kept open). `None` without a memory controller.
    pub fn memory_peak_now(&self) -> Option<u64> {
        let file = self.peak_file.get_or_init(|| {
            let path = self
                .sandbox
                .cgroups
                .peak_path(&self.sandbox.config.cgroup_parent, &self.id)?;
            File::open(path).ok()
        });
        let mut buf = [0u8; 32];
        let n = file.as_ref()?.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
    }

    /// The memory the instance's cgroup uses now (its page cache and tmpfs files included);
    /// `None` without a memory controller or once the cgroup is gone. Opens the file: for
    /// listings, not the request path.
    pub fn memory_now_bytes(&self) -> Option<u64> {
        let path = self
            .sandbox
            .cgroups
            .usage_path(&self.sandbox.config.cgroup_parent, &self.id)?;
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Whether the kernel's OOM killer has killed a process of the instance's cgroup (its
    /// counter is read from the cgroup, which lives until [`Instance::stop`]).
    pub fn oom_killed(&self) -> bool {
        self.sandbox
            .cgroups
            .memory_stats(
                self.sandbox.host.as_ref(),
                &self.sandbox.config.cgroup_parent,
                &self.id,
            )
            .oom_kills
            .is_some_and(|n| n > 0)
    }

    /// How long the phases of the start took.
    pub fn timings(&self) -> StartTimings {
        self.timings
    }

    /// Thaw if frozen; SIGTERM, up to `grace` for the init to exit, SIGKILL; then delete the
    /// container, unmount, remove the bundle. Idempotent: later calls return the first call's
    /// report.
    pub async fn stop(&self, grace: Duration) -> StopReport {
        crate::instance_stop::stop(self, grace).await
    }

    pub(crate) fn mark_stopped(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if !self.stopped.load(Ordering::SeqCst) {
            tracing::warn!(
                instance = %self.id,
                pid = self.pid,
                "instance dropped without stop: its container keeps running until Sandbox::recover"
            );
        }
    }
}
