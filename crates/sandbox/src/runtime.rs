//! The OCI runtime binary: which one (crun, else runc), and the command lines Wharf runs.
//!
//! crun starts containers about 3x faster than runc but 1.8 refuses hybrid cgroup hosts
//! ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2"). On such a host
//! every crun command (create, start, kill, delete alike — they must agree on the cgroup
//! layout) runs in a private mount namespace in which the v2 mount is detached, set up in
//! `pre_exec` (see `host::RealHost::run`). crun then sees a pure v1 host.
//!
//! [`choose`] proves the choice with a probe container — `create` + `delete --force` on an
//! empty rootfs, with the same namespaces and limits as an instance — so that a host on which
//! crun cannot work falls back to runc at start-up, not at the first cold start.
//!
//! The runtime's own errors go to `--log <bundle>/runtime.log --log-format json`: the
//! container inherits the runtime's stdout and stderr, which are the function's output pipes,
//! so they cannot carry the runtime's messages apart from the function's.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use tracing::{debug, info};

use crate::cgroup::{CgroupLayout, CgroupMode, remove_tree};
use crate::error::SandboxError;
use crate::host::{CommandOutput, Host, RuntimeCommand};
use crate::{RuntimeInfo, RuntimeKind, RuntimePreference, spec};

/// The runtime Wharf drives, with its state root (`--root`).
#[derive(Clone, Debug)]
pub(crate) struct Runtime {
    pub kind: RuntimeKind,
    pub path: PathBuf,
    pub root: PathBuf,
    /// crun on a hybrid host: run in a private mount namespace without this (v2) mount.
    pub detach_mount: Option<PathBuf>,
}

impl Runtime {
    fn command(&self, args: impl IntoIterator<Item = OsString>) -> RuntimeCommand {
        let mut all: Vec<OsString> = vec!["--root".into(), self.root.clone().into()];
        all.extend(args);
        RuntimeCommand {
            program: self.path.clone(),
            args: all,
            detach_mount: self.detach_mount.clone(),
            stdio: None,
        }
    }

    /// `runtime --root R --log L --log-format json create --pid-file P --bundle B ID`; the
    /// container's stdout and stderr are `stdio`.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log_file: &Path,
        stdio: (OwnedFd, OwnedFd),
    ) -> RuntimeCommand {
        let mut cmd = self.command([
            "--log".into(),
            log_file.into(),
            "--log-format".into(),
            "json".into(),
            "create".into(),
            "--pid-file".into(),
            pid_file.into(),
            "--bundle".into(),
            bundle.into(),
            id.into(),
        ]);
        cmd.stdio = Some(stdio);
        cmd
    }

    pub fn start(&self, id: &str) -> RuntimeCommand {
        self.command(["start".into(), id.into()])
    }

    /// Where crun keeps the fifo a created container's init waits on (`<root>/<id>/exec.fifo`).
    /// Starting through it saves running the runtime a second time on the cold-start path; see
    /// [`Host::release_exec_fifo`](crate::host::Host::release_exec_fifo).
    pub fn exec_fifo(&self, id: &str) -> Option<PathBuf> {
        (self.kind == RuntimeKind::Crun).then(|| self.root.join(id).join("exec.fifo"))
    }

    pub fn delete_force(&self, id: &str) -> RuntimeCommand {
        self.command(["delete".into(), "--force".into(), id.into()])
    }

    /// Whether the runtime still has state for container `id`.
    pub fn has_container(&self, host: &dyn Host, id: &str) -> bool {
        host.exists(&self.root.join(id))
    }

    /// Containers the runtime has state for (one directory per container in its root).
    pub fn containers(&self, host: &dyn Host) -> Vec<String> {
        host.list_dirs(&self.root).unwrap_or_default()
    }
}

/// The runtime's own error message: the last error of its JSON log, else its stderr, else the
/// exit code.
pub(crate) fn failure_message(output: &CommandOutput, log: Option<&str>) -> String {
    if let Some(msg) = log.and_then(last_log_error) {
        return msg;
    }
    let stderr = output.stderr.trim();
    if !stderr.is_empty() {
        return stderr.lines().last().unwrap_or(stderr).to_owned();
    }
    format!("exited with code {}", output.code)
}

/// The last `"level":"error"` (or fatal) message of a runtime's JSON log.
pub(crate) fn last_log_error(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .next_back()
}

