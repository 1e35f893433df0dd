//! Resolving an image's `USER` (`name`, `uid`, `uid:gid`, `name:group`, `uid:group`, …)
//! against the instance's own `/etc/passwd` and `/etc/group`, the way Docker does:
//!
//! * a numeric uid need not exist; its gid then comes from its passwd entry, or is 0;
//! * a name must exist, otherwise the start fails with a clear error;
//! * `HOME` comes from the passwd entry, or is `/`.
//!
//! The files are read from the merged rootfs with `openat2(RESOLVE_IN_ROOT)`: the image is
//! hostile, and `/etc/passwd` may be a symlink that would otherwise lead to a host file. Their
//! size is capped.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::User;

/// A passwd or group file larger than this is refused (an image is hostile input).
const MAX_ACCOUNT_FILE_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {name:?} not found in the image's /etc/passwd")]
    UnknownUser { name: String },
    #[error("group {name:?} not found in the image's /etc/group")]
    UnknownGroup { name: String },
    #[error("invalid user {spec:?}")]
    Invalid { spec: String },
    #[error("failed to read {file} in the image")]
    Read {
        file: &'static str,
        #[source]
        source: io::Error,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

#[derive(Debug, PartialEq, Eq)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_gid(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            f[2].parse().ok()
        } else {
            None
        }
    })
}

/// Resolve `user` given the text of `/etc/passwd` and `/etc/group` (empty when missing).
pub(crate) fn resolve(user: &User, passwd: &str, group: &str) -> Result<ResolvedUser, UserError> {
    let home_of = |uid: u32| {
        passwd_entries(passwd)
            .find(|e| e.uid == uid)
            .map(|e| e.home.to_owned())
    };
    match user {
        User::Id { uid, gid } => Ok(ResolvedUser {
            uid: *uid,
            gid: *gid,
            home: home_of(*uid).unwrap_or_else(|| "/".into()),
        }),
        User::Named(spec) => {
            let spec_trim = spec.trim();
            if spec_trim.is_empty() {
                return Ok(ResolvedUser {
                    uid: 0,
                    gid: 0,
                    home: home_of(0).unwrap_or_else(|| "/".into()),
                });
            }
            let (user_part, group_part) = match spec_trim.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (spec_trim, None),
            };
            if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
                return Err(UserError::Invalid { spec: spec.clone() });
            }
            let (uid, default_gid, home) = match user_part.parse::<u32>() {
                Ok(uid) => match passwd_entries(passwd).find(|e| e.uid == uid) {
                    Some(e) => (uid, e.gid, e.home.to_owned()),
                    None => (uid, 0, "/".to_owned()),
                },
                Err(_) => match passwd_entries(passwd).find(|e| e.name == user_part) {
                    Some(e) => (e.uid, e.gid, e.home.to_owned()),
                    None => {
                        return Err(UserError::UnknownUser {
                            name: user_part.to_owned(),
                        });
                    }
                },
            };
            let gid = match group_part {
                None => default_gid,
                Some(g) => match g.parse::<u32>() {
                    Ok(gid) => gid,
                    Err(_) => group_gid(group, g)
                        .ok_or_else(|| UserError::UnknownGroup { name: g.to_owned() })?,
                },
            };
            let home = if home.is_empty() { "/".into() } else { home };
            Ok(ResolvedUser { uid, gid, home })
        }
    }
}

/// Read `/etc/passwd` and `/etc/group` inside `rootfs` and resolve `user`.
pub(crate) fn resolve_in_rootfs(rootfs: &Path, user: &User) -> Result<ResolvedUser, UserError> {
    // Numeric ids with a gid need nothing from the image but HOME; still read passwd for it.
    let passwd = read_in_root(rootfs, "etc/passwd").map_err(|source| UserError::Read {
        file: "/etc/passwd",
        source,
    })?;
    let needs_group = matches!(user, User::Named(s) if s.split_once(':').is_some_and(|(_, g)| g.parse::<u32>().is_err()));
    let group = if needs_group {
        read_in_root(rootfs, "etc/group").map_err(|source| UserError::Read {
            file: "/etc/group",
            source,
        })?
    } else {
        String::new()
    };
    resolve(user, &passwd, &group)
}

