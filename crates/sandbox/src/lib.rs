//! The sandbox piece of Wharf: unpacked image layers + an [`InstanceSpec`] → a running,
//! isolated [`Instance`], and everything needed to take it down again without leaving a trace.
//!
//! # Why it looks like this
//!
//! * **An external OCI runtime, driven the way containerd drives it.** We write `config.json`
//!   (with `oci-spec` types) and call `create`, `start`, `delete`. crun starts a container about
//!   3x faster than runc, so it is preferred; runc is the fallback (`runtime`). crun 1.8
//!   refuses *hybrid* cgroup hosts (v1 controllers plus a v2 mount); instead of giving up we run
//!   crun in a private mount namespace in which the v2 mount has been detached, set up in
//!   `pre_exec` of the crun command itself, so no extra process is involved. At
//!   [`Sandbox::new`] a probe container (create + delete on an empty rootfs) proves the choice.
//! * **No per-instance helper process (no shim).** Wharf marks itself a *child subreaper*
//!   (`PR_SET_CHILD_SUBREAPER`): when `runtime create` exits, the container's init is reparented
//!   to us. We hold a pidfd for it, watch the pidfd with tokio and reap exactly that pid with
//!   `waitid(P_PIDFD)` — never `waitpid(-1)`, which would steal tokio's children (`reaper`).
//! * **The instance is reached through its network namespace, not through ports.** Every
//!   instance gets a new netns with only `lo`. A dedicated *connector* thread `setns`es into the
//!   instance's netns, creates a socket there (a socket belongs to the netns it was created in),
//!   and `setns`es back; the connect itself then happens asynchronously on the tokio runtime
//!   (`netns`, `readiness`).
//! * **Outbound network is opt-in and pre-built** ([`NetworkMode::Bridge`], `network`): a
//!   Wharf-owned bridge with NAT, set up over netlink in-process, and a small pool of network
//!   namespaces already wired to it (veth, address, route) that a cold start joins instead of
//!   creating one, so that bridge mode costs the cold start nothing measurable. The default
//!   mode never touches any of it.
//! * **Rootfs: shared read-only layers + a per-instance overlay** whose upper layer lives on a
//!   size-limited tmpfs (`rootfs`), together with the instance's `/tmp`, which is always
//!   writable (also under a read-only root). tmpfs pages are charged to the instance's memory
//!   cgroup: `rootfs` says how the two limits interact.
//! * **Host bind mounts are checked twice** (`mounts`): the pure rules ([`validate_mounts`])
//!   by the API before a function is stored and again at start, then against the host
//!   (symlinks resolved, only directories and regular files, nothing of the state directory),
//!   and mounted `bind` (not recursive), `nosuid,nodev`, `private`.
//! * **cgroups v1, v2 and hybrid are all first-class** (`cgroup`): the runtime creates
//!   `/<cgroup_parent>/<instance-id>` in every hierarchy; we read memory peak and OOM kills
//!   *before* the runtime deletes it, and remove the parent at [`Sandbox::shutdown`].
//! * **Freezing writes the cgroup freezer directly** (`instance_freeze`): the v1 `freezer`
//!   hierarchy where it is mounted, else v2's `cgroup.freeze`. A thaw is one `pwrite` of a
//!   file kept open (tens of microseconds, no process, no wait), where `runtime resume` would
//!   cost a process and 5–9 ms on the request path.
//! * **Events, not polling** (`events`): [`InstanceEvent`]s go to the spec's [`EventSink`]
//!   from where they happen. OOM kills are reported while the instance runs, woken by the
//!   kernel (v1: an eventfd on `memory.oom_control`; v2: `POLLPRI` on `memory.events`), by one
//!   small task per instance (`oom`), like the exit watcher: no thread, no timer.
//! * **Privileged operations go through one seam**, `host::Host`, with a real implementation
//!   and a recording fake for unit tests; integration tests under `tests/` exercise the kernel.
//! * **Nothing is left behind.** Every failure half-way through a start is undone (keeping the
//!   cleanup error next to the original one); [`Sandbox::recover`] removes what a killed daemon
//!   left in the state directory.
//!
//! Module map, following the lifecycle: `runtime` (detect + drive crun/runc), `spec`
//! (`config.json`), `user` (`USER` resolution), `rootfs`, `mounts` (bind mounts), `cgroup`,
//! `netns` (the connector), `network` (bridge mode: `bridge` host set-up, `prepare` thread,
//! `pool`, `netlink`, `subnet`, `dns`), `readiness`, `output`, `reaper` (exit watcher), `oom`
//! (OOM watcher), `events` (emission), `instance_start`, `instance_freeze` (freeze, thaw),
//! `instance_stop`, `recover`, `host`, `error`.

