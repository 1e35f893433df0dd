//! API SKETCH — to be replaced by the real implementation (see the helper's task).
//!
//! The sandbox piece: unpacked layers + a spec → a running, isolated instance.
#![allow(unused_variables, clippy::unimplemented)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    Crun,
    Runc,
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum User {
    Id { uid: u32, gid: u32 },
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
    pub id: String,
    pub layers: Vec<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub hostname: String,
    pub memory_limit_bytes: u64,
    pub writable_layer_bytes: u64,
    pub pids_limit: i64,
    pub output: Arc<dyn OutputSink>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitInfo {
    Exited(i32),
    Signaled(i32),
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
    pub instances_removed: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("sandbox error")]
pub struct SandboxError;

#[derive(Debug, thiserror::Error)]
#[error("start error")]
pub struct StartError;

#[derive(Debug, thiserror::Error)]
pub enum NotListening {
    #[error("instance exited ({0:?}) before listening")]
    Exited(ExitInfo),
    #[error("nothing listened within the deadline")]
    Deadline,
}

#[derive(Clone)]
pub struct Sandbox {}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        unimplemented!()
    }
    pub fn runtime(&self) -> &RuntimeInfo {
        unimplemented!()
    }
    pub async fn recover(&self) -> Result<RecoveryReport, SandboxError> {
        unimplemented!()
    }
    pub async fn start(&self, spec: InstanceSpec) -> Result<Instance, StartError> {
        unimplemented!()
    }
    pub async fn shutdown(&self) {
        unimplemented!()
    }
}

pub struct Instance {}

impl Instance {
    pub fn id(&self) -> &str {
        unimplemented!()
    }
    pub fn pid(&self) -> u32 {
        unimplemented!()
    }
    pub async fn connect(&self, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        unimplemented!()
    }
    pub async fn wait_listening(
        &self,
        port: u16,
        deadline: Duration,
    ) -> Result<tokio::net::TcpStream, NotListening> {
        unimplemented!()
    }
    pub fn exit_status(&self) -> Option<ExitInfo> {
        unimplemented!()
    }
    pub async fn exited(&self) -> ExitInfo {
        unimplemented!()
    }
    pub fn recent_output(&self) -> String {
        unimplemented!()
    }
    pub fn memory_peak_bytes(&self) -> Option<u64> {
        unimplemented!()
    }
    pub async fn stop(&self, grace: Duration) -> StopReport {
        unimplemented!()
    }
}