/// `crun version 1.8.1` / `runc version 1.1.5+ds1` → the version.
pub(crate) fn parse_version(stdout: &str) -> Option<String> {
    let first = stdout.lines().next()?;
    let (_, version) = first.split_once(" version ")?;
    Some(version.trim().to_owned())
}

fn version_of(host: &dyn Host, path: &Path) -> String {
    let cmd = RuntimeCommand {
        program: path.to_owned(),
        args: vec!["--version".into()],
        detach_mount: None,
        stdio: None,
    };
    host.run(cmd)
        .ok()
        .and_then(|out| parse_version(&out.stdout))
        .unwrap_or_else(|| "unknown".into())
}

/// Everything [`choose`] needs to know about the host.
pub(crate) struct ChooseContext<'a> {
    pub host: &'a dyn Host,
    pub layout: &'a CgroupLayout,
    /// `<state_dir>/run`: runtime roots are `run/crun` and `run/runc`.
    pub run_dir: &'a Path,
    pub cgroup_parent: &'a str,
    /// Host hard limit for `RLIMIT_NOFILE`.
    pub nofile: u64,
    pub limit_swap: bool,
}

/// Pick the runtime according to `preference`, proving crun with a probe container.
pub(crate) fn choose(
    cx: &ChooseContext<'_>,
    preference: RuntimePreference,
) -> Result<(Runtime, RuntimeInfo), SandboxError> {
    let mode = cx.layout.mode().ok_or(SandboxError::NoCgroups)?;
    let runc = |why: String| -> Result<(Runtime, RuntimeInfo), SandboxError> {
        let path = cx
            .host
            .find_program("runc")
            .ok_or_else(|| SandboxError::NoRuntime {
                reason: format!("runc not found on PATH ({why})"),
            })?;
        let runtime = Runtime {
            kind: RuntimeKind::Runc,
            root: cx.run_dir.join("runc"),
            detach_mount: None,
            path: path.clone(),
        };
        let info = RuntimeInfo {
            kind: RuntimeKind::Runc,
            version: version_of(cx.host, &path),
            path,
            note: format!("runc ({why}; {})", mode.describe()),
        };
        Ok((runtime, info))
    };
    let crun = |path: PathBuf| -> Result<(Runtime, RuntimeInfo), String> {
        let detach_mount = match mode {
            CgroupMode::Hybrid => cx.layout.v2_mount().map(Path::to_path_buf),
            CgroupMode::V1 | CgroupMode::V2 => None,
        };
        let note = match &detach_mount {
            Some(m) => format!(
                "crun in a private mount namespace without {} (hybrid cgroups)",
                m.display()
            ),
            None => format!("crun ({})", mode.describe()),
        };
        let runtime = Runtime {
            kind: RuntimeKind::Crun,
            root: cx.run_dir.join("crun"),
            detach_mount,
            path: path.clone(),
        };
        probe(cx, &runtime)?;
        let info = RuntimeInfo {
            kind: RuntimeKind::Crun,
            version: version_of(cx.host, &path),
            path,
            note,
        };
        Ok((runtime, info))
    };
    match preference {
        RuntimePreference::Runc => runc("requested".into()),
        RuntimePreference::Crun => {
            let path = cx
                .host
                .find_program("crun")
                .ok_or_else(|| SandboxError::NoRuntime {
                    reason: "crun requested but not found on PATH".into(),
                })?;
            crun(path).map_err(|message| SandboxError::RuntimeProbe {
                runtime: RuntimeKind::Crun,
                message,
            })
        }
        RuntimePreference::Auto => match cx.host.find_program("crun") {
            None => runc("crun not found".into()),
            Some(path) => match crun(path) {
                Ok(chosen) => Ok(chosen),
                Err(message) => {
                    info!(%message, "crun failed the start-up probe, falling back to runc");
                    runc(format!("crun failed the start-up probe: {message}"))
                }
            },
        },
    }
}

/// Create and delete a container on an empty rootfs with the namespaces and limits of an
/// instance. Leaves nothing behind (bundle, runtime state, cgroups).
fn probe(cx: &ChooseContext<'_>, runtime: &Runtime) -> Result<(), String> {
    let id = format!("wharf-probe-{}", std::process::id());
    let bundle = cx.run_dir.join(&id);
    let result = probe_in(cx, runtime, &id, &bundle);
    // Clean up whatever happened.
    if runtime.has_container(cx.host, &id) {
        let _ = cx.host.run(runtime.delete_force(&id));
    }
    for dir in cx.layout.instance_dirs(cx.cgroup_parent, &id) {
        let _ = remove_tree(cx.host, &dir);
    }
    let _ = std::fs::remove_dir_all(&bundle);
    debug!(runtime = %runtime.kind, ok = result.is_ok(), "runtime probe");
    result
}

