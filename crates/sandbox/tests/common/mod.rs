//! Shared set-up for the sandbox's integration tests: a busybox rootfs in a tempdir, a sandbox
//! with a unique cgroup parent and a unique bridge config, an output sink that records lines,
//! an event sink that records events, and the checks that nothing is left behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::net::Ipv4Addr;

use wharf_sandbox::{
    BridgeConfig, EventSink, InstanceEvent, InstanceSpec, OutputSink, RuntimePreference, Sandbox,
    SandboxConfig, Stream, User,
};

/// Instantiate each `async fn(RuntimePreference)` test for crun and for runc (`<test>::crun`,
/// `<test>::runc`); each says `skipped` and returns when [`can_run`] says it cannot run here.
/// Test files take it with `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! both_runtimes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn crun() {
                if $crate::common::can_run() {
                    super::$name(wharf_sandbox::RuntimePreference::Crun).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runc() {
                if $crate::common::can_run() {
                    super::$name(wharf_sandbox::RuntimePreference::Runc).await;
                }
            }
        }
    )*};
}

pub const BUSYBOX: &str = "/usr/bin/busybox";

/// `None` (and a "skipped" line) when these tests cannot run here.
pub fn can_run() -> bool {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: needs root");
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        println!("skipped: needs {BUSYBOX} (busybox-static)");
        return false;
    }
    true
}

/// Records every line with its stream.
#[derive(Default)]
pub struct Lines(pub Mutex<Vec<(String, Stream, String)>>);

impl OutputSink for Lines {
    fn write_line(&self, instance_id: &str, stream: Stream, line: &str) {
        self.0
            .lock()
            .unwrap()
            .push((instance_id.to_owned(), stream, line.to_owned()));
    }
}

impl Lines {
    pub fn of(&self, stream: Stream) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s, _)| *s == stream)
            .map(|(_, _, l)| l.clone())
            .collect()
    }
}

/// Records every event with its instance id, in the order they came.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<(String, InstanceEvent)>>);

impl EventSink for Recorder {
    fn event(&self, instance_id: &str, event: &InstanceEvent) {
        self.0
            .lock()
            .unwrap()
            .push((instance_id.to_owned(), event.clone()));
    }
}

impl Recorder {
    /// The events of one instance so far.
    pub fn of(&self, id: &str) -> Vec<InstanceEvent> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Wait (bounded) for an event of `id` that `matches`; panics with the events seen.
    pub async fn wait_for(
        &self,
        id: &str,
        patience: Duration,
        matches: impl Fn(&InstanceEvent) -> bool,
    ) -> InstanceEvent {
        let end = Instant::now() + patience;
        loop {
            if let Some(e) = self.of(id).into_iter().find(|e| matches(e)) {
                return e;
            }
            assert!(
                Instant::now() < end,
                "no such event within {patience:?}: {:?}",
                self.of(id)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Two layers: a base with busybox, accounts and a web root, and a top layer that replaces
/// the index page (to prove the overlay's order).
pub fn busybox_layers(dir: &Path) -> Vec<PathBuf> {
    let base = dir.join("layer-base");
    let top = dir.join("layer-top");
    for d in ["bin", "etc", "www", "tmp", "home/app"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, base.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "httpd", "id", "ps", "ls", "cat", "echo", "sleep", "pwd", "env", "dd", "grep", "wc",
        "true", "false", "head", "hostname",
    ] {
        std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        base.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1003:1003:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        base.join("etc/group"),
        "root:x:0:\nstaff:x:50:app\napp:x:1003:\n",
    )
    .unwrap();
    std::fs::write(base.join("www/index.html"), "from the base layer\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(base.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::create_dir_all(top.join("www")).unwrap();
    std::fs::write(top.join("www/index.html"), "hello from the top layer\n").unwrap();
    vec![base, top]
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A bridge name and subnet no other test process uses at the same time: `wt<pid><n>` and a
/// /24 in 10.251.0.0-10.254.255.0 derived from the pid and a counter. Nothing is created
/// until a bridge-mode start or `prepare_network`.
pub fn unique_bridge() -> BridgeConfig {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) as u32;
    let pid = std::process::id();
    let slot = (pid.wrapping_mul(8).wrapping_add(n)) % 1024;
    BridgeConfig {
        name: format!("wt{pid:x}{n:x}"),
        subnet: Ipv4Addr::new(10, 251 + (slot / 256) as u8, (slot % 256) as u8, 0),
        prefix_len: 24,
    }
}

/// A sandbox in a temporary state directory, with a unique cgroup parent, a unique bridge
/// config and busybox layers.
pub struct Env {
    /// Declared first: dropped first on a panic, so that the cleanup below can take over the
    /// bridge (one process at a time may use it) and nothing of it is held any more.
    pub sandbox: Sandbox,
    /// On a panic it cleans up before the tempdir is removed.
    pub guard: PanicCleanup,
    pub tmp: tempfile::TempDir,
    pub parent: String,
    pub layers: Vec<PathBuf>,
    pub lines: Arc<Lines>,
}

/// When a test panics half-way, its instances are still running and mounted: recover them
/// with a fresh sandbox (on its own thread and runtime, since this runs in `Drop`), so that a
/// failing test does not leave containers, mounts or cgroups behind either.
pub struct PanicCleanup {
    pub state_dir: PathBuf,
    pub parent: String,
    pub runtime: RuntimePreference,
    pub bridge: BridgeConfig,
}

impl Drop for PanicCleanup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let config = SandboxConfig {
            state_dir: self.state_dir.clone(),
            cgroup_parent: self.parent.clone(),
            runtime: self.runtime,
            bridge: self.bridge.clone(),
        };
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let sandbox = Sandbox::new(config).unwrap();
                let report = sandbox.recover().await;
                eprintln!("cleanup after panic: {report:?}");
                sandbox.shutdown().await;
            });
        })
        .join();
    }
}

