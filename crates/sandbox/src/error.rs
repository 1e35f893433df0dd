//! Error types, one enum per operation: [`SandboxError`] for set-up, recovery and shutdown,
//! [`StartError`] for [`crate::Sandbox::start`], [`FreezeError`] for
//! [`crate::Instance::freeze`] and [`crate::Instance::thaw`], [`NetworkError`] for bridge
//! networking ([`crate::Sandbox::prepare_network`], and inside the others). Variants carry the
//! instance id, the paths and, for runtime failures, the runtime's own message (from its JSON
//! log, not the function's output); network errors the operation, the interface and the errno.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::mounts::MountError;
use crate::network::NetlinkError;
use crate::user::UserError;
use crate::{ExitInfo, RuntimeKind, User};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox config: {reason}")]
    InvalidConfig { reason: String },

    #[error("failed to create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to read the mount table")]
    MountTable {
        #[source]
        source: io::Error,
    },

    #[error("no cgroup hierarchy is mounted")]
    NoCgroups,

    #[error("no usable oci runtime: {reason}")]
    NoRuntime { reason: String },

    #[error("failed to run {program} {verb}")]
    RuntimeExec {
        program: PathBuf,
        verb: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("{runtime} failed the start-up probe: {message}")]
    RuntimeProbe {
        runtime: RuntimeKind,
        message: String,
    },

    #[error("failed to prepare the runtime probe bundle at {path}")]
    ProbeBundle {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to become a child subreaper")]
    Subreaper {
        #[source]
        source: io::Error,
    },

    #[error("failed to start the network namespace connector")]
    Connector {
        #[source]
        source: io::Error,
    },

    #[error("the bridge network config cannot be used")]
    Bridge {
        #[source]
        source: NetworkError,
    },
}

/// Bridge networking: the host's bridge and nftables table, and the prepared network
/// namespaces of bridge-mode instances.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid bridge config: {reason}")]
    InvalidConfig { reason: String },

    #[error(
        "bridge subnet {subnet} overlaps {what} {existing} of interface {interface}; choose another subnet with --bridge-subnet"
    )]
    SubnetOverlap {
        subnet: String,
        /// "the address" or "the route to".
        what: &'static str,
        existing: String,
        interface: String,
    },

    #[error(
        "interface {name} exists and is not a bridge Wharf created; remove it or choose another name with --bridge-name"
    )]
    NotOurs { name: String },

    #[error(
        "bridge {name} is in use by another Wharf process; give each daemon its own --bridge-name and --bridge-subnet"
    )]
    InUse { name: String },

    /// A netlink request failed; the source carries the kernel's errno (and message).
    #[error("netlink: failed to {op} {interface}")]
    Netlink {
        op: &'static str,
        interface: String,
        #[source]
        source: NetlinkError,
    },

    #[error("failed to {op} a network namespace")]
    Namespace {
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("failed to write {path}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "nft not found: bridge networking needs it; install the nftables package (Debian: apt-get install nftables)"
    )]
    NftMissing,

    #[error("failed to write the nftables rules of table {table} to {path}")]
    NftFile {
        table: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to run {program} for table {table}")]
    NftExec {
        table: String,
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("nft failed to {action} table {table}: {message}")]
    Nft {
        action: &'static str,
        table: String,
        message: String,
    },

    #[error(
        "no free address left in bridge subnet {subnet} ({in_use} in use); choose a larger one with --bridge-subnet"
    )]
    AddressesExhausted { subnet: String, in_use: usize },

    #[error("failed to start the network preparation thread")]
    ThreadStart {
        #[source]
        source: io::Error,
    },

    #[error("the network preparation thread has stopped (see the log for why)")]
    ThreadStopped,

    #[error("failed to prepare a network namespace for the pool: {reason}")]
    Refill { reason: String },

    #[error("the bridge network has been shut down")]
    ShutDown,
}

impl NetworkError {
    /// The kernel's errno, for errors that have one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetworkError::Netlink { source, .. } => Some(source.errno),
            NetworkError::Namespace { source, .. }
            | NetworkError::Sysctl { source, .. }
            | NetworkError::NftFile { source, .. }
            | NetworkError::NftExec { source, .. }
            | NetworkError::ThreadStart { source } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One step of undoing a half-done start or a stop that failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("failed to unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to remove {path}")]
    RemoveDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{runtime} delete of {id} failed: {message}")]
    RuntimeDelete {
        runtime: RuntimeKind,
        id: String,
        message: String,
    },

    #[error("failed to remove the network interface of instance {id}")]
    Network {
        id: String,
        #[source]
        source: NetworkError,
    },
}

/// The cleanup errors of one failed start, displayed `; `-separated.
#[derive(Debug)]
pub struct CleanupErrors(pub Vec<CleanupError>);

