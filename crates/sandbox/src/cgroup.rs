//! cgroups v1, v2 and hybrid: where the hierarchies are mounted, which directories the runtime
//! creates for an instance, and the few files Wharf reads itself.
//!
//! The runtime creates and deletes the instance's cgroup (`linux.cgroupsPath =
//! /<parent>/<id>`) in every hierarchy it sees: runc sees all v1 hierarchies *and* the v2 mount
//! on a hybrid host; crun, run in a mount namespace without the v2 mount, sees only v1. Wharf
//! itself only
//!
//! * reads the memory peak and the OOM-kill counter *before* the runtime deletes the cgroup
//!   (v1: `memory.max_usage_in_bytes`, `memory.oom_control`; v2: `memory.peak`,
//!   `memory.events`),
//! * removes directories left behind (an instance directory after a crash, the parent at
//!   shutdown) with `rmdir`, the only way to remove a cgroup,
//! * freezes and thaws an instance through the cgroup freezer ([`FreezerFiles`]): the v1
//!   `freezer` hierarchy when it is mounted (v1 and hybrid hosts), else the v2 core freezer.
//!   Writing the file directly costs one `pwrite` (5–100 µs); `runtime pause` costs a
//!   process and 5–9 ms,
//! * finds the files that tell about OOM kills while the instance runs ([`OomFiles`]; the
//!   watcher is `oom`).
//!
//! Reading statistics goes through [`Host`], so the v1 and v2 logic is tested against a fake
//! tree. The freezer and OOM files are kept open by their users and read and written with
//! `pread`/`pwrite` (see `instance_freeze`, `oom`); they are tested against fake trees of
//! regular files.

use std::path::{Path, PathBuf};

use crate::host::Host;
use crate::rootfs::unescape_mountinfo;

/// How cgroups are mounted on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CgroupMode {
    /// Only v1 hierarchies.
    V1,
    /// Only the unified (v2) hierarchy.
    V2,
    /// v1 hierarchies plus a v2 mount (usually `/sys/fs/cgroup/unified`).
    Hybrid,
}

impl CgroupMode {
    pub fn describe(self) -> &'static str {
        match self {
            CgroupMode::V1 => "cgroup v1",
            CgroupMode::V2 => "cgroup v2",
            CgroupMode::Hybrid => "hybrid cgroups",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HierarchyKind {
    /// Controllers (`memory`, `cpu`, …) and `name=…` for named hierarchies.
    V1 {
        controllers: Vec<String>,
    },
    V2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    pub mountpoint: PathBuf,
    pub kind: HierarchyKind,
}

/// Where to read memory statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
enum MemoryController<'a> {
    V1(&'a Path),
    V2(&'a Path),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemoryStats {
    pub peak_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
}

/// Which freezer an instance's processes are frozen with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FreezerKind {
    /// `freezer.state`: write `FROZEN` / `THAWED`; it reads `FREEZING` until every task is
    /// frozen.
    V1,
    /// `cgroup.freeze`: write `1` / `0`; `cgroup.events` says `frozen 1` once every task is
    /// frozen (and signals `POLLPRI` when that changes).
    V2,
}

impl FreezerKind {
    /// What to write to [`FreezerFiles::control`].
    pub fn request(self, freeze: bool) -> &'static str {
        match (self, freeze) {
            (FreezerKind::V1, true) => "FROZEN",
            (FreezerKind::V1, false) => "THAWED",
            (FreezerKind::V2, true) => "1",
            (FreezerKind::V2, false) => "0",
        }
    }

    /// Whether [`FreezerFiles::state`]'s text says every task is frozen; `None` when the text
    /// is not what this kernel interface writes.
    pub fn is_frozen(self, state: &str) -> Option<bool> {
        match self {
            FreezerKind::V1 => match state.trim() {
                "FROZEN" => Some(true),
                "FREEZING" | "THAWED" => Some(false),
                _ => None,
            },
            FreezerKind::V2 => flat_keyed_value(state, "frozen").map(|v| v == 1),
        }
    }

    /// The part of the state text worth quoting in an error (`FREEZING`, `frozen 0`).
    pub fn describe_state(self, state: &str) -> String {
        match self {
            FreezerKind::V1 => state.trim().to_owned(),
            FreezerKind::V2 => match flat_keyed_value(state, "frozen") {
                Some(v) => format!("frozen {v}"),
                None => state.trim().replace('\n', ", "),
            },
        }
    }
}

/// The freezer of one instance cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FreezerFiles {
    pub kind: FreezerKind,
    /// Written to freeze and thaw: v1 `freezer.state`, v2 `cgroup.freeze`.
    pub control: PathBuf,
    /// What the kernel reports: v1 `freezer.state` (the same file), v2 `cgroup.events`.
    pub state: PathBuf,
}