mod blocking;
mod cgroup;
mod error;
mod events;
mod host;
mod instance;
mod instance_freeze;
mod instance_start;
mod instance_stop;
mod mounts;
mod netns;
mod network;
mod oom;
mod output;
mod readiness;
mod reaper;
mod recover;
mod rootfs;
mod runtime;
mod sandbox;
mod seccomp;
mod spec;
mod user;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::{CleanupError, FreezeError, NetworkError, SandboxError, StartError, display_chain};
pub use instance::Instance;
pub use mounts::{
    MAX_BIND_MOUNTS, MAX_MOUNT_PATH_BYTES, MountError, validate_mount, validate_mounts,
};
pub use network::NetlinkError;
pub use sandbox::Sandbox;
pub use user::UserError;

/// Which OCI runtime binary to drive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RuntimePreference {
    /// crun when it works on this host, else runc.
    #[default]
    Auto,
    Crun,
    Runc,
}

#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The data directory: `instances/` and `run/` are created under it.
    pub state_dir: PathBuf,
    /// Name of the Wharf-owned parent cgroup; instances get `/<parent>/<instance-id>`.
    pub cgroup_parent: String,
    pub runtime: RuntimePreference,
    /// The bridge that [`NetworkMode::Bridge`] instances are attached to. Nothing of it exists
    /// on the host until the first such instance starts or [`Sandbox::prepare_network`]; it is
    /// removed at [`Sandbox::shutdown`]. One daemon per bridge name: a second one using the
    /// same name is refused. Its syntax is checked by [`Sandbox::new`], its subnet against the
    /// host's addresses and routes at set-up.
    pub bridge: BridgeConfig,
}

/// Where bridge-mode instances get their outbound access: a Wharf-owned Linux bridge with the
/// first address of `subnet`, NAT to the host's other interfaces, and one veth pair per
/// instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The bridge's interface name (at most 15 bytes); the nftables table is named after it.
    pub name: String,
    /// The instances' subnet, e.g. `10.250.0.0/16`; the bridge takes its first address.
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            name: "wharf0".into(),
            subnet: Ipv4Addr::new(10, 250, 0, 0),
            prefix_len: 16,
        }
    }
}

/// How an instance reaches the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// Its own network namespace with loopback only: nothing outside the instance is reachable.
    #[default]
    None,
    /// Also a veth pair on the Wharf-owned bridge ([`BridgeConfig`]), with NAT for outbound
    /// traffic. The host's own addresses and other instances stay unreachable. The instance
    /// joins a network namespace prepared ahead of time (`eth0` with the next free address of
    /// the subnet, default route via the bridge, IPv6 off); the host's `/etc/resolv.conf` is
    /// mounted read-only when its nameservers are reachable from there (not loopback).
    Bridge,
}