impl std::fmt::Display for CleanupErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}", display_chain(e))?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid instance spec for {id:?}: {reason}")]
    InvalidSpec { id: String, reason: String },

    #[error("instance {id} already exists at {path}")]
    AlreadyExists { id: String, path: PathBuf },

    #[error("failed to prepare {path} for instance {id}")]
    Bundle {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "failed to mount the writable layer (tmpfs, {size_bytes} bytes) at {path} for instance {id}"
    )]
    MountWritableLayer {
        id: String,
        path: PathBuf,
        size_bytes: u64,
        #[source]
        source: io::Error,
    },

    #[error("failed to mount the overlay rootfs at {path} for instance {id}")]
    MountRootfs {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to resolve the user of instance {id}")]
    User {
        id: String,
        #[source]
        source: UserError,
    },

    /// A bind mount broke a rule ([`crate::validate_mounts`]) or failed the check against the
    /// host at start; `source` names the mount and what to change.
    #[error("the bind mounts of instance {id} were refused")]
    Mount {
        id: String,
        /// Boxed: the paths it names would make every `StartError` large.
        #[source]
        source: Box<MountError>,
    },

    /// [`crate::InstanceSpec::forbid_root`] and the user resolved to uid 0.
    #[error(
        "instance {id} would run as root ({}), which is forbidden here: set uid/gid to a \
         non-root user",
        root_reason(.user)
    )]
    RootForbidden {
        id: String,
        /// The spec's user, as given: says whether uid 0 was given or came from the image.
        user: User,
    },

    #[error("failed to write {path} for instance {id}")]
    WriteSpec {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to create the output pipes of instance {id}")]
    Pipes {
        id: String,
        #[source]
        source: io::Error,
    },

    #[error("failed to run {program} {verb} for instance {id}")]
    RuntimeExec {
        id: String,
        program: PathBuf,
        verb: &'static str,
        #[source]
        source: io::Error,
    },

    /// The runtime ran and failed; `message` is its own error message.
    #[error("{runtime} {verb} failed for instance {id}: {message}")]
    Runtime {
        id: String,
        runtime: RuntimeKind,
        verb: &'static str,
        message: String,
    },

    #[error("failed to read the init pid of instance {id} from {path}")]
    PidFile {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to open a pidfd for pid {pid} of instance {id}")]
    Pidfd {
        id: String,
        pid: u32,
        #[source]
        source: io::Error,
    },

    #[error("failed to open the network namespace {path} of instance {id}")]
    Netns {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to listen on 127.0.0.1:{port} inside instance {id}'s network namespace")]
    Listen {
        id: String,
        port: u16,
        #[source]
        source: io::Error,
    },

    #[error("failed to set up the network of instance {id}")]
    Network {
        id: String,
        #[source]
        source: NetworkError,
    },

    /// The start failed and undoing it failed too: both are kept.
    #[error("{error}; cleaning up instance {id} failed too: {cleanup}")]
    Cleanup {
        id: String,
        #[source]
        error: Box<StartError>,
        cleanup: CleanupErrors,
    },
}

impl StartError {
    /// The id of the instance that failed to start.
    pub fn instance_id(&self) -> &str {
        match self {
            StartError::InvalidSpec { id, .. }
            | StartError::AlreadyExists { id, .. }
            | StartError::Bundle { id, .. }
            | StartError::MountWritableLayer { id, .. }
            | StartError::MountRootfs { id, .. }
            | StartError::User { id, .. }
            | StartError::Mount { id, .. }
            | StartError::RootForbidden { id, .. }
            | StartError::WriteSpec { id, .. }
            | StartError::Pipes { id, .. }
            | StartError::RuntimeExec { id, .. }
            | StartError::Runtime { id, .. }
            | StartError::PidFile { id, .. }
            | StartError::Pidfd { id, .. }
            | StartError::Netns { id, .. }
            | StartError::Listen { id, .. }
            | StartError::Network { id, .. }
            | StartError::Cleanup { id, .. } => id,
        }
    }
}

/// Freezing or thawing an instance through its cgroup freezer.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("instance {id} has exited ({exit}): there is nothing to freeze; stop it")]
    Exited { id: String, exit: ExitInfo },

    #[error("instance {id} is being stopped: it cannot be frozen any more")]
    Stopped { id: String },

    #[error("instance {id} has no cgroup freezer: mount the v1 freezer hierarchy or use cgroup v2")]
    NoFreezer { id: String },

    #[error("failed to open the freezer file {path} of instance {id}")]
    Open {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to write {value} to {path} for instance {id}")]
    Write {
        id: String,
        path: PathBuf,
        value: &'static str,
        #[source]
        source: io::Error,
    },

    /// The freeze was undone (best effort: the cgroup is likely gone).
    #[error("failed to read the freezer state {path} of instance {id}")]
    Read {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The kernel did not report every task frozen in time; the instance was thawed again.
    #[error(
        "instance {id} did not freeze within {waited:?} (the kernel still reported {state}); it was thawed again: retry later or stop it"
    )]
    Timeout {
        id: String,
        waited: Duration,
        state: String,
    },

    /// The freeze failed and thawing back failed too: both are kept.
    #[error(
        "instance {id} did not freeze within {waited:?} (the kernel still reported {state}) and writing THAWED to {path} failed: it may be left frozen, stop it"
    )]
    Stuck {
        id: String,
        waited: Duration,
        state: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A thaw or a stop came while the freeze was waiting for the kernel.
    #[error("freezing instance {id} was cancelled by a thaw or a stop")]
    Cancelled { id: String },
}

