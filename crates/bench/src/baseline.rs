//! The cold-start baseline: the host's OCI runtime running *the same bundle* as Wharf, from
//! `run -d` to its first HTTP 200 on `/invoke`, probed from inside the container's netns.
//!
//! The bundle: the image's layers unpacked into one read-only rootfs (from the very blobs the
//! registry serves), and `config.json` from `<runtime> spec` with the image's entrypoint, cmd,
//! env and working directory, no rlimits (the template's cannot be raised above this host's
//! hard limits), no terminal, Wharf's namespaces (own netns among them), and Wharf's memory and
//! pids limits so that the runtime does the same cgroup work. Each container gets its own
//! `cgroupsPath` under a cgroup parent of ours, a state root (`--root`) of ours, and is deleted
//! after its sample, outside the timed window.
//!
//! Cleanup also works when the benchmark is interrupted: every container is registered before
//! `run`, [`Baseline::close`] (and drop) refuses new ones, waits for those being started, deletes
//! what is left, and removes the cgroups.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use wharf_test_support::oci::BuiltImage;

use crate::http::probe;
use crate::netns::{Netns, precise_sleeps_on_this_thread};

/// How long a baseline container may take to answer.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long closing waits for containers being started.
const CLOSE_PATIENCE: Duration = Duration::from_secs(30);
/// The cgroup2 mount of a hybrid host.
const UNIFIED: &str = "/sys/fs/cgroup/unified";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    Crun,
    Runc,
}

impl RuntimeKind {
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Crun => "crun",
            RuntimeKind::Runc => "runc",
        }
    }
}

/// An OCI runtime binary and how to run it on this host.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub kind: RuntimeKind,
    pub program: PathBuf,
    pub version: String,
    /// crun 1.8 refuses hybrid cgroups: it runs in a private mount namespace without the
    /// cgroup2 mount (as Wharf runs it), set up in `pre_exec`.
    hide: Option<CString>,
}

impl Runtime {
    pub fn find(kind: RuntimeKind) -> anyhow::Result<Runtime> {
        let program =
            which(kind.name()).with_context(|| format!("{} is not on PATH", kind.name()))?;
        let out = Command::new(&program)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", program.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("?")
            .to_string();
        let hide = (kind == RuntimeKind::Crun && is_hybrid())
            .then(|| CString::new(UNIFIED).expect("no NUL"));
        Ok(Runtime {
            kind,
            program,
            version,
            hide,
        })
    }

    pub fn describe(&self) -> String {
        match &self.hide {
            Some(_) => format!(
                "{} {} (private mount ns without {UNIFIED}, as Wharf runs it)",
                self.kind.name(),
                self.version
            ),
            None => format!("{} {}", self.kind.name(), self.version),
        }
    }

    fn command(&self, root: &Path) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--root").arg(root);
        if let Some(mount) = self.hide.clone() {
            // SAFETY: the closure makes raw system calls only (async-signal-safe).
            unsafe {
                cmd.pre_exec(move || enter_private_mount_ns(&mount));
            }
        }
        cmd
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// A cgroup2 mount at `/sys/fs/cgroup/unified` beside v1 hierarchies.
fn is_hybrid() -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo.lines().any(|l| {
        let mut fields = l.split(' ');
        let mount_point = fields.nth(4);
        let fstype = l.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        mount_point == Some(UNIFIED) && fstype == Some("cgroup2")
    })
}

/// In the forked child before `exec`: a private mount namespace, `/` made rslave so that nothing
/// propagates back, and the cgroup2 mount detached.
fn enter_private_mount_ns(mount: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: plain system calls with valid, NUL-terminated pointers or NULL where allowed.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::umount2(mount.as_ptr(), libc::MNT_DETACH) != 0 {
            let err = std::io::Error::last_os_error();
            if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// A bundle to start containers from: a rootfs and a `config.json` template.
#[derive(Debug)]
pub struct Bundle {
    pub name: String,
    config: Value,
    pub port: u16,
}

#[derive(Default)]
struct LiveState {
    /// Containers being started right now.
    starting: usize,
    /// Containers that may exist (registered before `run`, removed after `delete`).
    containers: BTreeSet<String>,
}

struct Live {
    closed: AtomicBool,
    state: Mutex<LiveState>,
    idle: Condvar,
}

/// Registers a container being started; unregisters the start (not the container) on drop.
struct Starting<'a>(&'a Live);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.starting -= 1;
        self.0.idle.notify_all();
    }
}