/// A host path bind-mounted into an instance (the seeds' "external data disk"). Checked by
/// [`validate_mounts`] (also at start) and against the host at start; mounted `bind` (a mount
/// below the source does not come along), `nosuid,nodev`, private propagation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// Absolute, plain path on the host: a directory or a regular file (symlinks are resolved
    /// at start), not `/`, not in or above the sandbox's state directory.
    pub source: PathBuf,
    /// Absolute, plain path inside the instance (`/data`, `/tmp/cache`); not `/`, `/tmp`,
    /// nor `/proc`, `/sys`, `/dev` or below them. Created by the runtime when missing.
    pub target: String,
    /// Writes fail with `EROFS`. A read-write mount is writable also under a read-only root.
    pub read_only: bool,
}

/// Something that happened to an instance, for the pool and the logs (each is also logged
/// at `debug!`).
///
/// An instance's events start with `Started` and end with `Removed`; `Exited` comes before
/// [`Instance::exit_status`] shows the exit. Only when the OOM killer kills the init itself
/// may its `OomKill` come just before or just after `Exited`. A failed start emits nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceEvent {
    /// The start succeeded: the init runs (the end of [`Sandbox::start`]).
    Started { pid: u32, timings: StartTimings },
    /// [`Instance::freeze`]: every process is frozen; the kernel took `took` after the write.
    Frozen { took: Duration },
    /// [`Instance::thaw`], or the stop of a frozen instance; `took` is the write.
    Thawed { took: Duration },
    /// The kernel's OOM killer killed a process of the instance — any process, also one that
    /// is not the init, while the instance goes on running. `kills` is the count so far.
    OomKill { kills: u64 },
    /// The init ended, on its own or killed.
    Exited(ExitInfo),
    /// The first [`Instance::stop`] removed it; the numbers are the stop report's.
    Removed {
        memory_peak_bytes: Option<u64>,
        oom_killed: bool,
    },
}

/// Receives instance events. Called from the sandbox's tasks, and from [`Instance::thaw`]
/// on the caller's request path: must not block, and should be cheap.
pub trait EventSink: Send + Sync + 'static {
    fn event(&self, instance_id: &str, event: &InstanceEvent);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    Crun,
    Runc,
}

impl RuntimeKind {
    /// The binary's name: `crun` or `runc`.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Crun => "crun",
            RuntimeKind::Runc => "runc",
        }
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What was chosen at start-up, for the start-up message.
#[derive(Clone, Debug)]
pub struct RuntimeInfo {
    pub kind: RuntimeKind,
    pub path: PathBuf,
    pub version: String,
    /// Why this runtime, e.g. "crun in a private mount namespace (hybrid cgroups)".
    pub note: String,
}