fn probe_in(
    cx: &ChooseContext<'_>,
    runtime: &Runtime,
    id: &str,
    bundle: &Path,
) -> Result<(), String> {
    let io_err = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| io_err("probe bundle", e))?;
    std::fs::create_dir_all(&runtime.root).map_err(|e| io_err("runtime root", e))?;
    // The runtime checks at `create` that the executable exists; it is never started.
    let exe = rootfs.join("probe");
    std::fs::write(&exe, b"").map_err(|e| io_err("probe executable", e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io_err("probe executable", e))?;
    // The probe's config has an instance's mounts: /tmp is bound from the bundle.
    let tmp = bundle.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| io_err("probe /tmp", e))?;
    let args = vec!["/probe".to_string()];
    let params = spec::SpecParams {
        args: &args,
        env: spec::instance_env(&[], "/"),
        cwd: "/",
        uid: 0,
        gid: 0,
        hostname: "probe",
        rootfs: &rootfs,
        readonly_root: false,
        tmp: &tmp,
        bind_mounts: &[],
        cgroups_path: CgroupLayout::cgroups_path(cx.cgroup_parent, id),
        memory_limit_bytes: 32 << 20,
        limit_swap: cx.limit_swap,
        pids_limit: 8,
        nofile: spec::clamp_nofile(spec::DEFAULT_NOFILE, Some(cx.nofile)),
    };
    let config = spec::build(&params).map_err(|e| format!("probe config: {e}"))?;
    config
        .save(bundle.join("config.json"))
        .map_err(|e| format!("probe config: {e}"))?;
    let null = || {
        std::fs::File::options()
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| io_err("/dev/null", e))
    };
    let log = bundle.join("runtime.log");
    let out = cx
        .host
        .run(runtime.create(
            id,
            bundle,
            &bundle.join("init.pid"),
            &log,
            (null()?, null()?),
        ))
        .map_err(|e| io_err("run create", e))?;
    if !out.success {
        let log = std::fs::read_to_string(&log).ok();
        return Err(failure_message(&out, log.as_deref()));
    }
    // The probe's init was reparented to us (we are the subreaper): reap it after the delete
    // kills it, or it stays a zombie.
    let init = std::fs::read_to_string(bundle.join("init.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
        .and_then(|pid| {
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
        });
    let out = cx
        .host
        .run(runtime.delete_force(id))
        .map_err(|e| io_err("run delete", e))?;
    if let Some(pidfd) = &init {
        use std::os::fd::AsFd;
        crate::reaper::reap_blocking(pidfd.as_fd(), std::time::Duration::from_secs(2));
    }
    if !out.success {
        return Err(failure_message(&out, None));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    const HYBRID: &str = "\
28 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";
    const V2: &str = "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";

    fn ok() -> CommandOutput {
        CommandOutput {
            success: true,
            ..Default::default()
        }
    }

    fn version(v: &str) -> CommandOutput {
        CommandOutput {
            success: true,
            stdout: format!("{v}\ncommit: abc\n"),
            ..Default::default()
        }
    }

    fn failed(stderr: &str) -> CommandOutput {
        CommandOutput {
            success: false,
            code: 1,
            stderr: stderr.into(),
            ..Default::default()
        }
    }

    fn choose_with(
        host: &FakeHost,
        mountinfo: &str,
        pref: RuntimePreference,
    ) -> Result<(Runtime, RuntimeInfo), SandboxError> {
        let tmp = tempfile::tempdir().unwrap();
        let layout = CgroupLayout::from_mountinfo(mountinfo);
        let cx = ChooseContext {
            host,
            layout: &layout,
            run_dir: tmp.path(),
            cgroup_parent: "wharf",
            nofile: 20_000,
            limit_swap: true,
        };
        choose(&cx, pref)
    }

    fn programs(s: &mut crate::host::fake::FakeState, names: &[&str]) {
        for n in names {
            s.programs
                .insert((*n).into(), format!("/usr/bin/{n}").into());
        }
    }

    #[test]
    fn auto_prefers_crun_in_private_mount_ns_on_hybrid() {
        let host = FakeHost::with(|s| {
            programs(s, &["crun", "runc"]);
            s.answers = [ok(), ok(), version("crun version 1.8.1")].into();
        });
        let (rt, info) = choose_with(&host, HYBRID, RuntimePreference::Auto).unwrap();
        assert_eq!(rt.kind, RuntimeKind::Crun);
        assert_eq!(
            rt.detach_mount,
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(info.version, "1.8.1");
        assert!(
            info.note.contains("private mount namespace"),
            "{}",
            info.note
        );
        let calls = host.calls();
        assert!(calls[0].contains(" create --pid-file "), "{calls:?}");
        assert!(calls[0].contains("--log-format json"), "{calls:?}");
        assert!(calls[1].ends_with(&format!(
            "delete --force wharf-probe-{}",
            std::process::id()
        )));
        // create and delete both ran in the private namespace; --version needs none.
        let ns = host.state.lock().unwrap().private_ns_calls.clone();
        assert_eq!(
            ns,
            vec![
                Some(PathBuf::from("/sys/fs/cgroup/unified")),
                Some(PathBuf::from("/sys/fs/cgroup/unified")),
                None
            ]
        );
    }

    #[test]
    fn auto_falls_back_to_runc_when_the_probe_fails() {
        let host = FakeHost::with(|s| {
            programs(s, &["crun", "runc"]);
            s.answers = [
                failed("cgroups in hybrid mode not supported"),
                version("runc version 1.1.5+ds1"),
            ]
            .into();
        });
        let (rt, info) = choose_with(&host, HYBRID, RuntimePreference::Auto).unwrap();
        assert_eq!(rt.kind, RuntimeKind::Runc);
        assert_eq!(rt.detach_mount, None);
        assert_eq!(info.version, "1.1.5+ds1");
        assert!(
            info.note
                .contains("crun failed the start-up probe: cgroups in hybrid mode not supported"),
            "{}",
            info.note
        );
    }

    #[test]
    fn crun_on_v2_needs_no_private_namespace() {
        let host = FakeHost::with(|s| {
            programs(s, &["crun"]);
            s.answers = [ok(), ok(), version("crun version 1.19")].into();
        });
        let (rt, info) = choose_with(&host, V2, RuntimePreference::Auto).unwrap();
        assert_eq!((rt.kind, rt.detach_mount), (RuntimeKind::Crun, None));
        assert_eq!(info.note, "crun (cgroup v2)");
    }

    #[test]
    fn explicit_preferences() {
        let host = FakeHost::with(|s| programs(s, &["crun"]));
        let err = choose_with(&host, V2, RuntimePreference::Runc).unwrap_err();
        assert!(matches!(err, SandboxError::NoRuntime { .. }), "{err}");

        let host = FakeHost::with(|s| {
            programs(s, &["crun", "runc"]);
            s.answers = [failed("boom")].into();
        });
        let err = choose_with(&host, V2, RuntimePreference::Crun).unwrap_err();
        assert_eq!(err.to_string(), "crun failed the start-up probe: boom");

        let host = FakeHost::with(|s| {
            programs(s, &["crun", "runc"]);
            s.answers = [version("runc version 1.1.5")].into();
        });
        let (rt, info) = choose_with(&host, HYBRID, RuntimePreference::Runc).unwrap();
        assert_eq!(rt.kind, RuntimeKind::Runc);
        assert_eq!(info.note, "runc (requested; hybrid cgroups)");
        // No probe for runc.
        assert_eq!(host.calls(), vec!["/usr/bin/runc --version"]);

        let none = FakeHost::default();
        assert!(choose_with(&none, HYBRID, RuntimePreference::Auto).is_err());
        assert!(matches!(
            choose_with(&none, "", RuntimePreference::Auto),
            Err(SandboxError::NoCgroups)
        ));
    }

    #[test]
    fn runtime_messages() {
        let log = r#"{"level":"info","msg":"starting","time":"x"}
{"msg":"executable file `/nope` not found in $PATH: No such file or directory","level":"error","time":"x"}
not json
"#;
        assert_eq!(
            last_log_error(log).unwrap(),
            "executable file `/nope` not found in $PATH: No such file or directory"
        );
        let out = failed("first\nsecond line\n");
        assert_eq!(
            failure_message(&out, Some(log)),
            last_log_error(log).unwrap()
        );
        assert_eq!(failure_message(&out, Some("")), "second line");
        assert_eq!(
            failure_message(&CommandOutput::default(), None),
            "exited with code 0"
        );
        assert_eq!(
            parse_version("crun version 1.8.1\ncommit: f8a0"),
            Some("1.8.1".into())
        );
        assert_eq!(parse_version("garbage"), None);
    }
}
