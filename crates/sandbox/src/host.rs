//! The privileged-operations seam: mounts, cgroup files, the mount table, the runtime binary.
//!
//! Everything here needs root or touches global state, so the logic around it (which runtime to
//! choose, which cgroup files to read, what to unmount in which order) is written against the
//! [`Host`] trait and unit-tested with [`fake::FakeHost`], which records calls and answers from
//! a script. [`RealHost`] is the kernel; the integration tests under `tests/` exercise it.
//!
//! Not everything privileged is behind the trait: `setns` lives in the connector thread and the
//! pidfd calls in the reaper, because they are only meaningful against real processes and
//! namespaces.

use std::ffi::{CString, OsString};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use rustix::mount::{MountFlags, UnmountFlags};
use tracing::debug;

/// One invocation of the OCI runtime binary.
#[derive(Debug)]
pub(crate) struct RuntimeCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Run in a private mount namespace (`/` made rslave) in which this mount is detached first.
    /// This is how crun runs on hybrid-cgroup hosts: set up in `pre_exec`, no extra process.
    pub detach_mount: Option<PathBuf>,
    /// For `create`: the container's stdout and stderr (it inherits the runtime's). When `None`,
    /// the runtime's stdout and stderr are captured into [`CommandOutput`].
    pub stdio: Option<(OwnedFd, OwnedFd)>,
}

