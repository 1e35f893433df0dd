//! Starting an instance — the cold-start path, so it is lean: no `runtime state`, no sleeps,
//! no polling.
//!
//! 0. bridge mode only: a prepared network namespace from the pool (`network`);
//! 1. the bind mounts checked against the host (before anything is created, so a refused
//!    mount leaves nothing); `instances/<id>/`, the tmpfs for the writable layer (with
//!    `/tmp`), the overlay rootfs;
//! 2. the image's `USER` resolved in the merged rootfs, `HOME` and `PATH` defaulted; uid 0
//!    refused when the spec forbids root;
//! 3. `config.json` (bridge mode: joining the prepared namespace, the host's `resolv.conf`);
//! 4. `runtime create` with the container's stdout/stderr = our pipes, the runtime's own
//!    errors in a JSON log;
//! 5. a pidfd for the init (from the pid file), its netns, the exit watcher;
//! 6. start: crun's init waits reading an exec fifo, which we write ourselves as `crun start`
//!    would (one runtime process per cold start instead of two); otherwise `runtime start`.
//!
//! Each step records what it did; on failure the steps are undone in reverse order and a
//! cleanup failure is reported together with the original error.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use tracing::{debug, warn};

use crate::error::{CleanupError, CleanupErrors, StartError};
use crate::host::{CommandOutput, Host, RuntimeCommand};
use crate::output::{OutputCapture, OutputPipes};
use crate::rootfs::{self, InstancePaths};
use crate::sandbox::{MAX_ID_BYTES, SandboxInner, valid_name};
use crate::{Instance, InstanceSpec, NetworkMode, StartTimings, spec, user};

/// What has been done so far, to undo on failure.
#[derive(Default)]
struct Progress {
    bundle: bool,
    tmpfs: bool,
    overlay: bool,
    /// `runtime create` was run (it may have left state even when it failed).
    container: bool,
    /// Bridge mode: the prepared network namespace taken from the pool, until it is leased
    /// to the instance. Released after the container is deleted.
    network: Option<crate::network::Slot>,
}

/// Run a runtime command off the async threads (it takes tens of milliseconds).
pub(crate) async fn run_runtime(
    host: &Arc<dyn Host>,
    command: RuntimeCommand,
) -> std::io::Result<CommandOutput> {
    let host = host.clone();
    tokio::task::spawn_blocking(move || host.run(command))
        .await
        .map_err(std::io::Error::other)?
}

pub(crate) async fn start(
    sb: &Arc<SandboxInner>,
    spec: InstanceSpec,
) -> Result<Instance, StartError> {
    let started = Instant::now();
    let id = spec.id.clone();
    if !valid_name(&id, MAX_ID_BYTES) {
        return Err(StartError::InvalidSpec {
            id,
            reason: format!(
                "the id must be 1-{MAX_ID_BYTES} characters of [A-Za-z0-9_.-], not starting with '.'"
            ),
        });
    }
    if spec.writable_layer_bytes == 0 {
        // tmpfs would take size=0 as "unlimited".
        return Err(StartError::InvalidSpec {
            id,
            reason: "writable_layer_bytes must be greater than 0".into(),
        });
    }
    if spec.layers.is_empty() {
        return Err(StartError::InvalidSpec {
            id,
            reason: "no layers".into(),
        });
    }
    if spec.args.is_empty() {
        return Err(StartError::InvalidSpec {
            id,
            reason: "no command (args is empty)".into(),
        });
    }
    // Bind mounts: the rules the API applies before storing a function, applied again here.
    if let Err(source) = crate::mounts::validate_mounts(&spec.mounts) {
        return Err(StartError::Mount {
            id,
            source: Box::new(source),
        });
    }
    let paths = InstancePaths::new(&sb.instances_dir, &id);
    let mut progress = Progress::default();
    match start_steps(sb, &spec, &paths, &mut progress, started).await {
        Ok(instance) => Ok(instance),
        Err(error) => {
            debug!(instance = %id, error = %error, "start failed, undoing");
            let mut cleanup = undo(sb, &id, &paths, &progress).await;
            // The network last: the container (deleted by now) was using it.
            if let Some(slot) = progress.network.take()
                && let Err(source) = sb.network.release_slot(slot).await
            {
                cleanup.push(CleanupError::Network {
                    id: id.clone(),
                    source,
                });
            }
            if cleanup.is_empty() {
                Err(error)
            } else {
                Err(StartError::Cleanup {
                    id,
                    error: Box::new(error),
                    cleanup: CleanupErrors(cleanup),
                })
            }
        }
    }
}