impl FreezeError {
    /// The id of the instance.
    pub fn instance_id(&self) -> &str {
        match self {
            FreezeError::Exited { id, .. }
            | FreezeError::Stopped { id }
            | FreezeError::NoFreezer { id }
            | FreezeError::Open { id, .. }
            | FreezeError::Write { id, .. }
            | FreezeError::Read { id, .. }
            | FreezeError::Timeout { id, .. }
            | FreezeError::Stuck { id, .. }
            | FreezeError::Cancelled { id } => id,
        }
    }
}

/// How a user that resolved to uid 0 was chosen, for [`StartError::RootForbidden`].
fn root_reason(user: &User) -> String {
    match user {
        User::Id { uid, gid } => format!("uid {uid} and gid {gid} were given"),
        User::Named(name) if name.trim().is_empty() => {
            "the image sets no USER, which means root".to_owned()
        }
        User::Named(name) => format!("the image's USER {name:?} is uid 0"),
    }
}

/// `error: source: source…`, for logs and report strings.
pub fn display_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_keeps_both_errors() {
        let err = StartError::Cleanup {
            id: "i1".into(),
            error: Box::new(StartError::Runtime {
                id: "i1".into(),
                runtime: RuntimeKind::Crun,
                verb: "create",
                message: "executable file `/nope` not found".into(),
            }),
            cleanup: CleanupErrors(vec![CleanupError::Unmount {
                path: "/x/rootfs".into(),
                source: io::Error::from_raw_os_error(libc::EBUSY),
            }]),
        };
        let text = err.to_string();
        assert!(text.contains("crun create failed for instance i1: executable file"));
        assert!(text.contains("failed to unmount /x/rootfs"), "{text}");
        assert_eq!(err.instance_id(), "i1");
        let chain = display_chain(&err);
        assert!(chain.starts_with("crun create failed"), "{chain}");
    }

    #[test]
    fn root_forbidden_says_how_the_user_was_chosen() {
        let err = |user| {
            StartError::RootForbidden {
                id: "fn-1".into(),
                user,
            }
            .to_string()
        };
        assert_eq!(
            err(User::Id { uid: 0, gid: 0 }),
            "instance fn-1 would run as root (uid 0 and gid 0 were given), which is forbidden \
             here: set uid/gid to a non-root user"
        );
        assert_eq!(
            err(User::Named("root".into())),
            "instance fn-1 would run as root (the image's USER \"root\" is uid 0), which is \
             forbidden here: set uid/gid to a non-root user"
        );
        assert!(
            err(User::Named(String::new())).contains("(the image sets no USER, which means root)")
        );
    }

    #[test]
    fn network_errors_name_the_operation_interface_and_errno() {
        let err = StartError::Network {
            id: "i1".into(),
            source: NetworkError::Netlink {
                op: "create the veth",
                interface: "wh0afa0002".into(),
                source: NetlinkError {
                    errno: libc::EEXIST,
                    message: Some("Device exists".into()),
                },
            },
        };
        let chain = display_chain(&err);
        assert_eq!(
            chain,
            "failed to set up the network of instance i1: netlink: failed to create the veth \
             wh0afa0002: File exists (os error 17): Device exists"
        );
        let StartError::Network { source, .. } = &err else {
            unreachable!()
        };
        assert_eq!(source.errno(), Some(libc::EEXIST));
        let overlap = NetworkError::SubnetOverlap {
            subnet: "10.250.0.0/16".into(),
            what: "the address",
            existing: "10.250.3.1/24".into(),
            interface: "eth1".into(),
        };
        let text = overlap.to_string();
        assert!(
            text.contains("eth1") && text.contains("--bridge-subnet"),
            "{text}"
        );
        assert!(
            NetworkError::NftMissing
                .to_string()
                .contains("install the nftables package")
        );
    }
}
