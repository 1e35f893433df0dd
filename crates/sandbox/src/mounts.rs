//! Host bind mounts ([`BindMount`], the seeds' "external data disk"): the rules a mount must
//! follow before it reaches `config.json`.
//!
//! The rules are checked in two places, with the same code:
//!
//! * [`validate_mounts`] (and [`validate_mount`]) need nothing but the spec: the API calls them
//!   before it stores a function, so a bad mount is refused at deploy, not at the first cold
//!   start. [`crate::Sandbox::start`] calls them again: the sandbox does not trust its caller.
//! * [`resolve_on_host`] runs at start, because the host can change between a deploy and a
//!   cold start: the source must exist and be a directory or a regular file (a device, socket
//!   or fifo would hand the instance a host interface), symlinks are resolved, and the
//!   *resolved* path is checked (not `/`, not in or above the sandbox's state directory, which
//!   holds the layers, the other instances' bundles and the daemon's credentials) and is the
//!   one written into `config.json`, so the runtime mounts what was checked.
//!
//! What the runtime is then told (`spec.rs`): `bind`, not `rbind`, so a mount below the
//! source on the host (a USB disk, another tmpfs, an NFS share) does not come along;
//! `nosuid,nodev`, so a setuid binary or a device node in a host directory gives the instance
//! nothing; `private`, so mounts made later on either side do not propagate to the other.
//!
//! The check at start and the runtime's mount are not atomic: whoever can replace a component
//! of a source path on the host between the two decides what is mounted. A source must
//! therefore not lie under a directory that an instance (or another untrusted party) can write;
//! that is the operator's choice of paths, and it is documented in `docs/CONVENTIONS.md`.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::BindMount;

/// Most bind mounts one instance may have: each is a mount in the instance's namespace and a
/// few syscalls on the cold-start path.
pub const MAX_BIND_MOUNTS: usize = 64;

/// Longest source or target path, in bytes (the kernel's `PATH_MAX` less the NUL).
pub const MAX_MOUNT_PATH_BYTES: usize = 4095;

/// Targets the runtime sets up itself (`/proc`, `/sys`, `/dev` and everything under them).
const RESERVED_TARGETS: &[&str] = &["/proc", "/sys", "/dev"];