async fn start_steps(
    sb: &Arc<SandboxInner>,
    spec: &InstanceSpec,
    paths: &InstancePaths,
    progress: &mut Progress,
    started: Instant,
) -> Result<Instance, StartError> {
    let id = spec.id.as_str();
    let host = sb.host.as_ref();
    let bundle_err = |path: &Path| {
        let path = path.to_owned();
        move |source| StartError::Bundle {
            id: id.to_owned(),
            path,
            source,
        }
    };

    // 0. Bridge mode: a prepared network namespace (from the pool: no preparation here).
    let t = Instant::now();
    let network = match spec.network {
        NetworkMode::None => None,
        NetworkMode::Bridge => {
            let (slot, resolv_conf) =
                sb.network
                    .take(&sb.host)
                    .await
                    .map_err(|source| StartError::Network {
                        id: id.to_owned(),
                        source,
                    })?;
            let joined = (slot.ns_path(), resolv_conf, slot.netns.clone());
            debug!(instance = %id, veth = %slot.veth, addr = %slot.addr, "network namespace taken");
            progress.network = Some(slot);
            Some(joined)
        }
    };
    let network_took = if network.is_some() {
        t.elapsed()
    } else {
        std::time::Duration::ZERO
    };

    // 1-3 touch the file system (mkdir, mounts, passwd, config.json): a few milliseconds
    // that must not hold an async worker.
    crate::blocking::run(|| -> Result<(), StartError> {
        // 1. Bind mounts against the host (nothing to stat when there are none), then the
        // bundle and rootfs.
        let bind_mounts = crate::mounts::resolve_all_on_host(&spec.mounts, &sb.config.state_dir)
            .map_err(|source| StartError::Mount {
                id: id.to_owned(),
                source: Box::new(source),
            })?;
        match std::fs::create_dir(&paths.bundle) {
            Ok(()) => progress.bundle = true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StartError::AlreadyExists {
                    id: id.to_owned(),
                    path: paths.bundle.clone(),
                });
            }
            Err(e) => return Err(bundle_err(&paths.bundle)(e)),
        }
        let top_layer = spec.layers.last().expect("checked non-empty");
        rootfs::mount_writable_layer(host, paths, spec.writable_layer_bytes, top_layer).map_err(
            |source| StartError::MountWritableLayer {
                id: id.to_owned(),
                path: paths.rw.clone(),
                size_bytes: spec.writable_layer_bytes,
                source,
            },
        )?;
        progress.tmpfs = true;
        rootfs::mount_rootfs(host, paths, &spec.layers).map_err(|source| {
            StartError::MountRootfs {
                id: id.to_owned(),
                path: paths.rootfs.clone(),
                source,
            }
        })?;
        progress.overlay = true;

        // 2. User, environment.
        let user = user::resolve_in_rootfs(&paths.rootfs, &spec.user).map_err(|source| {
            StartError::User {
                id: id.to_owned(),
                source,
            }
        })?;
        if spec.forbid_root && user.uid == 0 {
            return Err(StartError::RootForbidden {
                id: id.to_owned(),
                user: spec.user.clone(),
            });
        }

        // 3. config.json.
        let params = spec::SpecParams {
            args: &spec.args,
            env: spec::instance_env(&spec.env, &user.home),
            cwd: if spec.cwd.is_empty() { "/" } else { &spec.cwd },
            uid: user.uid,
            gid: user.gid,
            // A new UTS namespace starts with the host's name: never leave it at that.
            hostname: if spec.hostname.is_empty() {
                id
            } else {
                &spec.hostname
            },
            rootfs: &paths.rootfs,
            readonly_root: spec.read_only_rootfs,
            tmp: &paths.tmp,
            bind_mounts: &bind_mounts,
            cgroups_path: crate::cgroup::CgroupLayout::cgroups_path(&sb.config.cgroup_parent, id),
            memory_limit_bytes: spec.memory_limit_bytes,
            limit_swap: sb.limit_swap,
            pids_limit: spec.pids_limit,
            nofile: spec::clamp_nofile(spec::DEFAULT_NOFILE, Some(sb.nofile_hard)),
        };
        let write_err = |source: std::io::Error| StartError::WriteSpec {
            id: id.to_owned(),
            path: paths.config.clone(),
            source,
        };
        let mut config = spec::build(&params).map_err(|e| write_err(std::io::Error::other(e)))?;
        if let Some((ns_path, resolv_conf, _)) = &network {
            spec::join_network_namespace(&mut config, ns_path);
            if let Some(file) = resolv_conf {
                spec::mount_resolv_conf(&mut config, file)
                    .map_err(|e| write_err(std::io::Error::other(e)))?;
            }
        }
        let json = serde_json::to_vec(&config).map_err(|e| write_err(e.into()))?;
        std::fs::write(&paths.config, json).map_err(write_err)?;
        Ok(())
    })?;
    let prepared = started.elapsed();

    // 4. runtime create, with the function's output on our pipes.
    let pipes = OutputPipes::new().map_err(|source| StartError::Pipes {
        id: id.to_owned(),
        source,
    })?;
    let output = OutputCapture::start(
        id,
        pipes.stdout_read,
        pipes.stderr_read,
        spec.output.clone(),
    )
    .map_err(|source| StartError::Pipes {
        id: id.to_owned(),
        source,
    })?;
    let create = sb.runtime.create(
        id,
        &paths.bundle,
        &paths.pid_file,
        &paths.runtime_log,
        (pipes.stdout_write, pipes.stderr_write),
    );
    let t = Instant::now();
    progress.container = true;
    let out = run_runtime(&sb.host, create)
        .await
        .map_err(|source| runtime_exec_err(sb, id, "create", source))?;
    if !out.success {
        let log = std::fs::read_to_string(&paths.runtime_log).ok();
        return Err(StartError::Runtime {
            id: id.to_owned(),
            runtime: sb.runtime.kind,
            verb: "create",
            message: crate::runtime::failure_message(&out, log.as_deref()),
        });
    }
    let create_took = t.elapsed();

    // 5. The init: pidfd, netns, exit watcher.
    let pid = read_pid(&paths.pid_file).map_err(|source| StartError::PidFile {
        id: id.to_owned(),
        path: paths.pid_file.clone(),
        source,
    })?;
    let pidfd = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))
        .and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).map_err(Into::into)
        })
        .map_err(|source| StartError::Pidfd {
            id: id.to_owned(),
            pid,
            source,
        })?;
    let pidfd = Arc::new(pidfd);
    // The exit watcher reports `Exited` once it is armed, at the end of a successful start.
    let (arm_exit, armed) = tokio::sync::oneshot::channel();
    let exit = crate::reaper::watch_exit(id, pid, pidfd.clone(), armed).map_err(|source| {
        StartError::Pidfd {
            id: id.to_owned(),
            pid,
            source,
        }
    })?;
    let netns: Arc<OwnedFd> = match &network {
        // The namespace the instance joined: ours already.
        Some((_, _, netns)) => netns.clone(),
        None => {
            let netns_path = format!("/proc/{pid}/ns/net");
            Arc::new(
                crate::netns::open_ns(&netns_path).map_err(|source| StartError::Netns {
                    id: id.to_owned(),
                    path: netns_path.into(),
                    source,
                })?,
            )
        }
    };

    // Wharf's own servers inside the instance, listening before its process runs.
    let mut listeners = Vec::with_capacity(spec.listen.len());
    for &port in &spec.listen {
        let listener =
            sb.connector
                .listen(&netns, port)
                .await
                .map_err(|source| StartError::Listen {
                    id: id.to_owned(),
                    port,
                    source,
                })?;
        listeners.push((port, listener));
    }

    // 6. Start: through crun's exec fifo when that is how this runtime waits (no second
    // runtime process on the cold-start path), else `runtime start`.
    let t = Instant::now();
    let released = match sb.runtime.exec_fifo(id) {
        Some(fifo) => sb.host.release_exec_fifo(&fifo).unwrap_or_else(|e| {
            debug!(instance = %id, error = %e, "starting through the exec fifo failed; running the runtime");
            false
        }),
        None => false,
    };
    if !released {
        let out = run_runtime(&sb.host, sb.runtime.start(id))
            .await
            .map_err(|source| runtime_exec_err(sb, id, "start", source))?;
        if !out.success {
            return Err(StartError::Runtime {
                id: id.to_owned(),
                runtime: sb.runtime.kind,
                verb: "start",
                message: crate::runtime::failure_message(&out, None),
            });
        }
    }
    let timings = StartTimings {
        prepare: prepared,
        network: network_took,
        create: create_took,
        start: t.elapsed(),
        total: started.elapsed(),
    };
    debug!(instance = %id, pid, ?timings, "instance started");
    if let Some(slot) = progress.network.take() {
        sb.network.lease(id, slot);
    }
    let instance = Instance {
        sandbox: sb.clone(),
        id: id.to_owned(),
        pid,
        pidfd,
        netns,
        exit,
        output,
        paths: paths.clone(),
        timings,
        stop_report: tokio::sync::Mutex::new(None),
        stopped: AtomicBool::new(false),
        peak_file: std::sync::OnceLock::new(),
        freezer: Default::default(),
        events: crate::events::Events::new(id, spec.events.clone()),
        oom_watch: Default::default(),
        listeners: std::sync::Mutex::new(listeners),
    };
    // `Started`, arm the exit watcher, start the OOM watcher.
    crate::events::announce_started(&instance, arm_exit);
    Ok(instance)
}