impl RuntimeCommand {
    /// The command line, for logs and test assertions.
    pub fn describe(&self) -> String {
        let args: Vec<_> = self.args.iter().map(|a| a.to_string_lossy()).collect();
        format!("{} {}", self.program.display(), args.join(" "))
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct CommandOutput {
    pub success: bool,
    /// Exit code, or 128 + signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub(crate) trait Host: Send + Sync + 'static {
    /// `mount -t tmpfs -o size=…,mode=0700,nosuid,nodev tmpfs <target>`.
    fn mount_tmpfs(&self, target: &Path, size_bytes: u64) -> io::Result<()>;
    /// Overlay with `lower` given **top first**.
    fn mount_overlay(
        &self,
        lower: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()>;
    /// `umount2(target, detach ? MNT_DETACH : 0)`.
    fn unmount(&self, target: &Path, detach: bool) -> io::Result<()>;
    /// `/proc/self/mountinfo`.
    fn mountinfo(&self) -> io::Result<String>;
    /// Small files: cgroup interface files, `/proc/self/cgroup`.
    fn read_file(&self, path: &Path) -> io::Result<String>;
    fn exists(&self, path: &Path) -> bool;
    /// Names of the sub-directories of `path`.
    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>>;
    /// `rmdir` (cgroup directories cannot be removed any other way).
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Find an executable on `PATH` (and the sbin directories, where runc lives on Debian).
    fn find_program(&self, name: &str) -> Option<PathBuf>;
    /// Run the runtime binary to completion (blocking).
    fn run(&self, command: RuntimeCommand) -> io::Result<CommandOutput>;
    /// Releases a created container whose init waits *reading* `fifo` (crun's `exec.fifo`):
    /// open it for writing without blocking, unlink it, write one byte — what `crun start`
    /// does. `Ok(false)` when nobody reads it (no such fifo, or runc, whose init *writes* its
    /// fifo): the caller then runs `runtime start`.
    fn release_exec_fifo(&self, fifo: &Path) -> io::Result<bool>;
    /// The hard `RLIMIT_NOFILE` of this process (`None` = unlimited).
    fn nofile_hard_limit(&self) -> Option<u64>;
}

/// The kernel.
#[derive(Debug, Default)]
pub(crate) struct RealHost;

/// Directories searched after `PATH`: runc is in `/usr/sbin` on Debian, which is not on every
/// user's `PATH`.
const EXTRA_PROGRAM_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Cgroup files and `/proc` files we read are small; this bounds a hostile or broken one.
const MAX_SMALL_FILE_BYTES: u64 = 1 << 20;

impl Host for RealHost {
    fn mount_tmpfs(&self, target: &Path, size_bytes: u64) -> io::Result<()> {
        let data = CString::new(format!("size={size_bytes},mode=0700"))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        debug!(target = %target.display(), size_bytes, "mount tmpfs");
        rustix::mount::mount(
            "tmpfs",
            target,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            data.as_c_str(),
        )?;
        Ok(())
    }

    fn mount_overlay(
        &self,
        lower: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()> {
        debug!(target = %target.display(), layers = lower.len(), "mount overlay");
        match mount_overlay_fsconfig(lower, upper, work, target) {
            Ok(()) => Ok(()),
            // `lowerdir+` needs Linux 6.8; older kernels take the classic option string. The new
            // mount API itself may be missing too (ENOSYS: old kernels, seccomp filters,
            // valgrind).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                debug!("fsconfig lowerdir+ refused, falling back to mount(2)");
                mount_overlay_classic(lower, upper, work, target)
            }
            Err(e) => Err(e),
        }
    }

    fn unmount(&self, target: &Path, detach: bool) -> io::Result<()> {
        debug!(target = %target.display(), detach, "unmount");
        let flags = if detach {
            UnmountFlags::DETACH
        } else {
            UnmountFlags::empty()
        };
        rustix::mount::unmount(target, flags)?;
        Ok(())
    }

    fn mountinfo(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
    }

    fn read_file(&self, path: &Path) -> io::Result<String> {
        let mut text = String::new();
        std::fs::File::open(path)?
            .take(MAX_SMALL_FILE_BYTES)
            .read_to_string(&mut text)?;
        Ok(text)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        debug!(path = %path.display(), "rmdir");
        std::fs::remove_dir(path)
    }

    fn find_program(&self, name: &str) -> Option<PathBuf> {
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path_var)
            .chain(EXTRA_PROGRAM_DIRS.iter().map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|candidate| {
                std::fs::metadata(candidate)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    }

    fn run(&self, command: RuntimeCommand) -> io::Result<CommandOutput> {
        debug!(command = %command.describe(), private_mount_ns = command.detach_mount.is_some(), "run runtime");
        let mut cmd = std::process::Command::new(&command.program);
        cmd.args(&command.args).stdin(Stdio::null());
        if let Some(mount) = &command.detach_mount {
            let mount = CString::new(mount.as_os_str().as_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: the closure runs between fork and exec and only makes raw system calls
            // (unshare, mount, umount2) on memory prepared before the fork; no allocation, no
            // locks.
            unsafe {
                cmd.pre_exec(move || enter_private_mount_ns(&mount));
            }
        }
        let output = match command.stdio {
            Some((stdout, stderr)) => {
                let status = cmd
                    .stdout(Stdio::from(stdout))
                    .stderr(Stdio::from(stderr))
                    .status()?;
                std::process::Output {
                    status,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                }
            }
            None => cmd.output()?,
        };
        let code = output
            .status
            .code()
            .unwrap_or_else(|| 128 + output.status.signal().unwrap_or(0));
        Ok(CommandOutput {
            success: output.status.success(),
            code,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    fn release_exec_fifo(&self, fifo: &Path) -> io::Result<bool> {
        use rustix::fs::{Mode, OFlags};
        let fd = match rustix::fs::open(
            fifo,
            OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // ENXIO: a fifo without a reader; ENOENT: none at all.
            Err(rustix::io::Errno::NXIO | rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if !rustix::fs::fstat(&fd)
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_fifo())
            .unwrap_or(false)
        {
            return Ok(false);
        }
        rustix::fs::unlink(fifo)?;
        rustix::io::write(&fd, &[0u8])?;
        Ok(true)
    }

    fn nofile_hard_limit(&self) -> Option<u64> {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum
    }
}

/// Runs in the forked child before `exec`: a private mount namespace, `/` made rslave so that
/// nothing propagates back, and `mount` detached. Async-signal-safe: raw syscalls only.
fn enter_private_mount_ns(mount: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: plain system calls with valid, NUL-terminated pointers or NULL where allowed.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::umount2(mount.as_ptr(), libc::MNT_DETACH) != 0 {
            let err = io::Error::last_os_error();
            // Not mounted (any more): nothing to hide.
            if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// The new mount API: one `lowerdir+` per layer, so the number of layers is not limited by the
/// one-page option string of mount(2).
fn mount_overlay_fsconfig(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create,
        fsconfig_set_string, fsmount, fsopen, move_mount,
    };
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for dir in lower {
        fsconfig_set_string(&fs, "lowerdir+", dir.as_path())?;
    }
    fsconfig_set_string(&fs, "upperdir", upper)?;
    fsconfig_set_string(&fs, "workdir", work)?;
    fsconfig_create(&fs)?;
    // nosuid, nodev: image bytes are hostile, and this view of them sits on the host. Inside the
    // container nothing is lost (no_new_privs already voids setuid; /dev is its own tmpfs).
    let mnt = fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
    )?;
    move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

fn mount_overlay_classic(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    let mut data = Vec::new();
    data.extend_from_slice(b"lowerdir=");
    for (i, dir) in lower.iter().enumerate() {
        let bytes = dir.as_os_str().as_bytes();
        if bytes.iter().any(|b| matches!(b, b':' | b',')) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("layer path {} contains ':' or ','", dir.display()),
            ));
        }
        if i > 0 {
            data.push(b':');
        }
        data.extend_from_slice(bytes);
    }
    data.extend_from_slice(b",upperdir=");
    data.extend_from_slice(upper.as_os_str().as_bytes());
    data.extend_from_slice(b",workdir=");
    data.extend_from_slice(work.as_os_str().as_bytes());
    let data = CString::new(data).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod fake {
    //! A recording [`Host`]: a fake file system for cgroup files and the mount table, and
    //! scripted answers for runtime invocations.

    use super::*;
    use std::collections::{BTreeMap, BTreeSet, VecDeque};
    use std::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct FakeHost {
        pub state: Mutex<FakeState>,
    }

    #[derive(Default)]
    pub(crate) struct FakeState {
        pub files: BTreeMap<PathBuf, String>,
        pub dirs: BTreeSet<PathBuf>,
        pub programs: BTreeMap<String, PathBuf>,
        pub mountinfo: String,
        /// Answers for `run`, in order; `describe()` of each command is recorded in `calls`.
        pub answers: VecDeque<CommandOutput>,
        pub calls: Vec<String>,
        pub private_ns_calls: Vec<Option<PathBuf>>,
        pub nofile: Option<u64>,
    }

    impl FakeHost {
        pub fn with(f: impl FnOnce(&mut FakeState)) -> FakeHost {
            let host = FakeHost::default();
            f(&mut host.state.lock().unwrap());
            host
        }

        pub fn calls(&self) -> Vec<String> {
            self.state.lock().unwrap().calls.clone()
        }
    }

    fn not_found() -> io::Error {
        io::Error::from(io::ErrorKind::NotFound)
    }

    impl Host for FakeHost {
        fn mount_tmpfs(&self, target: &Path, size_bytes: u64) -> io::Result<()> {
            let mut s = self.state.lock().unwrap();
            s.calls
                .push(format!("mount tmpfs {} {size_bytes}", target.display()));
            Ok(())
        }

        fn mount_overlay(
            &self,
            lower: &[PathBuf],
            _upper: &Path,
            _work: &Path,
            target: &Path,
        ) -> io::Result<()> {
            let mut s = self.state.lock().unwrap();
            let lower: Vec<_> = lower.iter().map(|p| p.display().to_string()).collect();
            s.calls.push(format!(
                "mount overlay {} {}",
                target.display(),
                lower.join(":")
            ));
            Ok(())
        }

        fn unmount(&self, target: &Path, detach: bool) -> io::Result<()> {
            let mut s = self.state.lock().unwrap();
            s.calls
                .push(format!("unmount {} detach={detach}", target.display()));
            Ok(())
        }

        fn mountinfo(&self) -> io::Result<String> {
            Ok(self.state.lock().unwrap().mountinfo.clone())
        }

        fn read_file(&self, path: &Path) -> io::Result<String> {
            let s = self.state.lock().unwrap();
            s.files.get(path).cloned().ok_or_else(not_found)
        }

        fn exists(&self, path: &Path) -> bool {
            let s = self.state.lock().unwrap();
            s.files.contains_key(path) || s.dirs.contains(path)
        }

        fn list_dirs(&self, path: &Path) -> io::Result<Vec<String>> {
            let s = self.state.lock().unwrap();
            if !s.dirs.contains(path) {
                return Err(not_found());
            }
            Ok(s.dirs
                .iter()
                .filter(|d| d.parent() == Some(path))
                .filter_map(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect())
        }

        fn remove_dir(&self, path: &Path) -> io::Result<()> {
            let mut s = self.state.lock().unwrap();
            s.calls.push(format!("rmdir {}", path.display()));
            if !s.dirs.contains(path) {
                return Err(not_found());
            }
            if s.dirs.iter().any(|d| d.parent() == Some(path)) {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            s.dirs.remove(path);
            Ok(())
        }

        fn find_program(&self, name: &str) -> Option<PathBuf> {
            self.state.lock().unwrap().programs.get(name).cloned()
        }

        fn run(&self, command: RuntimeCommand) -> io::Result<CommandOutput> {
            let mut s = self.state.lock().unwrap();
            s.calls.push(command.describe());
            s.private_ns_calls.push(command.detach_mount.clone());
            Ok(s.answers.pop_front().unwrap_or(CommandOutput {
                success: true,
                ..Default::default()
            }))
        }

        fn release_exec_fifo(&self, _fifo: &Path) -> io::Result<bool> {
            Ok(false)
        }

        fn nofile_hard_limit(&self) -> Option<u64> {
            self.state.lock().unwrap().nofile
        }
    }
}