impl std::fmt::Display for RuntimeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({}): {}",
            self.kind,
            self.version,
            self.path.display(),
            self.note
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum User {
    Id {
        uid: u32,
        gid: u32,
    },
    /// As in an image's `USER`: `name`, `uid`, `uid:gid`, `name:group`; resolved in the rootfs.
    Named(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Receives what an instance prints, line by line. Called from the sandbox's reader tasks;
/// must not block for long.
pub trait OutputSink: Send + Sync + 'static {
    fn write_line(&self, instance_id: &str, stream: Stream, line: &str);
}

pub struct InstanceSpec {
    /// Unique among live instances of this sandbox; `[A-Za-z0-9_.-]`, at most 128 bytes.
    pub id: String,
    /// Unpacked layer directories, **base layer first** (manifest order). They are stacked
    /// top-first as the overlay's `lowerdir` and never written to.
    pub layers: Vec<PathBuf>,
    pub args: Vec<String>,
    /// `KEY=value`. `HOME` is added from the rootfs's `/etc/passwd` (or `/`) and `PATH` with the
    /// usual default, when missing.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    /// Empty = the instance id.
    pub hostname: String,
    /// 0 = no memory limit.
    pub memory_limit_bytes: u64,
    /// Size of the tmpfs that holds the overlay's upper layer and `/tmp` together. Must be
    /// greater than 0. Its pages are charged to the instance's memory cgroup: a full layer
    /// fails writes with `ENOSPC` only while its files fit under `memory_limit_bytes` next to
    /// the processes' own memory; past that the OOM killer acts (see the `rootfs` module).
    pub writable_layer_bytes: u64,
    /// 0 or negative = no pids limit.
    pub pids_limit: i64,
    /// The image's files read-only (`root.readonly`): writing them fails with `EROFS`; only
    /// `/tmp` (always writable, on the writable layer), `/dev/shm` and read-write mounts can be
    /// written.
    pub read_only_rootfs: bool,
    /// Refuse to start ([`StartError::RootForbidden`]) when the user resolves to uid 0 (the
    /// contract forbids root).
    pub forbid_root: bool,
    /// Host paths mounted in, after `/tmp` and parents before children (so `/tmp/x` and
    /// `/data/sub` below `/data` work). At most [`MAX_BIND_MOUNTS`].
    pub mounts: Vec<BindMount>,
    pub network: NetworkMode,
    /// Ports Wharf listens on at `127.0.0.1` inside the instance's network namespace, bound
    /// before its process starts (so that the process can connect at once): the Lambda Runtime
    /// API. Taken with [`Instance::take_listener`].
    pub listen: Vec<u16>,
    pub output: Arc<dyn OutputSink>,
    /// `None`: events only go to `tracing` (at `debug!`).
    pub events: Option<Arc<dyn EventSink>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitInfo {
    Exited(i32),
    Signaled(i32),
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitInfo::Exited(code) => write!(f, "exit code {code}"),
            ExitInfo::Signaled(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

#[derive(Debug, Default)]
pub struct StopReport {
    pub exit: Option<ExitInfo>,
    pub memory_peak_bytes: Option<u64>,
    pub oom_killed: bool,
    pub cleanup_errors: Vec<String>,
}

#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Instances (bundle directories or runtime containers) that were cleaned up.
    pub instances_removed: usize,
    /// Containers deleted through the runtime (`delete --force`).
    pub containers_deleted: usize,
    /// Mounts found under `instances/` and unmounted.
    pub mounts_removed: usize,
    /// Empty cgroup directories removed under the parent, all hierarchies counted.
    pub cgroups_removed: usize,
    /// Network interfaces of the configured bridge removed: veths left by instances that
    /// were running, and the bridge itself (its nftables table goes with it).
    pub interfaces_removed: usize,
    /// What could not be cleaned up (recovery goes on past errors).
    pub errors: Vec<String>,
}

/// How long the phases of [`Sandbox::start`] took, for logs and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartTimings {
    /// Bundle, tmpfs, overlay, user resolution, `config.json` (and the network wait below).
    pub prepare: Duration,
    /// Bridge mode: waiting for a prepared network namespace — microseconds when the pool had
    /// one, a whole preparation when it was empty (and the host's set-up, the first time).
    /// Zero otherwise.
    pub network: Duration,
    /// `runtime create`.
    pub create: Duration,
    /// `runtime start`.
    pub start: Duration,
    /// The whole of [`Sandbox::start`].
    pub total: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum NotListening {
    #[error("instance exited ({0:?}) before listening")]
    Exited(ExitInfo),
    #[error("nothing listened within the deadline")]
    Deadline,
}

/// The pool spawns these futures on a multi-threaded runtime: they must stay `Send`.
#[cfg(test)]
#[allow(dead_code, clippy::let_underscore_future)]
fn futures_are_send(sandbox: &Sandbox, instance: &Instance, spec: InstanceSpec) {
    fn send<T: Send>(_: T) {}
    send(sandbox.start(spec));
    send(sandbox.recover());
    send(sandbox.shutdown());
    send(sandbox.prepare_network());
    send(instance.connect(9000));
    send(instance.wait_listening(9000, Duration::ZERO));
    send(instance.exited());
    send(instance.stop(Duration::ZERO));
    send(instance.freeze());
    fn sync<T: Send + Sync>() {}
    sync::<Sandbox>();
    sync::<Instance>();
}