impl Env {
    pub fn new(runtime: RuntimePreference) -> Env {
        Env::with_bridge(runtime, unique_bridge())
    }

    /// With this bridge config (`finish` checks that nothing of it is left).
    pub fn with_bridge(runtime: RuntimePreference, bridge: BridgeConfig) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "wharf_sandbox=info".into()),
            )
            .with_test_writer()
            .try_init();
        let tmp = tempfile::tempdir().unwrap();
        let parent = unique("wharf-test");
        let layers = busybox_layers(tmp.path());
        let sandbox = Sandbox::new(SandboxConfig {
            state_dir: tmp.path().join("state"),
            cgroup_parent: parent.clone(),
            runtime,
            bridge: bridge.clone(),
        })
        .unwrap();
        println!("runtime: {}", sandbox.runtime());
        Env {
            guard: PanicCleanup {
                state_dir: tmp.path().join("state"),
                parent: parent.clone(),
                runtime,
                bridge,
            },
            tmp,
            sandbox,
            parent,
            layers,
            lines: Arc::new(Lines::default()),
        }
    }

    pub fn bridge(&self) -> &BridgeConfig {
        &self.guard.bridge
    }

    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn spec(&self, args: &[&str]) -> InstanceSpec {
        InstanceSpec {
            id: unique("i"),
            layers: self.layers.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: "/".into(),
            user: User::Id { uid: 0, gid: 0 },
            hostname: "fn".into(),
            memory_limit_bytes: 64 << 20,
            writable_layer_bytes: 16 << 20,
            pids_limit: 32,
            read_only_rootfs: false,
            forbid_root: false,
            mounts: vec![],
            network: Default::default(),
            listen: vec![],
            output: self.lines.clone(),
            events: None,
        }
    }

    /// After every instance was stopped: nothing mounted under the state directory, no
    /// instance cgroup, no freezer or OOM-watch file still open. Then shutdown, and no parent
    /// cgroup, bridge, veth or nftables table either.
    pub async fn finish(self) {
        assert_no_mounts_under(&self.state_dir());
        let open = open_cgroup_files(&self.parent);
        assert!(open.is_empty(), "cgroup files left open: {open:?}");
        let leftovers = cgroup_dirs_named(&self.parent);
        for dir in &leftovers {
            let children: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_type().unwrap().is_dir())
                // The sandbox's frozen keeper (`.wharf-freezer-on`) goes at shutdown, checked
                // below with the parent.
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .collect();
            assert!(children.is_empty(), "instance cgroups left: {children:?}");
        }
        self.sandbox.shutdown().await;
        let leftovers = cgroup_dirs_named(&self.parent);
        assert!(leftovers.is_empty(), "parent cgroups left: {leftovers:?}");
        let bundles: Vec<_> = std::fs::read_dir(self.state_dir().join("instances"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(bundles.is_empty(), "bundles left: {bundles:?}");
        assert_no_network_leftovers(&self.guard.bridge);
        assert_no_zombie_children().await;
    }
}

/// No interface named like the bridge, no veth of one of its addresses (`wh<hex>`), no
/// nftables table of it.
pub fn assert_no_network_leftovers(bridge: &BridgeConfig) {
    let net = Path::new("/sys/class/net");
    assert!(
        !net.join(&bridge.name).exists(),
        "bridge {} left",
        bridge.name
    );
    let veths = bridge_veths(bridge);
    assert!(veths.is_empty(), "veths left: {veths:?}");
    if let Some(table) = nft_table(bridge) {
        panic!("nftables table left: {table}");
    }
}

/// Host-side veths of the bridge's instances: `wh` + an address of its subnet in hex.
pub fn bridge_veths(bridge: &BridgeConfig) -> Vec<String> {
    let mask = u32::MAX << (32 - u32::from(bridge.prefix_len));
    let mut found: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.strip_prefix("wh")
                .filter(|hex| hex.len() == 8)
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .is_some_and(|addr| addr & mask == u32::from(bridge.subnet))
        })
        .collect();
    found.sort();
    found
}