/// Containers of one OCI runtime: state root, bundles, cgroup parent; see the module docs.
pub struct Baseline {
    pub runtime: Runtime,
    dir: tempfile::TempDir,
    cgroup_parent: String,
    live: Live,
    seq: AtomicU64,
}

/// What one container's start gave.
#[derive(Debug)]
pub struct Started {
    pub id: String,
    pub took: Duration,
}

impl Baseline {
    pub fn new(runtime: Runtime) -> anyhow::Result<Baseline> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("wharf-bench-{}-", runtime.kind.name()))
            .tempdir()?;
        std::fs::create_dir(dir.path().join("root"))?;
        std::fs::create_dir(dir.path().join("c"))?;
        let cgroup_parent = format!("wharf-bench-{}-{}", runtime.kind.name(), std::process::id());
        Ok(Baseline {
            runtime,
            dir,
            cgroup_parent,
            live: Live {
                closed: AtomicBool::new(false),
                state: Mutex::new(LiveState::default()),
                idle: Condvar::new(),
            },
            seq: AtomicU64::new(0),
        })
    }

    /// Unpacks `image` into a rootfs of its own and prepares its `config.json` template.
    pub fn bundle(
        &self,
        name: &str,
        image: &BuiltImage,
        port: u16,
        memory_mb: u64,
    ) -> anyhow::Result<Arc<Bundle>> {
        let rootfs = self.dir.path().join(format!("rootfs-{name}"));
        std::fs::create_dir(&rootfs)?;
        for layer in &image.layers {
            unpack(&layer.blob.media_type, &layer.blob.bytes, &rootfs)
                .with_context(|| format!("unpacking layer {} of {name}", layer.blob.digest))?;
        }
        let image_config: Value = serde_json::from_slice(&image.config.bytes)?;
        let mut config = self.spec_template()?;
        apply_image(&mut config, &image_config, &rootfs, memory_mb)?;
        // The runtime creates missing mount points in the rootfs; containers started at once
        // from one rootfs would race at that (crun 1.8: "cannot mkdir `sys`: File exists").
        for dir in mount_point_tops(&config) {
            std::fs::create_dir_all(rootfs.join(dir))?;
        }
        Ok(Arc::new(Bundle {
            name: name.into(),
            config,
            port,
        }))
    }

    /// `<runtime> spec` in a scratch directory.
    fn spec_template(&self) -> anyhow::Result<Value> {
        let dir = self.dir.path().join("spec");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)?;
        let out = Command::new(&self.runtime.program)
            .arg("spec")
            .current_dir(&dir)
            .output()?;
        ensure!(
            out.status.success(),
            "{} spec failed: {}",
            self.runtime.kind.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&std::fs::read(
            dir.join("config.json"),
        )?)?)
    }

    /// Blocking, and **on a thread that ends afterwards** (it enters the container's netns):
    /// `run -d` and the probe to the first 200. The container is left running; [`delete`] it.
    ///
    /// [`delete`]: Baseline::delete
    pub fn cold_start(&self, bundle: &Bundle, probe_body: &[u8]) -> anyhow::Result<Started> {
        precise_sleeps_on_this_thread();
        let id = format!(
            "{}-{}",
            bundle.name,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let cdir = self.dir.path().join("c").join(&id);
        std::fs::create_dir(&cdir)?;
        let mut config = bundle.config.clone();
        config["linux"]["cgroupsPath"] = json!(format!("/{}/{id}", self.cgroup_parent));
        std::fs::write(cdir.join("config.json"), serde_json::to_vec(&config)?)?;
        let stderr = File::create(cdir.join("stderr"))?;
        let pid_file = cdir.join("pid");

        let _starting = self.register(&id)?;
        let t0 = Instant::now();
        let status = self
            .runtime
            .command(&self.dir.path().join("root"))
            .arg("run")
            .arg("-d")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--bundle")
            .arg(&cdir)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()
            .with_context(|| format!("running {}", self.runtime.program.display()))?;
        if !status.success() {
            bail!(
                "{} run {id} failed ({status}): {}",
                self.runtime.kind.name(),
                std::fs::read_to_string(cdir.join("stderr")).unwrap_or_default()
            );
        }
        let pid: u32 = std::fs::read_to_string(&pid_file)?
            .trim()
            .parse()
            .context("the runtime's pid file")?;
        Netns::of_pid(pid)?.enter_this_thread()?;
        let status = probe(bundle.port, "/invoke", probe_body, t0 + START_DEADLINE)
            .with_context(|| format!("probing container {id}"))?;
        let took = t0.elapsed();
        ensure!(status == 200, "container {id} answered {status}");
        Ok(Started { id, took })
    }

    /// [`Baseline::cold_start`] on a fresh thread.
    pub async fn cold_start_async(
        self: &Arc<Self>,
        bundle: &Arc<Bundle>,
        probe_body: &'static [u8],
    ) -> anyhow::Result<Started> {
        let (me, bundle) = (self.clone(), bundle.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("bench-cold".into())
            .spawn(move || {
                let _ = tx.send(me.cold_start(&bundle, probe_body));
            })?;
        rx.await.context("the baseline thread died")?
    }

    /// Blocking: `n` cold starts at once, one thread each, released together. The wall time is
    /// from the release to the last 200.
    pub fn burst(
        self: &Arc<Self>,
        bundle: &Arc<Bundle>,
        n: usize,
        probe_body: &'static [u8],
    ) -> (Vec<anyhow::Result<Started>>, Duration) {
        let barrier = Arc::new(Barrier::new(n + 1));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (me, bundle, barrier) = (self.clone(), bundle.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    me.cold_start(&bundle, probe_body)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let results: Vec<_> = threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a start thread panicked")))
            })
            .collect();
        (results, t0.elapsed())
    }

    fn register(&self, id: &str) -> anyhow::Result<Starting<'_>> {
        let mut s = self.live.state.lock().unwrap_or_else(|e| e.into_inner());
        ensure!(
            !self.live.closed.load(Ordering::SeqCst),
            "the baseline is closing"
        );
        s.starting += 1;
        s.containers.insert(id.to_owned());
        Ok(Starting(&self.live))
    }

    /// Blocking: `delete -f` and the container's directory.
    pub fn delete(&self, id: &str) -> anyhow::Result<()> {
        let out = self
            .runtime
            .command(&self.dir.path().join("root"))
            .args(["delete", "-f", id])
            .stdin(Stdio::null())
            .output()?;
        let _ = std::fs::remove_dir_all(self.dir.path().join("c").join(id));
        self.live
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .containers
            .remove(id);
        ensure!(
            out.status.success(),
            "{} delete -f {id} failed: {}",
            self.runtime.kind.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Blocking: deletes `ids` with a few threads.
    pub fn delete_all(&self, ids: &[String]) -> anyhow::Result<()> {
        let chunks: Vec<&[String]> = ids.chunks(ids.len().div_ceil(4).max(1)).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    s.spawn(move || -> anyhow::Result<()> {
                        for id in chunk {
                            self.delete(id)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a delete thread panicked")))?;
            }
            Ok(())
        })
    }

    /// Refuses new containers, waits for starts in progress, deletes every container left and
    /// removes the cgroups. Idempotent.
    pub fn close(&self) {
        self.live.closed.store(true, Ordering::SeqCst);
        let left: Vec<String> = {
            let mut s = self.live.state.lock().unwrap_or_else(|e| e.into_inner());
            let deadline = Instant::now() + CLOSE_PATIENCE;
            while s.starting > 0 && Instant::now() < deadline {
                s = self
                    .live
                    .idle
                    .wait_timeout(s, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            s.containers.iter().cloned().collect()
        };
        for id in left {
            if let Err(e) = self.delete(&id) {
                eprintln!("wharf-bench: cleaning up baseline container {id}: {e:#}");
            }
        }
        remove_cgroups(&self.cgroup_parent);
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.close();
    }
}

/// Removes `/<parent>` and its children from every hierarchy, killing what still runs there.
fn remove_cgroups(parent: &str) {
    let mut places = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        places.extend(hierarchies.flatten().map(|h| h.path()));
    }
    for place in places {
        let dir = place.join(parent);
        if !dir.is_dir() {
            continue;
        }
        let children: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        for child in children.iter().chain(std::iter::once(&dir)) {
            for _ in 0..50 {
                if std::fs::remove_dir(child).is_ok() || !child.exists() {
                    break;
                }
                // Only our containers' processes are in our cgroups.
                let procs = std::fs::read_to_string(child.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill takes integers only.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if child.exists() {
                eprintln!("wharf-bench: could not remove cgroup {}", child.display());
            }
        }
    }
}

/// Unpacks one layer blob with `tar` (whiteouts do not occur in the benchmark's images).
fn unpack(media_type: &str, blob: &[u8], into: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("tar");
    cmd.arg("-x");
    if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
        cmd.arg("-z");
    } else if media_type.ends_with("+zstd") {
        cmd.arg("--zstd");
    }
    cmd.arg("-f").arg("-").arg("-C").arg(into);
    let mut child = cmd.stdin(Stdio::piped()).spawn().context("running tar")?;
    let mut stdin = child.stdin.take().context("tar's stdin")?;
    let written = stdin.write_all(blob);
    drop(stdin);
    let status = child.wait()?;
    written.context("feeding tar")?;
    ensure!(status.success(), "tar -x failed ({status})");
    Ok(())
}

/// The template with the image's run configuration; see the module docs.
fn apply_image(
    spec: &mut Value,
    image_config: &Value,
    rootfs: &Path,
    memory_mb: u64,
) -> anyhow::Result<()> {
    let c = &image_config["config"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut args = strings(&c["Entrypoint"]);
    args.extend(strings(&c["Cmd"]));
    ensure!(!args.is_empty(), "the image has no entrypoint or cmd");
    let mut env = strings(&c["Env"]);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push("HOME=/root".into());
    }
    let cwd = c["WorkingDir"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("/");

    let process = spec["process"]
        .as_object_mut()
        .context("the template has no process")?;
    process.insert("terminal".into(), json!(false));
    process.insert("args".into(), json!(args));
    process.insert("env".into(), json!(env));
    process.insert("cwd".into(), json!(cwd));
    process.remove("rlimits");
    spec["root"] = json!({"path": rootfs.as_os_str().to_string_lossy(), "readonly": true});
    let linux = spec["linux"]
        .as_object_mut()
        .context("the template has no linux section")?;
    linux.insert(
        "namespaces".into(),
        json!(
            ["pid", "network", "ipc", "uts", "mount", "cgroup"]
                .iter()
                .map(|t| json!({"type": t}))
                .collect::<Vec<_>>()
        ),
    );
    let limit = memory_mb * 1024 * 1024;
    let mut memory = json!({"limit": limit});
    if host_accounts_swap() {
        memory["swap"] = json!(limit);
    }
    let resources = linux
        .entry("resources")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .context("linux.resources")?;
    resources.insert("memory".into(), memory);
    resources.insert("pids".into(), json!({"limit": 1024}));
    Ok(())
}

/// The first component of every mount destination (`proc`, `dev`, `sys`, …).
fn mount_point_tops(spec: &Value) -> BTreeSet<String> {
    spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["destination"].as_str())
        .filter_map(|d| d.trim_start_matches('/').split('/').next())
        .filter(|top| !top.is_empty() && *top != "." && *top != "..")
        .map(str::to_owned)
        .collect()
}

/// Whether memory+swap can be limited (Wharf then limits it to the memory limit too).
fn host_accounts_swap() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        || std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().as_bytes() == b"memory.swap.max")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_configures_the_template() {
        let mut spec = json!({
            "process": {"terminal": true, "args": ["sh"], "env": [], "cwd": "/",
                        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
            "root": {"path": "rootfs", "readonly": true},
            "linux": {"namespaces": [{"type": "pid"}], "resources": {"devices": []}}
        });
        let image = json!({"config": {"Entrypoint": ["/testfn"], "Cmd": ["-v"],
                                      "Env": ["A=1"], "WorkingDir": "/app"}});
        apply_image(&mut spec, &image, Path::new("/b/rootfs"), 128).unwrap();
        assert_eq!(spec["process"]["args"], json!(["/testfn", "-v"]));
        assert_eq!(spec["process"]["terminal"], json!(false));
        assert_eq!(spec["process"]["cwd"], json!("/app"));
        assert!(spec["process"].get("rlimits").is_none());
        let env = spec["process"]["env"].as_array().unwrap();
        assert_eq!(env[0], json!("A=1"));
        assert!(env.iter().any(|e| e.as_str().unwrap().starts_with("PATH=")));
        assert_eq!(spec["root"]["path"], json!("/b/rootfs"));
        assert!(
            spec["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "network"}))
        );
        assert_eq!(
            spec["linux"]["resources"]["memory"]["limit"],
            json!(134_217_728)
        );
        assert_eq!(spec["linux"]["resources"]["devices"], json!([]));
    }

    #[test]
    fn mount_points_are_created_at_their_top() {
        let spec = json!({"mounts": [
            {"destination": "/proc"}, {"destination": "/dev/pts"}, {"destination": "/dev"},
            {"destination": "/sys/fs/cgroup"}, {"destination": "/../etc"}
        ]});
        let tops: Vec<String> = mount_point_tops(&spec).into_iter().collect();
        assert_eq!(tops, ["dev", "proc", "sys"]);
    }
}
