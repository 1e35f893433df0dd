//! The instance's root filesystem: the image's unpacked layers, shared and read-only, stacked
//! as an overlay whose upper (writable) layer lives on a size-limited tmpfs, which also holds
//! the instance's `/tmp`.
//!
//! ```text
//! instances/<id>/            the OCI bundle
//!   config.json
//!   runtime.log              the runtime's own JSON log (errors of `create`)
//!   init.pid                 written by `runtime create`
//!   rw/                      tmpfs, size = writable_layer_bytes, 0700
//!     upper/  work/          the overlay's upper and work directories
//!     tmp/                   1777, bind-mounted at /tmp in config.json
//!   rootfs/                  overlay: lowerdir = layers top first, upperdir = rw/upper
//! ```
//!
//! # `/tmp`
//!
//! `/tmp` is always the bind mount of `rw/tmp`, whatever the image has there: no `/tmp` (the
//! runtime creates the mount point), a `0755` one (root's only), or a read-only root
//! (`root.readonly` remounts only the root mount; the bind is a mount of its own and stays
//! writable). Being on the same tmpfs, `/tmp` and changes to the image's files share one size
//! limit, and nothing an instance writes reaches the shared layers.
//!
//! # The writable layer and the memory limit
//!
//! tmpfs pages are charged to the memory cgroup of the process that writes them, and they stay
//! charged until the file is deleted: a file in `/tmp` is memory of the instance, even after
//! the process that wrote it has exited. Without swap (the sandbox limits memory+swap to the
//! memory limit when the host accounts swap) the kernel cannot reclaim them. So:
//!
//! * while the files fit under the memory limit next to the processes' own memory, a full
//!   writable layer fails the write with `ENOSPC` ("No space left on device") and nothing
//!   else happens: the instance goes on, and deleting files frees the space;
//! * when the memory limit is reached first, the write does not fail: the cgroup's OOM killer
//!   kills a process of the instance, chosen by the memory the process itself holds (the
//!   writer when it is the largest, as `dd` is next to busybox's `httpd`; the function's
//!   server when that is larger), and the written part of the file stays, still charged: the
//!   instance goes on with almost no memory left, and the next allocation past it is the next
//!   OOM kill, until files are deleted or the instance is stopped. `oom_killed` in the stop
//!   report (and `Instance::oom_killed`) tells.
//!
//! The `ENOSPC` path is only guaranteed when `writable_layer_bytes` plus the function's working
//! set stays below `memory_limit_bytes`; a writable layer larger than the memory limit is a
//! promise the memory limit breaks. Modifying a file of the image copies it whole into the
//! writable layer first (overlayfs copy-up), which counts too. On a host with swap but no swap
//! accounting, tmpfs pages can be swapped out and the writable layer can then outgrow the
//! memory limit.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::host::Host;

/// The paths of one instance's bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InstancePaths {
    pub bundle: PathBuf,
    pub rw: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// The instance's `/tmp` (bind-mounted there), on the writable layer's tmpfs.
    pub tmp: PathBuf,
    pub rootfs: PathBuf,
    pub config: PathBuf,
    pub pid_file: PathBuf,
    pub runtime_log: PathBuf,
}

impl InstancePaths {
    pub fn new(instances_dir: &Path, id: &str) -> InstancePaths {
        let bundle = instances_dir.join(id);
        InstancePaths {
            rw: bundle.join("rw"),
            upper: bundle.join("rw").join("upper"),
            work: bundle.join("rw").join("work"),
            tmp: bundle.join("rw").join("tmp"),
            rootfs: bundle.join("rootfs"),
            config: bundle.join("config.json"),
            pid_file: bundle.join("init.pid"),
            runtime_log: bundle.join("runtime.log"),
            bundle,
        }
    }
}