/// Why a bind mount is refused. Every message names the mount (source and target) and says
/// what to change.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{count} bind mounts, at most {max} are allowed: remove some or mount a common parent")]
    TooMany { count: usize, max: usize },

    #[error(
        "bind mount {host_path} on {target:?}: a path contains a NUL byte or is longer than \
         {MAX_MOUNT_PATH_BYTES} bytes: correct it"
    )]
    BadPath { host_path: PathBuf, target: String },

    #[error(
        "bind mount {host_path} on {target:?}: the target must be an absolute path inside the \
         instance, such as /data"
    )]
    TargetNotAbsolute { host_path: PathBuf, target: String },

    #[error(
        "bind mount {host_path} on {target:?}: the target has an empty, '.' or '..' component \
         or a trailing slash: write it in plain form, such as /data/models"
    )]
    TargetNotNormal { host_path: PathBuf, target: String },

    #[error(
        "bind mount {host_path} on /: the instance's root cannot be replaced: mount on a \
         directory, such as /data"
    )]
    TargetRoot { host_path: PathBuf },

    #[error(
        "bind mount {host_path} on {target}: {reserved} is set up by the runtime: mount \
         somewhere else, such as /data"
    )]
    TargetReserved {
        host_path: PathBuf,
        target: String,
        reserved: &'static str,
    },

    #[error(
        "bind mount {host_path} on /tmp: /tmp is the instance's own writable directory: mount \
         below it (/tmp/NAME) or somewhere else"
    )]
    TargetTmp { host_path: PathBuf },

    #[error(
        "bind mount {host_path:?} on {target}: the source must be an absolute path on the \
         host"
    )]
    SourceNotAbsolute { host_path: PathBuf, target: String },

    #[error(
        "bind mount {host_path:?} on {target}: the source has an empty, '.' or '..' component \
         or a trailing slash: write it in plain form"
    )]
    SourceNotNormal { host_path: PathBuf, target: String },

    #[error(
        "bind mount {host_path} on {target}: the source {resolved} is the host's root: mount \
         the directory that holds the data"
    )]
    SourceRoot {
        host_path: PathBuf,
        resolved: PathBuf,
        target: String,
    },

    #[error(
        "bind mounts {first} and {second} both target {target}: keep one of them, or mount the \
         second elsewhere"
    )]
    DuplicateTarget {
        target: String,
        first: PathBuf,
        second: PathBuf,
    },

    #[error(
        "bind mount {host_path} on {target}: the source cannot be found on the host: create it \
         or correct the path"
    )]
    SourceMissing {
        host_path: PathBuf,
        target: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "bind mount {host_path} on {target}: the source {resolved} is a {kind}: only a \
         directory or a regular file can be mounted"
    )]
    SourceKind {
        host_path: PathBuf,
        resolved: PathBuf,
        target: String,
        kind: &'static str,
    },

    #[error(
        "bind mount {host_path} on {target}: the source {resolved} is inside the sandbox's state \
         directory {state_dir}: mount a directory outside it"
    )]
    SourceInStateDir {
        host_path: PathBuf,
        resolved: PathBuf,
        target: String,
        state_dir: PathBuf,
    },

    #[error(
        "bind mount {host_path} on {target}: the source {resolved} contains the sandbox's state \
         directory {state_dir} (image layers, other instances, credentials): mount a \
         directory that does not contain it"
    )]
    SourceContainsStateDir {
        host_path: PathBuf,
        resolved: PathBuf,
        target: String,
        state_dir: PathBuf,
    },
}

/// Why a path is not in plain absolute form.
#[derive(Debug, PartialEq, Eq)]
enum PathForm {
    Plain,
    TooLongOrNul,
    NotAbsolute,
    NotNormal,
}

/// `/a/b`: absolute, no empty, `.` or `..` component, no trailing slash. `/` alone is plain
/// (the callers refuse it with their own message).
fn path_form(bytes: &[u8]) -> PathForm {
    if bytes.len() > MAX_MOUNT_PATH_BYTES || bytes.contains(&0) {
        return PathForm::TooLongOrNul;
    }
    let Some(rest) = bytes.strip_prefix(b"/") else {
        return PathForm::NotAbsolute;
    };
    if rest.is_empty() {
        return PathForm::Plain;
    }
    if rest
        .split(|&b| b == b'/')
        .any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return PathForm::NotNormal;
    }
    PathForm::Plain
}

/// The rules that need no host: target absolute and plain, not `/`, not `/proc`, `/sys` or
/// `/dev` or below them, not `/tmp` itself (below it is fine: mounts are applied after the
/// instance's `/tmp`); source absolute and plain, not `/`. The API calls this before storing a
/// function; [`crate::Sandbox::start`] calls it again.
pub fn validate_mount(m: &BindMount) -> Result<(), MountError> {
    let host_path = || m.source.clone();
    let target = || m.target.clone();
    type Make = fn(PathBuf, String) -> MountError;
    // The same forms are wrong for both paths; only the variant that says which path differs.
    let check = |bytes: &[u8], not_absolute: Make, not_normal: Make| {
        let make: Make = match path_form(bytes) {
            PathForm::Plain => return Ok(()),
            PathForm::TooLongOrNul => |host_path, target| MountError::BadPath { host_path, target },
            PathForm::NotAbsolute => not_absolute,
            PathForm::NotNormal => not_normal,
        };
        Err(make(host_path(), target()))
    };
    check(
        m.target.as_bytes(),
        |host_path, target| MountError::TargetNotAbsolute { host_path, target },
        |host_path, target| MountError::TargetNotNormal { host_path, target },
    )?;
    check(
        m.source.as_os_str().as_bytes(),
        |host_path, target| MountError::SourceNotAbsolute { host_path, target },
        |host_path, target| MountError::SourceNotNormal { host_path, target },
    )?;
    if m.target == "/" {
        return Err(MountError::TargetRoot {
            host_path: host_path(),
        });
    }
    if let Some(reserved) = RESERVED_TARGETS
        .iter()
        .find(|r| Path::new(&m.target).starts_with(r))
    {
        return Err(MountError::TargetReserved {
            host_path: host_path(),
            target: target(),
            reserved,
        });
    }
    if m.target == "/tmp" {
        return Err(MountError::TargetTmp {
            host_path: host_path(),
        });
    }
    if m.source == Path::new("/") {
        return Err(MountError::SourceRoot {
            host_path: host_path(),
            resolved: host_path(),
            target: target(),
        });
    }
    Ok(())
}