fn runtime_exec_err(
    sb: &SandboxInner,
    id: &str,
    verb: &'static str,
    source: std::io::Error,
) -> StartError {
    StartError::RuntimeExec {
        id: id.to_owned(),
        program: sb.runtime.path.clone(),
        verb,
        source,
    }
}

fn read_pid(path: &Path) -> std::io::Result<u32> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a pid: {:?}", text.trim()),
            )
        })
}

/// Undo a half-done start, in reverse order. Returns what could not be undone.
async fn undo(
    sb: &Arc<SandboxInner>,
    id: &str,
    paths: &InstancePaths,
    progress: &Progress,
) -> Vec<CleanupError> {
    let mut errors = Vec::new();
    if progress.container {
        if let Some(e) = delete_container(sb, id).await {
            errors.push(e);
        }
        for e in remove_instance_cgroups(sb, id) {
            warn!(instance = %id, error = %e, "cgroup not removed");
        }
    }
    errors.extend(unmount_and_remove(
        sb,
        paths,
        progress.overlay,
        progress.tmpfs,
        progress.bundle,
    ));
    errors
}

/// `runtime delete --force`; a container the runtime does not know is fine.
pub(crate) async fn delete_container(sb: &Arc<SandboxInner>, id: &str) -> Option<CleanupError> {
    let failure = match run_runtime(&sb.host, sb.runtime.delete_force(id)).await {
        Ok(out) if out.success => return None,
        Ok(out) => crate::runtime::failure_message(&out, None),
        Err(e) => e.to_string(),
    };
    if !sb.runtime.has_container(sb.host.as_ref(), id) {
        return None;
    }
    Some(CleanupError::RuntimeDelete {
        runtime: sb.runtime.kind,
        id: id.to_owned(),
        message: failure,
    })
}

