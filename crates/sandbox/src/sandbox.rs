//! [`Sandbox`]: the per-daemon state shared by all instances — the chosen runtime, the cgroup
//! layout, the connector thread, the directories, the bridge network (set up on first use).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tracing::{debug, info, warn};

use crate::cgroup::CgroupLayout;
use crate::error::{NetworkError, SandboxError};
use crate::host::{Host, RealHost};
use crate::netns::Connector;
use crate::network::Network;
use crate::runtime::{self, ChooseContext, Runtime};
use crate::{Instance, InstanceSpec, RecoveryReport, RuntimeInfo, SandboxConfig, StartError};

/// Turns unpacked images into running, isolated instances. Cheap to clone; all clones share
/// one connector thread and one runtime choice.
#[derive(Clone)]
pub struct Sandbox {
    pub(crate) inner: Arc<SandboxInner>,
}

pub(crate) struct SandboxInner {
    pub config: SandboxConfig,
    pub host: Arc<dyn Host>,
    pub runtime: Runtime,
    pub info: RuntimeInfo,
    pub cgroups: CgroupLayout,
    pub connector: Connector,
    pub instances_dir: PathBuf,
    pub run_dir: PathBuf,
    /// Host hard limit for RLIMIT_NOFILE (`u64::MAX` = unlimited).
    pub nofile_hard: u64,
    /// Whether memory+swap can be limited.
    pub limit_swap: bool,
    /// The freezer keeper's cgroup, made at the first freeze (`keep_freezer_on`).
    pub freezer_keeper: OnceLock<Option<PathBuf>>,
    /// Bridge mode: the host's bridge and the pool of prepared namespaces.
    pub network: Network,
}

/// An empty cgroup under the parent that stays frozen while the sandbox runs. While any cgroup
/// is frozen the kernel keeps its freezer switched on (a static key); thawing the *last* frozen
/// cgroup switches it off — patching kernel code and interrupting every CPU, 0.8–5 ms on a busy
/// host — and the next freeze switches it on again. With this one always frozen, a thaw is a
/// plain write: 5–10 µs instead of about 80 µs here, and no stall on a loaded machine. The
/// leading dot keeps it apart from instance ids, which may not start with one.
pub(crate) const FREEZER_KEEPER: &str = ".wharf-freezer-on";

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("state_dir", &self.inner.config.state_dir)
            .field("cgroup_parent", &self.inner.config.cgroup_parent)
            .field("runtime", &self.inner.info)
            .finish()
    }
}

/// Longest cgroup parent name.
pub(crate) const MAX_PARENT_BYTES: usize = 64;
/// Longest instance id (a function name plus a suffix).
pub(crate) const MAX_ID_BYTES: usize = 128;

/// Names used as path components (cgroup parent, instance ids): no separators, no dot-dot.
pub(crate) fn valid_name(name: &str, max_bytes: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_bytes
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Creates `path` private to root (0700, also when it exists): instance bundles hold each
/// instance's view of its image, which no other host user may reach.
fn create_dir(path: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| SandboxError::CreateDir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

impl SandboxInner {
    /// Makes the frozen, empty keeper cgroup ([`FREEZER_KEEPER`]) once, before the first freeze;
    /// the instance's own cgroup, made by the runtime, means the parent exists. A failure only
    /// costs thaw speed: it is logged and not tried again.
    pub fn keep_freezer_on(&self) {
        self.freezer_keeper.get_or_init(|| {
            let files = self.cgroups.freezer(&self.config.cgroup_parent, FREEZER_KEEPER)?;
            let dir = files.control.parent()?.to_path_buf();
            let made = std::fs::create_dir(&dir)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(e),
                })
                .and_then(|()| std::fs::write(&files.control, files.kind.request(true)));
            match made {
                Ok(()) => {
                    debug!(dir = %dir.display(), "freezer keeper frozen");
                    Some(dir)
                }
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    warn!(dir = %dir.display(), error = %e, "no freezer keeper: thaws may be slower");
                    None
                }
            }
        });
    }
}