/// [`validate_mount`] for each mount, at most [`MAX_BIND_MOUNTS`], and no two on the same
/// target (the second would hide the first). A mount below another's target is fine: the
/// sandbox applies parents first.
pub fn validate_mounts(mounts: &[BindMount]) -> Result<(), MountError> {
    if mounts.len() > MAX_BIND_MOUNTS {
        return Err(MountError::TooMany {
            count: mounts.len(),
            max: MAX_BIND_MOUNTS,
        });
    }
    for (i, m) in mounts.iter().enumerate() {
        validate_mount(m)?;
        if let Some(first) = mounts[..i].iter().find(|o| o.target == m.target) {
            return Err(MountError::DuplicateTarget {
                target: m.target.clone(),
                first: first.source.clone(),
                second: m.source.clone(),
            });
        }
    }
    Ok(())
}

/// The check at start: `m` (already [validated](validate_mount)) against the host. Returns the
/// mount with its source resolved (symlinks followed), which is what `config.json` gets.
/// `state_dir` must be canonical ([`std::fs::canonicalize`]).
pub(crate) fn resolve_on_host(m: &BindMount, state_dir: &Path) -> Result<BindMount, MountError> {
    let resolved =
        std::fs::canonicalize(&m.source).map_err(|source| MountError::SourceMissing {
            host_path: m.source.clone(),
            target: m.target.clone(),
            source,
        })?;
    let meta = std::fs::metadata(&resolved).map_err(|source| MountError::SourceMissing {
        host_path: m.source.clone(),
        target: m.target.clone(),
        source,
    })?;
    let file_type = meta.file_type();
    let kind = if file_type.is_dir() || file_type.is_file() {
        None
    } else if file_type.is_block_device() {
        Some("block device")
    } else if file_type.is_char_device() {
        Some("character device")
    } else if file_type.is_socket() {
        Some("socket")
    } else if file_type.is_fifo() {
        Some("fifo")
    } else {
        Some("special file")
    };
    if let Some(kind) = kind {
        return Err(MountError::SourceKind {
            host_path: m.source.clone(),
            resolved,
            target: m.target.clone(),
            kind,
        });
    }
    if resolved == Path::new("/") {
        return Err(MountError::SourceRoot {
            host_path: m.source.clone(),
            resolved,
            target: m.target.clone(),
        });
    }
    if resolved.starts_with(state_dir) {
        return Err(MountError::SourceInStateDir {
            host_path: m.source.clone(),
            resolved,
            target: m.target.clone(),
            state_dir: state_dir.to_owned(),
        });
    }
    // A bind is not recursive, but the files of the state directory itself are on the
    // source's file system and would be visible below it.
    if state_dir.starts_with(&resolved) {
        return Err(MountError::SourceContainsStateDir {
            host_path: m.source.clone(),
            resolved,
            target: m.target.clone(),
            state_dir: state_dir.to_owned(),
        });
    }
    debug!(source = %m.source.display(), resolved = %resolved.display(), target = %m.target, read_only = m.read_only, "bind mount checked");
    Ok(BindMount {
        source: resolved,
        target: m.target.clone(),
        read_only: m.read_only,
    })
}