/// `nft list table inet wharf-<bridge>`, if nft exists and the table does.
pub fn nft_table(bridge: &BridgeConfig) -> Option<String> {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "inet", &format!("wharf-{}", bridge.name)])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// File descriptors of this process that hold a network namespace other than its own (a
/// prepared namespace or an instance's). Only meaningful when no other test in the process
/// has instances (the network tests take a lock for that).
pub fn foreign_netns_fds() -> Vec<String> {
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let text = target.to_string_lossy();
            (text.starts_with("net:[") && target != own)
                .then(|| format!("fd {} -> {text}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// `/sys/fs/cgroup/*/<name>` (and `/sys/fs/cgroup/<name>` on a v2 host) that exist.
pub fn cgroup_dirs_named(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    if root.join(name).exists() {
        found.push(root.join(name));
    }
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let dir = entry.path().join(name);
        if dir.exists() {
            found.push(dir);
        }
    }
    found
}

/// Files of this parent's cgroups that this process holds open and that the sandbox closes
/// at stop: the freezer's and the OOM watcher's. (The memory peak file is kept open until the
/// `Instance` is dropped, by design, and not listed.)
pub fn open_cgroup_files(parent: &str) -> Vec<PathBuf> {
    const CLOSED_AT_STOP: &[&str] = &[
        "freezer.state",
        "cgroup.freeze",
        "cgroup.events",
        "memory.events",
        "memory.oom_control",
        "cgroup.event_control",
    ];
    let needle = format!("/{parent}/");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| {
            let text = target.to_string_lossy();
            text.starts_with("/sys/fs/cgroup/")
                && text.contains(&needle)
                && CLOSED_AT_STOP
                    .iter()
                    .any(|name| text.trim_end_matches(" (deleted)").ends_with(name))
        })
        .collect()
}

/// Tests run in parallel in one process: a zombie of another test may exist for a moment
/// before its watcher reaps it, so this waits (bounded) for none to be left.
pub async fn assert_no_zombie_children() {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let zombies = zombie_children();
        if zombies.is_empty() {
            return;
        }
        assert!(Instant::now() < end, "zombie children: {zombies:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Zombie children of this process: `(pid, comm)`.
pub fn zombie_children() -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((head, tail)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = tail.split(' ');
        let (state, ppid) = (fields.next(), fields.next());
        if state == Some("Z") && ppid == Some(&me.to_string()) {
            let (pid, comm) = head.split_once(" (").unwrap();
            zombies.push((pid.parse().unwrap(), comm.to_owned()));
        }
    }
    zombies
}

pub fn assert_no_mounts_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_string_lossy();
    let mounts: Vec<_> = info.lines().filter(|l| l.contains(&*dir)).collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
}

/// Wait (bounded) until the init runs `comm`: `runtime start` may return before the runtime's
/// own init has exec'd the instance's command. (Freezing before that can fail with runc: its
/// multi-threaded Go init waits in execve for threads the freezer holds, so the freeze times
/// out and is undone.)
pub async fn wait_for_comm(pid: u32, comm: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim_end() == comm {
            return;
        }
        assert!(Instant::now() < end, "pid {pid} runs {now:?}, not {comm}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Wait (bounded) until `pid` is gone from the host.
pub async fn assert_process_gone(pid: u32) {
    let end = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < end, "process {pid} still exists");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`busybox_layers`] in `dir`, with the base layer's `/tmp` removed (`None`) or given
/// `mode` (e.g. `0o755`, root's only): images differ in what they have at `/tmp`.
pub fn busybox_layers_with_tmp(dir: &Path, tmp_mode: Option<u32>) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let layers = busybox_layers(dir);
    let tmp = layers[0].join("tmp");
    match tmp_mode {
        None => std::fs::remove_dir(&tmp).unwrap(),
        Some(mode) => {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap()
        }
    }
    layers
}

/// More busybox applets in a layer made by [`busybox_layers`] (its `bin/busybox`).
pub fn add_applets(layer: &Path, applets: &[&str]) {
    for applet in applets {
        let link = layer.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
}

/// A tmpfs a test mounts on the host, unmounted when dropped (also on a panic).
pub struct HostTmpfs(pub PathBuf);

impl HostTmpfs {
    pub fn mount(target: &Path) -> HostTmpfs {
        rustix::mount::mount(
            "tmpfs",
            target,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            c"size=1m",
        )
        .unwrap();
        HostTmpfs(target.to_owned())
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        if let Err(e) = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::empty()) {
            eprintln!("unmounting {}: {e}", self.0.display());
            let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// Wait (bounded) until `lines` has a stdout line equal to `line`.
pub async fn wait_for_line(lines: &Lines, line: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while !lines.of(Stream::Stdout).iter().any(|l| l == line) {
        assert!(
            Instant::now() < end,
            "no line {line:?}; stdout {:?}, stderr {:?}",
            lines.of(Stream::Stdout),
            lines.of(Stream::Stderr)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