impl Sandbox {
    /// Prepare the state directory, choose the runtime (running a probe container, which
    /// takes some tens of milliseconds), become a child subreaper and start the connector.
    /// Blocking; call once at start-up.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        Sandbox::with_host(config, Arc::new(RealHost))
    }

    pub(crate) fn with_host(
        config: SandboxConfig,
        host: Arc<dyn Host>,
    ) -> Result<Sandbox, SandboxError> {
        if !valid_name(&config.cgroup_parent, MAX_PARENT_BYTES) {
            return Err(SandboxError::InvalidConfig {
                reason: format!(
                    "cgroup parent {:?} must be 1-{MAX_PARENT_BYTES} characters of [A-Za-z0-9_.-], not starting with '.'",
                    config.cgroup_parent
                ),
            });
        }
        let network = Network::new(config.bridge.clone(), config.state_dir.join("run"))
            .map_err(|source| SandboxError::Bridge { source })?;
        let instances_dir = config.state_dir.join("instances");
        let run_dir = config.state_dir.join("run");
        create_dir(&instances_dir)?;
        create_dir(&run_dir)?;

        let mountinfo = host
            .mountinfo()
            .map_err(|source| SandboxError::MountTable { source })?;
        let cgroups = CgroupLayout::from_mountinfo(&mountinfo);
        let nofile_hard = host.nofile_hard_limit().unwrap_or(u64::MAX);
        let limit_swap = cgroups.swap_accounting(host.as_ref());

        let cx = ChooseContext {
            host: host.as_ref(),
            layout: &cgroups,
            run_dir: &run_dir,
            cgroup_parent: &config.cgroup_parent,
            nofile: nofile_hard,
            limit_swap,
        };
        // Container inits are reparented to us when `runtime create` exits (the probe's too).
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(|e| SandboxError::Subreaper { source: e.into() })?;
        let (runtime, info) = runtime::choose(&cx, config.runtime)?;
        create_dir(&runtime.root)?;
        let connector = Connector::start().map_err(|source| SandboxError::Connector { source })?;

        info!(
            runtime = %info.kind,
            version = %info.version,
            path = %info.path.display(),
            note = %info.note,
            cgroups = ?cgroups.mode(),
            nofile_hard,
            limit_swap,
            "sandbox ready"
        );
        Ok(Sandbox {
            inner: Arc::new(SandboxInner {
                config,
                host,
                runtime,
                info,
                cgroups,
                connector,
                instances_dir,
                run_dir,
                nofile_hard,
                limit_swap,
                freezer_keeper: OnceLock::new(),
                network,
            }),
        })
    }

    pub fn runtime(&self) -> &RuntimeInfo {
        &self.inner.info
    }

    /// The state directory this sandbox works in.
    pub fn state_dir(&self) -> &Path {
        &self.inner.config.state_dir
    }

    /// Clean up what a previous (killed) daemon left in this state directory: containers,
    /// mounts, bundles and empty cgroups; and on the host, the configured bridge with its
    /// leftover veths and nftables table (only if it is Wharf's and no live daemon holds it).
    /// Call before the first start.
    pub async fn recover(&self) -> Result<RecoveryReport, SandboxError> {
        crate::recover::recover(&self.inner).await
    }

    /// Start an instance: bundle, overlay rootfs, `config.json`, `runtime create` + `start`.
    /// On failure everything done so far is undone.
    pub async fn start(&self, spec: InstanceSpec) -> Result<Instance, StartError> {
        crate::instance_start::start(&self.inner, spec).await
    }

    /// Set up bridge networking and fill the pool of prepared network namespaces, so that the
    /// first [`NetworkMode::Bridge`](crate::NetworkMode::Bridge) cold start finds one ready
    /// (the pool calls it when such a function is deployed). The first call creates the bridge,
    /// enables IPv4 forwarding and installs the nftables table, which takes some milliseconds
    /// and runs `nft` once; later calls only wait for the pool to be full again. A start in
    /// bridge mode does the same set-up itself if this was never called.
    pub async fn prepare_network(&self) -> Result<(), NetworkError> {
        self.inner.network.prepare(&self.inner.host).await
    }

    /// Remove the bridge network (prepared namespaces, veths, the nftables table, the bridge)
    /// if it was set up, and the Wharf-owned parent cgroup in every hierarchy, if empty. Stop
    /// all instances first.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if let Some(Some(keeper)) = inner.freezer_keeper.get() {
            match inner.host.remove_dir(keeper) {
                Ok(()) => debug!(dir = %keeper.display(), "removed the freezer keeper"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(dir = %keeper.display(), error = %e, "freezer keeper not removed"),
            }
        }
        for e in inner.network.shutdown(&inner.host).await {
            warn!(error = %crate::error::display_chain(&e), "bridge network not fully removed");
        }
        for dir in inner.cgroups.parent_dirs(&inner.config.cgroup_parent) {
            match inner.host.remove_dir(&dir) {
                Ok(()) => debug!(dir = %dir.display(), "removed parent cgroup"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(dir = %dir.display(), error = %e, "parent cgroup not removed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("wharf", MAX_PARENT_BYTES));
        assert!(valid_name("fn-hello_1.v2", MAX_PARENT_BYTES));
        assert!(valid_name(&"x".repeat(100), MAX_ID_BYTES));
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "a:b",
            &"x".repeat(65),
        ] {
            assert!(!valid_name(bad, MAX_PARENT_BYTES), "{bad:?}");
        }
    }
}