/// The files that report an instance's OOM kills while it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OomFiles {
    /// `memory.oom_control` (the `oom_kill` counter; its eventfd is signalled on every OOM of
    /// the cgroup) and `cgroup.event_control` (where the eventfd is registered).
    V1 {
        oom_control: PathBuf,
        event_control: PathBuf,
    },
    /// `memory.events`: the `oom_kill` counter, `POLLPRI` when any of its counters changes.
    V2 { events: PathBuf },
}

/// v1 controller names; anything else in a `cgroup` mount's super options is a mount option.
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CgroupLayout {
    pub hierarchies: Vec<Hierarchy>,
}

impl CgroupLayout {
    /// Parse `/proc/self/mountinfo`. Bind mounts of sub-trees and second mounts of the same
    /// hierarchy are ignored.
    pub fn from_mountinfo(text: &str) -> CgroupLayout {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if left.len() < 5 || right.len() < 3 {
                continue;
            }
            let (root, mountpoint) = (left[3], unescape_mountinfo(left[4]));
            if root != "/" {
                continue;
            }
            let kind = match right[0] {
                "cgroup2" => HierarchyKind::V2,
                "cgroup" => {
                    let controllers: Vec<String> = right[2]
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(str::to_owned)
                        .collect();
                    if controllers.is_empty() {
                        continue;
                    }
                    HierarchyKind::V1 { controllers }
                }
                _ => continue,
            };
            if hierarchies.iter().any(|h| h.kind == kind) {
                continue;
            }
            hierarchies.push(Hierarchy {
                mountpoint: PathBuf::from(mountpoint),
                kind,
            });
        }
        CgroupLayout { hierarchies }
    }

    pub fn mode(&self) -> Option<CgroupMode> {
        let v1 = self
            .hierarchies
            .iter()
            .any(|h| matches!(h.kind, HierarchyKind::V1 { .. }));
        match (v1, self.v2_mount().is_some()) {
            (true, true) => Some(CgroupMode::Hybrid),
            (true, false) => Some(CgroupMode::V1),
            (false, true) => Some(CgroupMode::V2),
            (false, false) => None,
        }
    }

    pub fn v2_mount(&self) -> Option<&Path> {
        self.hierarchies
            .iter()
            .find(|h| h.kind == HierarchyKind::V2)
            .map(|h| h.mountpoint.as_path())
    }

    fn memory(&self) -> Option<MemoryController<'_>> {
        let v1 = self.hierarchies.iter().find(|h| match &h.kind {
            HierarchyKind::V1 { controllers } => controllers.iter().any(|c| c == "memory"),
            HierarchyKind::V2 => false,
        });
        match v1 {
            Some(h) => Some(MemoryController::V1(&h.mountpoint)),
            None => self.v2_mount().map(MemoryController::V2),
        }
    }

    /// The v1 `freezer` hierarchy when it is mounted, else the v2 hierarchy (whose freezer
    /// needs no controller). On a hybrid host runc also creates the instance's v2 cgroup and
    /// crun does not; the v1 freezer is there for both.
    fn freezer_mount(&self) -> Option<(FreezerKind, &Path)> {
        let v1 = self.hierarchies.iter().find(|h| match &h.kind {
            HierarchyKind::V1 { controllers } => controllers.iter().any(|c| c == "freezer"),
            HierarchyKind::V2 => false,
        });
        match v1 {
            Some(h) => Some((FreezerKind::V1, &h.mountpoint)),
            None => self.v2_mount().map(|m| (FreezerKind::V2, m)),
        }
    }

    /// The freezer files of an instance; `None` on a v1 host without a freezer hierarchy.
    pub fn freezer(&self, parent: &str, id: &str) -> Option<FreezerFiles> {
        let (kind, mount) = self.freezer_mount()?;
        let dir = mount.join(parent).join(id);
        Some(match kind {
            FreezerKind::V1 => FreezerFiles {
                kind,
                control: dir.join("freezer.state"),
                state: dir.join("freezer.state"),
            },
            FreezerKind::V2 => FreezerFiles {
                kind,
                control: dir.join("cgroup.freeze"),
                state: dir.join("cgroup.events"),
            },
        })
    }

    /// Where an instance's OOM kills are counted and notified (the memory controller's
    /// hierarchy, as for [`CgroupLayout::memory_stats`]); `None` without one.
    pub fn oom_files(&self, parent: &str, id: &str) -> Option<OomFiles> {
        Some(match self.memory()? {
            MemoryController::V1(m) => {
                let dir = m.join(parent).join(id);
                OomFiles::V1 {
                    oom_control: dir.join("memory.oom_control"),
                    event_control: dir.join("cgroup.event_control"),
                }
            }
            MemoryController::V2(m) => OomFiles::V2 {
                events: m.join(parent).join(id).join("memory.events"),
            },
        })
    }

    /// `<mountpoint>/<parent>` in every hierarchy.
    pub fn parent_dirs(&self, parent: &str) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.mountpoint.join(parent))
            .collect()
    }

    /// `<mountpoint>/<parent>/<id>` in every hierarchy.
    pub fn instance_dirs(&self, parent: &str, id: &str) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.mountpoint.join(parent).join(id))
            .collect()
    }

    /// The `linux.cgroupsPath` of an instance.
    pub fn cgroups_path(parent: &str, id: &str) -> String {
        format!("/{parent}/{id}")
    }

    /// The file that holds an instance's memory peak (v1 `memory.max_usage_in_bytes`, v2
    /// `memory.peak`).
    pub fn peak_path(&self, parent: &str, id: &str) -> Option<PathBuf> {
        match self.memory()? {
            MemoryController::V1(m) => {
                Some(m.join(parent).join(id).join("memory.max_usage_in_bytes"))
            }
            MemoryController::V2(m) => Some(m.join(parent).join(id).join("memory.peak")),
        }
    }

    /// The file that holds an instance's memory use now (v1 `memory.usage_in_bytes`, v2
    /// `memory.current`).
    pub fn usage_path(&self, parent: &str, id: &str) -> Option<PathBuf> {
        match self.memory()? {
            MemoryController::V1(m) => Some(m.join(parent).join(id).join("memory.usage_in_bytes")),
            MemoryController::V2(m) => Some(m.join(parent).join(id).join("memory.current")),
        }
    }

    /// Memory peak and OOM kills of an instance's cgroup. Missing files (an old kernel without
    /// `memory.peak`, a cgroup already gone) give `None`.
    pub fn memory_stats(&self, host: &dyn Host, parent: &str, id: &str) -> MemoryStats {
        let Some(memory) = self.memory() else {
            return MemoryStats::default();
        };
        let (dir, peak_file, oom_file) = match memory {
            MemoryController::V1(m) => (
                m.join(parent).join(id),
                "memory.max_usage_in_bytes",
                "memory.oom_control",
            ),
            MemoryController::V2(m) => (m.join(parent).join(id), "memory.peak", "memory.events"),
        };
        MemoryStats {
            peak_bytes: host
                .read_file(&dir.join(peak_file))
                .ok()
                .and_then(|t| t.trim().parse().ok()),
            oom_kills: host
                .read_file(&dir.join(oom_file))
                .ok()
                .and_then(|t| flat_keyed_value(&t, "oom_kill")),
        }
    }

    /// Whether the host accounts swap, so that memory+swap can be limited to the memory limit
    /// (otherwise the runtime fails writing `memory.memsw.limit_in_bytes` on v1).
    pub fn swap_accounting(&self, host: &dyn Host) -> bool {
        match self.memory() {
            None => false,
            Some(MemoryController::V1(m)) => host.exists(&m.join("memory.memsw.limit_in_bytes")),
            Some(MemoryController::V2(m)) => {
                // The root cgroup has no memory.* files: look in our own cgroup, or any child.
                let own = host
                    .read_file(Path::new("/proc/self/cgroup"))
                    .ok()
                    .and_then(|t| {
                        t.lines()
                            .find_map(|l| l.strip_prefix("0::"))
                            .map(|p| p.trim_start_matches('/').to_owned())
                    })
                    .filter(|p| !p.is_empty());
                if let Some(own) = own {
                    return host.exists(&m.join(own).join("memory.swap.max"));
                }
                host.list_dirs(m).is_ok_and(|dirs| {
                    dirs.iter()
                        .any(|d| host.exists(&m.join(d).join("memory.swap.max")))
                })
            }
        }
    }
}