/// Mount the tmpfs for the writable layer at `rw/` and create `upper/`, `work/` and `tmp/` in
/// it. The upper directory is the merged root directory, so it takes the mode and owner of the
/// top layer's root; `tmp/` is `1777`, like any `/tmp`, whatever the umask.
pub(crate) fn mount_writable_layer(
    host: &dyn Host,
    paths: &InstancePaths,
    size_bytes: u64,
    top_layer: &Path,
) -> io::Result<()> {
    std::fs::create_dir(&paths.rw)?;
    host.mount_tmpfs(&paths.rw, size_bytes)?;
    std::fs::create_dir(&paths.upper)?;
    std::fs::create_dir(&paths.work)?;
    std::fs::create_dir(&paths.tmp)?;
    std::fs::set_permissions(&paths.tmp, std::fs::Permissions::from_mode(0o1777))?;
    if let Ok(meta) = std::fs::metadata(top_layer) {
        std::fs::set_permissions(
            &paths.upper,
            std::fs::Permissions::from_mode(meta.mode() & 0o7777),
        )?;
        std::os::unix::fs::chown(&paths.upper, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

/// Mount the overlay at `rootfs/`. `layers` are base first, as in the image manifest.
pub(crate) fn mount_rootfs(
    host: &dyn Host,
    paths: &InstancePaths,
    layers: &[PathBuf],
) -> io::Result<()> {
    std::fs::create_dir(&paths.rootfs)?;
    let top_first: Vec<PathBuf> = layers.iter().rev().cloned().collect();
    host.mount_overlay(&top_first, &paths.upper, &paths.work, &paths.rootfs)
}

/// Unmount, falling back to a lazy detach when the mount is busy (a process of a dying
/// container may still hold a file open). Not mounted counts as done.
pub(crate) fn unmount(host: &dyn Host, target: &Path) -> io::Result<()> {
    match host.unmount(target, false) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.kind() == io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => host.unmount(target, true),
        Err(e) => Err(e),
    }
}

/// Mount points at or below `dir`, deepest first (so that they can be unmounted in order).
pub(crate) fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    mounts
}

/// Undo the octal escapes of `/proc/self/mountinfo` (`\040` for a space, …).
pub(crate) fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let digit = |b: u8| u16::from(b - b'0');
            let value = digit(bytes[i + 1]) * 64 + digit(bytes[i + 2]) * 8 + digit(bytes[i + 3]);
            out.push((value & 0xff) as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn bundle_layout() {
        let p = InstancePaths::new(Path::new("/data/instances"), "i1");
        assert_eq!(p.bundle, PathBuf::from("/data/instances/i1"));
        assert_eq!(p.upper, PathBuf::from("/data/instances/i1/rw/upper"));
        assert_eq!(p.work, PathBuf::from("/data/instances/i1/rw/work"));
        assert_eq!(p.tmp, PathBuf::from("/data/instances/i1/rw/tmp"));
        assert_eq!(p.rootfs, PathBuf::from("/data/instances/i1/rootfs"));
        assert_eq!(p.config, PathBuf::from("/data/instances/i1/config.json"));
    }

    #[test]
    fn writable_layer_holds_upper_work_and_a_1777_tmp() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = InstancePaths::new(tmp.path(), "i1");
        std::fs::create_dir(&paths.bundle).unwrap();
        let top = tmp.path().join("top");
        std::fs::create_dir(&top).unwrap();
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o750)).unwrap();
        let host = FakeHost::default();
        mount_writable_layer(&host, &paths, 8 << 20, &top).unwrap();
        assert_eq!(
            host.calls(),
            [format!("mount tmpfs {} {}", paths.rw.display(), 8 << 20)]
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&paths.tmp), 0o1777);
        assert_eq!(mode(&paths.upper), 0o750, "the top layer's root mode");
        assert!(paths.work.is_dir());
    }

    #[test]
    fn overlay_lowerdir_is_top_first() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = InstancePaths::new(tmp.path(), "i1");
        std::fs::create_dir(&paths.bundle).unwrap();
        let host = FakeHost::default();
        mount_rootfs(
            &host,
            &paths,
            &["/l/base".into(), "/l/mid".into(), "/l/top".into()],
        )
        .unwrap();
        assert_eq!(
            host.calls(),
            vec![format!(
                "mount overlay {} /l/top:/l/mid:/l/base",
                paths.rootfs.display()
            )]
        );
    }

    #[test]
    fn mounts_under_deepest_first() {
        let info = "\
1 0 0:1 / / rw - ext4 /dev/root rw
2 1 0:2 / /d/instances/a/rw rw - tmpfs tmpfs rw
3 1 0:3 / /d/instances/a/rootfs rw - overlay overlay rw
4 1 0:4 / /d/instances/b\\040c/rw rw - tmpfs tmpfs rw
5 1 0:5 / /d/other rw - tmpfs tmpfs rw
";
        let mounts = mounts_under(info, Path::new("/d/instances"));
        assert_eq!(mounts.len(), 3);
        assert!(mounts.contains(&PathBuf::from("/d/instances/b c/rw")));
        assert!(!mounts.contains(&PathBuf::from("/d/other")));
    }

    #[test]
    fn unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape_mountinfo("/plain\\"), "/plain\\");
        assert_eq!(unescape_mountinfo("/x\\05"), "/x\\05");
    }
}