/// Instance cgroup directories the runtime did not remove (e.g. the v2 one when crun, which
/// does not see it, created none: then there is nothing; or a delete that failed half-way).
pub(crate) fn remove_instance_cgroups(sb: &SandboxInner, id: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for dir in sb.cgroups.instance_dirs(&sb.config.cgroup_parent, id) {
        let (_, e) = crate::cgroup::remove_tree(sb.host.as_ref(), &dir);
        errors.extend(e);
    }
    errors
}

/// Unmount the overlay, then the tmpfs, then remove the bundle directory.
pub(crate) fn unmount_and_remove(
    sb: &SandboxInner,
    paths: &InstancePaths,
    overlay: bool,
    tmpfs: bool,
    bundle: bool,
) -> Vec<CleanupError> {
    let mut errors = Vec::new();
    let host = sb.host.as_ref();
    let mut mounted = false;
    for (done, path) in [(overlay, &paths.rootfs), (tmpfs, &paths.rw)] {
        if !done {
            continue;
        }
        if let Err(source) = rootfs::unmount(host, path) {
            mounted = true;
            errors.push(CleanupError::Unmount {
                path: path.clone(),
                source,
            });
        }
    }
    // Never remove_dir_all through a mount that is still there.
    if bundle && !mounted {
        match std::fs::remove_dir_all(&paths.bundle) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => errors.push(CleanupError::RemoveDir {
                path: paths.bundle.clone(),
                source,
            }),
        }
    }
    errors
}