/// Longest text read from a kept cgroup file (`freezer.state`, `cgroup.events`,
/// `memory.events`, `memory.oom_control` are each well under 200 bytes).
const KEPT_FILE_BYTES: usize = 512;

/// The text of a cgroup file kept open, read again from its start (`pread`): no open and
/// close per read, and for kernfs the read is what clears a pending change notification.
pub(crate) fn pread_text(file: &std::fs::File) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; KEPT_FILE_BYTES];
    let n = file.read_at(&mut buf, 0)?;
    String::from_utf8(buf[..n].to_vec())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A kept-open cgroup v2 file whose changes the kernel signals with `POLLPRI` (`cgroup.events`,
/// `memory.events`): kernfs marks every open file of the node changed and wakes its pollers;
/// reading through the same descriptor clears the mark. Waiting costs no thread and no timer.
pub(crate) struct NotifiedFile(tokio::io::unix::AsyncFd<std::fs::File>);

impl NotifiedFile {
    /// Fails (`EPERM`) for files epoll cannot watch, such as regular files, and gives the
    /// file back. Needs a tokio runtime.
    pub fn new(file: std::fs::File) -> Result<NotifiedFile, (std::fs::File, std::io::Error)> {
        // SAFETY: the file moves into the AsyncFd, which owns it: the descriptor stays open
        // and the same for the AsyncFd's whole lifetime.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(file, tokio::io::Interest::PRIORITY)
        }
        .map(NotifiedFile)
        .map_err(|e| e.into_parts())
    }

    pub fn read(&self) -> std::io::Result<String> {
        pread_text(self.0.get_ref())
    }

    /// Until the file changed since the last wait (spurious wake-ups are possible: re-read
    /// and decide). Read the file after this returns, to clear the kernel's mark.
    pub async fn changed(&self) -> std::io::Result<()> {
        let mut guard = self.0.ready(tokio::io::Interest::PRIORITY).await?;
        guard.clear_ready();
        Ok(())
    }
}