/// [`resolve_on_host`] for every mount, in order; `state_dir` need not be canonical.
pub(crate) fn resolve_all_on_host(
    mounts: &[BindMount],
    state_dir: &Path,
) -> Result<Vec<BindMount>, MountError> {
    if mounts.is_empty() {
        return Ok(Vec::new());
    }
    // The state directory exists (Sandbox::new created it); if it cannot be resolved, compare
    // with the path as configured.
    let state_dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    mounts
        .iter()
        .map(|m| resolve_on_host(m, &state_dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(source: &str, target: &str) -> BindMount {
        BindMount {
            source: source.into(),
            target: target.into(),
            read_only: true,
        }
    }

    #[test]
    fn plain_mounts_pass() {
        for (s, t) in [
            ("/srv/data", "/data"),
            ("/srv/app.conf", "/etc/app.conf"),
            ("/srv/cache", "/tmp/cache"),
            ("/srv/x", "/procfs"),
            ("/srv/x", "/devices/a"),
            ("/srv/x", "/mnt/a b/c"),
        ] {
            validate_mount(&bind(s, t)).unwrap_or_else(|e| panic!("{s} {t}: {e}"));
        }
    }

    #[test]
    fn targets_are_checked() {
        let err = |t: &str| validate_mount(&bind("/srv/data", t)).unwrap_err();
        for t in ["data", "", "./data"] {
            assert!(
                matches!(err(t), MountError::TargetNotAbsolute { .. }),
                "{t:?}"
            );
        }
        for t in [
            "/data/", "//data", "/a//b", "/a/./b", "/a/../b", "/..", "/.", "/a/..",
        ] {
            assert!(
                matches!(err(t), MountError::TargetNotNormal { .. }),
                "{t:?}"
            );
        }
        assert!(matches!(err("/"), MountError::TargetRoot { .. }));
        for t in [
            "/proc",
            "/proc/sys",
            "/sys",
            "/sys/fs/cgroup",
            "/dev",
            "/dev/shm",
        ] {
            assert!(matches!(err(t), MountError::TargetReserved { .. }), "{t:?}");
        }
        assert!(matches!(err("/tmp"), MountError::TargetTmp { .. }));
        assert!(matches!(err("/a\0b"), MountError::BadPath { .. }));
        let long = format!("/{}", "x".repeat(MAX_MOUNT_PATH_BYTES));
        assert!(matches!(err(&long), MountError::BadPath { .. }));
    }

    #[test]
    fn sources_are_checked() {
        let err = |s: &str| validate_mount(&bind(s, "/data")).unwrap_err();
        assert!(matches!(
            err("srv/data"),
            MountError::SourceNotAbsolute { .. }
        ));
        assert!(matches!(err(""), MountError::SourceNotAbsolute { .. }));
        for s in ["/srv/data/", "/srv//data", "/srv/./data", "/srv/../etc"] {
            assert!(
                matches!(err(s), MountError::SourceNotNormal { .. }),
                "{s:?}"
            );
        }
        assert!(matches!(err("/"), MountError::SourceRoot { .. }));
    }

    #[test]
    fn messages_name_the_mount_and_what_to_do() {
        let text = validate_mount(&bind("/srv/data", "/proc/x"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            text,
            "bind mount /srv/data on /proc/x: /proc is set up by the runtime: mount somewhere \
             else, such as /data"
        );
        let text = validate_mount(&bind("/srv/data", "data"))
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with("bind mount /srv/data on \"data\": "),
            "{text}"
        );
        assert!(text.contains("such as /data"), "{text}");
        let text = validate_mount(&bind("/srv/data", "/tmp"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("mount below it (/tmp/NAME)"), "{text}");
    }

    #[test]
    fn no_two_mounts_on_one_target() {
        let ok = [
            bind("/a", "/data"),
            bind("/b", "/data/sub"),
            bind("/a", "/other"),
        ];
        validate_mounts(&ok).unwrap();
        let dup = [bind("/a", "/data"), bind("/b", "/x"), bind("/c", "/data")];
        let err = validate_mounts(&dup).unwrap_err();
        assert!(matches!(err, MountError::DuplicateTarget { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "bind mounts /a and /c both target /data: keep one of them, or mount the second \
             elsewhere"
        );
        // Each mount's own rules apply too.
        let bad = [bind("/a", "/data"), bind("/b", "rel")];
        assert!(matches!(
            validate_mounts(&bad),
            Err(MountError::TargetNotAbsolute { .. })
        ));
        let many: Vec<_> = (0..=MAX_BIND_MOUNTS)
            .map(|i| bind("/a", &format!("/m{i}")))
            .collect();
        assert!(matches!(
            validate_mounts(&many),
            Err(MountError::TooMany { .. })
        ));
        validate_mounts(&many[..MAX_BIND_MOUNTS]).unwrap();
    }

    /// The host check runs against a real file system; none of it needs root.
    #[test]
    fn host_check() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let state = root.join("state");
        std::fs::create_dir_all(state.join("instances")).unwrap();
        let data = root.join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(root.join("file"), "x").unwrap();
        let at = |p: &Path| BindMount {
            source: p.to_owned(),
            target: "/data".into(),
            read_only: false,
        };
        let check = |p: &Path| resolve_on_host(&at(p), &state);

        assert_eq!(check(&data).unwrap(), at(&data));
        assert_eq!(check(&root.join("file")).unwrap(), at(&root.join("file")));

        // A symlink is resolved; the resolved path is checked and used.
        std::os::unix::fs::symlink(&data, root.join("link")).unwrap();
        let resolved = check(&root.join("link")).unwrap();
        assert_eq!(resolved.source, data);
        assert!(!resolved.read_only);

        let err = check(&root.join("missing")).unwrap_err();
        assert!(matches!(err, MountError::SourceMissing { .. }), "{err}");
        assert!(err.to_string().contains("create it or correct the path"));
        std::os::unix::fs::symlink(root.join("gone"), root.join("dangling")).unwrap();
        assert!(matches!(
            check(&root.join("dangling")),
            Err(MountError::SourceMissing { .. })
        ));

        let err = check(Path::new("/dev/null")).unwrap_err();
        assert!(
            matches!(
                err,
                MountError::SourceKind {
                    kind: "character device",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("only a directory or a regular file can be mounted")
        );
        let fifo = root.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(matches!(
            check(&fifo),
            Err(MountError::SourceKind { kind: "fifo", .. })
        ));
        let sock = root.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(matches!(
            check(&sock),
            Err(MountError::SourceKind { kind: "socket", .. })
        ));

        // The state directory, something in it, or something holding it.
        for inside in [state.clone(), state.join("instances")] {
            let err = check(&inside).unwrap_err();
            assert!(matches!(err, MountError::SourceInStateDir { .. }), "{err}");
        }
        std::os::unix::fs::symlink(state.join("instances"), root.join("sneaky")).unwrap();
        assert!(matches!(
            check(&root.join("sneaky")),
            Err(MountError::SourceInStateDir { .. })
        ));
        let err = check(&root).unwrap_err();
        assert!(
            matches!(err, MountError::SourceContainsStateDir { .. }),
            "{err}"
        );
        // The host's root, through a symlink.
        std::os::unix::fs::symlink("/", root.join("slash")).unwrap();
        let err = check(&root.join("slash")).unwrap_err();
        assert!(matches!(err, MountError::SourceRoot { .. }), "{err}");

        // A relative or symlinked state directory is resolved first.
        std::os::unix::fs::symlink(&state, root.join("state-link")).unwrap();
        let err = resolve_all_on_host(&[at(&state.join("instances"))], &root.join("state-link"))
            .unwrap_err();
        assert!(matches!(err, MountError::SourceInStateDir { .. }), "{err}");
        assert_eq!(
            resolve_all_on_host(&[at(&data)], &root.join("state-link")).unwrap(),
            [at(&data)]
        );
    }
}