/// Read a file of the image, resolving every path component inside `root` (symlinks included).
/// A missing file reads as empty.
fn read_in_root(root: &Path, path: &str) -> io::Result<String> {
    let dir = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // O_PATH first: opening is an action for some files (a FIFO blocks, a watchdog device
    // arms), and the image decides what /etc/passwd is. Only a regular file is then opened.
    let fd = match rustix::fs::openat2(
        &dir,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(String::new()),
        Err(e) => return Err(e.into()),
    };
    if rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode)
        != rustix::fs::FileType::RegularFile
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/{path} is not a regular file"),
        ));
    }
    let file = std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let mut bytes = Vec::new();
    file.take(MAX_ACCOUNT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_ACCOUNT_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/{path} is larger than {MAX_ACCOUNT_FILE_BYTES} bytes"),
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1003:1003:app user:/home/app:/bin/sh
broken line
nohome:x:2000:2001:::/bin/sh
";
    const GROUP: &str = "\
root:x:0:
staff:x:50:app
app:x:1003:
";

    fn named(s: &str) -> User {
        User::Named(s.into())
    }

    fn ok(uid: u32, gid: u32, home: &str) -> Result<ResolvedUser, UserError> {
        Ok(ResolvedUser {
            uid,
            gid,
            home: home.into(),
        })
    }

    fn check(user: User, expected: Result<ResolvedUser, UserError>) {
        let got = resolve(&user, PASSWD, GROUP);
        assert_eq!(format!("{got:?}"), format!("{expected:?}"), "{user:?}");
    }

    #[test]
    fn forms_of_user() {
        check(named("app"), ok(1003, 1003, "/home/app"));
        check(named("1003"), ok(1003, 1003, "/home/app"));
        check(named("4242"), ok(4242, 0, "/"));
        check(named("4242:77"), ok(4242, 77, "/"));
        check(named("app:staff"), ok(1003, 50, "/home/app"));
        check(named("app:0"), ok(1003, 0, "/home/app"));
        check(named("1003:staff"), ok(1003, 50, "/home/app"));
        check(named("root"), ok(0, 0, "/root"));
        check(named(""), ok(0, 0, "/root"));
        check(named("nohome"), ok(2000, 2001, "/"));
        check(User::Id { uid: 1, gid: 1 }, ok(1, 1, "/usr/sbin"));
        check(User::Id { uid: 5, gid: 6 }, ok(5, 6, "/"));
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let err = resolve(&named("ghost"), PASSWD, GROUP).unwrap_err();
        assert_eq!(
            err.to_string(),
            "user \"ghost\" not found in the image's /etc/passwd"
        );
        let err = resolve(&named("app:ghosts"), PASSWD, GROUP).unwrap_err();
        assert_eq!(
            err.to_string(),
            "group \"ghosts\" not found in the image's /etc/group"
        );
        assert!(matches!(
            resolve(&named("app:"), PASSWD, GROUP),
            Err(UserError::Invalid { .. })
        ));
        assert!(matches!(
            resolve(&named(":1"), PASSWD, GROUP),
            Err(UserError::Invalid { .. })
        ));
        // No passwd at all: names cannot resolve, numbers can.
        assert!(resolve(&named("app"), "", "").is_err());
        assert_eq!(resolve(&named("7:8"), "", "").unwrap().gid, 8);
    }

    #[test]
    fn reads_stay_inside_the_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // An absolute symlink: resolved inside the root, not on the host.
        let host_file = tmp.path().join("host-passwd");
        std::fs::write(&host_file, "evil:x:0:0::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(&host_file, root.join("etc/passwd")).unwrap();
        let err = resolve_in_rootfs(&root, &named("evil")).unwrap_err();
        assert!(matches!(err, UserError::UnknownUser { .. }), "{err:?}");

        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::fs::write(root.join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(root.join("etc/group"), GROUP).unwrap();
        assert_eq!(
            resolve_in_rootfs(&root, &named("app:staff")).unwrap(),
            ResolvedUser {
                uid: 1003,
                gid: 50,
                home: "/home/app".into()
            }
        );
        // No /etc at all.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(resolve_in_rootfs(&empty, &named("12")).unwrap().uid, 12);
    }
}