/// `key value` lines (`memory.events`, `memory.oom_control`).
pub(crate) fn flat_keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// `rmdir` a cgroup directory and everything below it, deepest first. Returns how many
/// directories were removed and the errors (a cgroup with processes stays: `EBUSY`).
pub(crate) fn remove_tree(host: &dyn Host, dir: &Path) -> (usize, Vec<String>) {
    let mut removed = 0;
    let mut errors = Vec::new();
    match host.list_dirs(dir) {
        Ok(children) => {
            for child in children {
                let (n, e) = remove_tree(host, &dir.join(child));
                removed += n;
                errors.extend(e);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (0, errors),
        Err(e) => errors.push(format!("failed to list {}: {e}", dir.display())),
    }
    match host.remove_dir(dir) {
        Ok(()) => removed += 1,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("failed to remove cgroup {}: {e}", dir.display())),
    }
    (removed, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::RealHost;
    use crate::host::fake::FakeHost;

    /// Shortened from this CI host (Debian 12, hybrid).
    const HYBRID: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 24 0:23 / /sys/fs/cgroup rw,relatime - tmpfs cgroup rw,mode=755
26 25 0:24 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:25 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
29 25 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
30 25 0:28 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
31 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
32 28 0:26 /process_api /mnt/bound rw,relatime - cgroup cgroup rw,memory
";

    const V2: &str = "\
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const V1_COMOUNTED: &str = "\
26 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
28 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_layout() {
        let layout = CgroupLayout::from_mountinfo(HYBRID);
        assert_eq!(layout.mode(), Some(CgroupMode::Hybrid));
        assert_eq!(layout.hierarchies.len(), 6, "{layout:?}");
        assert_eq!(layout.v2_mount(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(
            layout.memory(),
            Some(MemoryController::V1(Path::new("/sys/fs/cgroup/memory")))
        );
        assert!(layout.hierarchies.iter().any(|h| h.kind
            == HierarchyKind::V1 {
                controllers: vec!["name=systemd".into()]
            }));
        let dirs = layout.instance_dirs("wharf", "i1");
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/memory/wharf/i1")));
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/unified/wharf/i1")));
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/systemd/wharf/i1")));
        assert_eq!(CgroupLayout::cgroups_path("wharf", "i1"), "/wharf/i1");
    }

    #[test]
    fn v2_and_v1_layouts() {
        let v2 = CgroupLayout::from_mountinfo(V2);
        assert_eq!(v2.mode(), Some(CgroupMode::V2));
        assert_eq!(
            v2.parent_dirs("wharf"),
            vec![PathBuf::from("/sys/fs/cgroup/wharf")]
        );
        let v1 = CgroupLayout::from_mountinfo(V1_COMOUNTED);
        assert_eq!(v1.mode(), Some(CgroupMode::V1));
        assert_eq!(
            v1.hierarchies[0].kind,
            HierarchyKind::V1 {
                controllers: vec!["cpu".into(), "cpuacct".into()]
            }
        );
        assert_eq!(
            v1.hierarchies[0].mountpoint,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(CgroupLayout::from_mountinfo("").mode(), None);
    }

    /// A fake v2 tree in a tempdir, read through the real file functions.
    #[test]
    fn v2_memory_stats_from_fake_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cgroup");
        let dir = root.join("wharf").join("i1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.peak"), "7340032\n").unwrap();
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        let mountinfo = format!(
            "35 24 0:30 / {} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
            root.display()
        );
        let layout = CgroupLayout::from_mountinfo(&mountinfo);
        assert_eq!(layout.mode(), Some(CgroupMode::V2));
        let stats = layout.memory_stats(&RealHost, "wharf", "i1");
        assert_eq!(
            stats,
            MemoryStats {
                peak_bytes: Some(7_340_032),
                oom_kills: Some(1)
            }
        );
        assert_eq!(
            layout.peak_path("wharf", "i1"),
            Some(dir.join("memory.peak"))
        );
        // Gone or never created: no numbers, no error.
        assert_eq!(
            layout.memory_stats(&RealHost, "wharf", "gone"),
            MemoryStats::default()
        );

        // Parent and instance directories are removed deepest first.
        std::fs::remove_file(dir.join("memory.peak")).unwrap();
        std::fs::remove_file(dir.join("memory.events")).unwrap();
        let (removed, errors) = remove_tree(&RealHost, &root.join("wharf"));
        assert_eq!((removed, errors), (2, vec![]));
        assert!(!root.join("wharf").exists());
    }

    #[test]
    fn v1_memory_stats_and_swap() {
        let host = FakeHost::with(|s| {
            s.files.insert(
                "/sys/fs/cgroup/memory/wharf/i1/memory.max_usage_in_bytes".into(),
                "1048576\n".into(),
            );
            s.files.insert(
                "/sys/fs/cgroup/memory/wharf/i1/memory.oom_control".into(),
                "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n".into(),
            );
            s.files.insert(
                "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes".into(),
                "9223372036854771712\n".into(),
            );
        });
        let layout = CgroupLayout::from_mountinfo(HYBRID);
        assert_eq!(
            layout.memory_stats(&host, "wharf", "i1"),
            MemoryStats {
                peak_bytes: Some(1_048_576),
                oom_kills: Some(3)
            }
        );
        assert!(layout.swap_accounting(&host));
        assert!(!layout.swap_accounting(&FakeHost::default()));
        assert_eq!(
            layout.peak_path("wharf", "i1"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/memory/wharf/i1/memory.max_usage_in_bytes"
            ))
        );
        assert_eq!(CgroupLayout::default().peak_path("wharf", "i1"), None);
    }

    #[test]
    fn v2_swap_accounting_uses_own_cgroup() {
        let layout = CgroupLayout::from_mountinfo(V2);
        let host = FakeHost::with(|s| {
            s.files.insert(
                "/proc/self/cgroup".into(),
                "0::/system.slice/wharf.service\n".into(),
            );
            s.files.insert(
                "/sys/fs/cgroup/system.slice/wharf.service/memory.swap.max".into(),
                "max\n".into(),
            );
        });
        assert!(layout.swap_accounting(&host));
        let at_root = FakeHost::with(|s| {
            s.files.insert("/proc/self/cgroup".into(), "0::/\n".into());
            s.dirs.insert("/sys/fs/cgroup".into());
            s.dirs.insert("/sys/fs/cgroup/init.scope".into());
        });
        assert!(!layout.swap_accounting(&at_root));
    }

    #[test]
    fn remove_tree_is_depth_first() {
        let host = FakeHost::with(|s| {
            s.dirs.insert("/cg/wharf".into());
            s.dirs.insert("/cg/wharf/a".into());
            s.dirs.insert("/cg/wharf/b".into());
        });
        let (removed, errors) = remove_tree(&host, Path::new("/cg/wharf"));
        assert_eq!((removed, errors.len()), (3, 0));
        assert_eq!(
            host.calls(),
            vec!["rmdir /cg/wharf/a", "rmdir /cg/wharf/b", "rmdir /cg/wharf"]
        );
        assert_eq!(remove_tree(&host, Path::new("/cg/missing")), (0, vec![]));
    }

    #[test]
    fn freezer_and_oom_files() {
        // The v1 freezer when it is mounted, also on a hybrid host (where crun sees no v2).
        let hybrid = CgroupLayout::from_mountinfo(&format!(
            "{HYBRID}37 25 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n"
        ));
        let files = hybrid.freezer("wharf", "i1").unwrap();
        assert_eq!(
            files,
            FreezerFiles {
                kind: FreezerKind::V1,
                control: "/sys/fs/cgroup/freezer/wharf/i1/freezer.state".into(),
                state: "/sys/fs/cgroup/freezer/wharf/i1/freezer.state".into(),
            }
        );
        assert_eq!(
            hybrid.oom_files("wharf", "i1"),
            Some(OomFiles::V1 {
                oom_control: "/sys/fs/cgroup/memory/wharf/i1/memory.oom_control".into(),
                event_control: "/sys/fs/cgroup/memory/wharf/i1/cgroup.event_control".into(),
            })
        );
        // Hybrid without a v1 freezer: the v2 mount's core freezer.
        let files = CgroupLayout::from_mountinfo(HYBRID)
            .freezer("wharf", "i1")
            .unwrap();
        assert_eq!(files.kind, FreezerKind::V2);
        assert_eq!(
            files.control,
            PathBuf::from("/sys/fs/cgroup/unified/wharf/i1/cgroup.freeze")
        );
        let v2 = CgroupLayout::from_mountinfo(V2);
        assert_eq!(
            v2.freezer("wharf", "i1"),
            Some(FreezerFiles {
                kind: FreezerKind::V2,
                control: "/sys/fs/cgroup/wharf/i1/cgroup.freeze".into(),
                state: "/sys/fs/cgroup/wharf/i1/cgroup.events".into(),
            })
        );
        assert_eq!(
            v2.oom_files("wharf", "i1"),
            Some(OomFiles::V2 {
                events: "/sys/fs/cgroup/wharf/i1/memory.events".into()
            })
        );
        // v1 without a freezer hierarchy (nor v2): none.
        let v1 = CgroupLayout::from_mountinfo(V1_COMOUNTED);
        assert_eq!(v1.freezer("wharf", "i1"), None);
        assert!(v1.oom_files("wharf", "i1").is_some());
        assert_eq!(CgroupLayout::default().oom_files("wharf", "i1"), None);
    }

    /// Kept files are read again from their start, whatever was read before.
    #[test]
    fn kept_files_are_reread() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("freezer.state");
        std::fs::write(&path, "FREEZING\n").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert_eq!(pread_text(&file).unwrap(), "FREEZING\n");
        std::fs::write(&path, "FROZEN\n").unwrap();
        assert_eq!(pread_text(&file).unwrap(), "FROZEN\n");
    }

    #[test]
    fn keyed_values() {
        assert_eq!(flat_keyed_value("oom 1\noom_kill 2\n", "oom_kill"), Some(2));
        assert_eq!(flat_keyed_value("oom 1\n", "oom_kill"), None);
    }
}
