//! The file-system side of unpacking: the [`LayerFs`] seam and its real implementation,
//! [`RootedFs`], which creates every entry relative to directory fds resolved inside the layer
//! root.
//!
//! How a hostile tar is kept inside the root:
//! - every parent directory is opened with `openat2(root, parent, RESOLVE_BENEATH |
//!   RESOLVE_NO_MAGICLINKS)`: the kernel refuses (`EXDEV`) any resolution that would leave the
//!   root, by `..` or by a symlink (absolute or relative) planted by an earlier entry. A relative
//!   symlink that stays inside the root is followed, as tar would;
//! - the final component is never followed: files are created `O_CREAT | O_EXCL | O_NOFOLLOW`
//!   after removing whatever was there, metadata is changed through the new fd or with
//!   `AT_SYMLINK_NOFOLLOW`, hard links are made with `linkat(.., 0)` (which links a symlink
//!   itself, not its target) from a target whose parent is also resolved beneath the root;
//! - only this thread writes to the layer's temporary directory while it is unpacked, so a name
//!   created by one syscall is still the same inode at the next (used once, for `chmod` of device
//!   nodes, which Linux cannot do without following).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::unpack::LayerPath;

/// The xattr that makes an overlayfs directory opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Xattrs an image may not set: they steer overlayfs itself (redirects, metacopy, opaque).
pub const RESERVED_XATTR_PREFIX: &str = "trusted.overlay.";
/// How often `openat2` is retried when the kernel asks (`EAGAIN`: a concurrent rename).
const OPENAT2_ATTEMPTS: usize = 4;

/// Ownership, permissions, modification time and xattrs of an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// `(name, value)`, from PAX `SCHILY.xattr.*` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Device nodes and fifos.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Char { major: u32, minor: u32 },
    Block { major: u32, minor: u32 },
    Fifo,
}

/// Why a file-system operation was refused or failed.
#[derive(Debug)]
pub enum FsError {
    /// Resolving the path would leave the layer root.
    Escape(String),
    Io(io::Error),
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        FsError::Io(e)
    }
}

impl From<Errno> for FsError {
    fn from(e: Errno) -> Self {
        FsError::Io(e.into())
    }
}

/// The operations unpacking needs, all on paths already normalised to stay inside the layer.
/// Later entries replace earlier ones at the same path, as with tar; parent directories that
/// the tar does not list are created with mode 0755.
pub trait LayerFs {
    /// Creates a directory (or updates an existing one); the root is allowed.
    fn dir(&mut self, path: &LayerPath, meta: &Meta) -> Result<(), FsError>;
    /// Creates a regular file with `content`; returns the bytes written.
    fn file(
        &mut self,
        path: &LayerPath,
        meta: &Meta,
        content: &mut dyn Read,
    ) -> Result<u64, FsError>;
    fn symlink(&mut self, path: &LayerPath, target: &[u8], meta: &Meta) -> Result<(), FsError>;
    /// Links `path` to the existing `target` (never following a symlink at `target`).
    fn hardlink(&mut self, path: &LayerPath, target: &LayerPath) -> Result<(), FsError>;
    fn node(&mut self, path: &LayerPath, kind: NodeKind, meta: &Meta) -> Result<(), FsError>;
    /// An overlayfs whiteout (character device 0:0) at `path`.
    fn whiteout(&mut self, path: &LayerPath) -> Result<(), FsError>;
    /// Marks `dir` opaque for overlayfs (`trusted.overlay.opaque=y`).
    fn opaque(&mut self, dir: &LayerPath) -> Result<(), FsError>;
    /// Called once after the last entry (directory mtimes are set here, after their contents).
    fn finish(&mut self) -> Result<(), FsError>;
}

/// [`LayerFs`] on the real file system, confined to one directory.
pub struct RootedFs {
    root: OwnedFd,
    /// Directories whose mtime is set in `finish`, once nothing more is created inside them.
    dir_times: Vec<(LayerPath, i64)>,
}

impl RootedFs {
    /// Opens `root` (which must be a directory, not a symlink).
    pub fn open(root: &Path) -> io::Result<RootedFs> {
        let root = rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        Ok(RootedFs {
            root,
            dir_times: Vec::new(),
        })
    }

    /// Opens directory `path` beneath the root, creating missing components (mode 0755) when
    /// `create` is set. The last component is followed only if `follow_last`.
    fn open_dir(
        &self,
        path: &LayerPath,
        create: bool,
        follow_last: bool,
    ) -> Result<OwnedFd, FsError> {
        if path.is_root() {
            return Ok(self.root.try_clone()?);
        }
        match self.openat2_dir(path.as_bytes(), follow_last) {
            Err(FsError::Io(e)) if create && e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        // Create what is missing, one component at a time, each resolved beneath the root.
        let mut parent = self.root.try_clone()?;
        let mut prefix = LayerPath::root();
        for component in path.components() {
            prefix = prefix.join(component);
            let fd = match self.openat2_dir(prefix.as_bytes(), true) {
                Ok(fd) => fd,
                Err(FsError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                    match rustix::fs::mkdirat(&parent, component, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    self.openat2_dir(prefix.as_bytes(), false)?
                }
                Err(e) => return Err(e),
            };
            parent = fd;
        }
        Ok(parent)
    }

    fn openat2_dir(&self, path: &[u8], follow_last: bool) -> Result<OwnedFd, FsError> {
        let mut flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        if !follow_last {
            flags |= OFlags::NOFOLLOW;
        }
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        let mut attempt = 0;
        loop {
            match rustix::fs::openat2(&self.root, path, flags, Mode::empty(), resolve) {
                Ok(fd) => return Ok(fd),
                Err(Errno::AGAIN) if attempt + 1 < OPENAT2_ATTEMPTS => attempt += 1,
                Err(Errno::XDEV) => {
                    return Err(FsError::Escape(
                        "it resolves outside the layer root (through .. or a symlink)".into(),
                    ));
                }
                Err(Errno::LOOP) if follow_last => {
                    return Err(FsError::Escape("it goes through a symlink loop".into()));
                }
                Err(Errno::NOSYS) => {
                    return Err(FsError::Io(io::Error::other(
                        "openat2 is not available (Linux 5.6 or later is required)",
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The parent directory of `path` (created if missing) and the final name.
    fn parent<'p>(&self, path: &'p LayerPath) -> Result<(OwnedFd, &'p [u8]), FsError> {
        let (parent, name) = path
            .split_last()
            .ok_or_else(|| FsError::Io(io::Error::other("the layer root cannot be replaced")))?;
        Ok((self.open_dir(&parent, true, true)?, name))
    }

    /// Removes what is at `parent/name`, unless it is a directory and `keep_dir`. Returns whether
    /// a directory was kept.
    fn clear(&self, parent: &OwnedFd, name: &[u8], keep_dir: bool) -> Result<bool, FsError> {
        let stat = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            if keep_dir {
                return Ok(true);
            }
            remove_all(parent, name)?;
        } else {
            rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
        }
        Ok(false)
    }
}

impl LayerFs for RootedFs {
    fn dir(&mut self, path: &LayerPath, meta: &Meta) -> Result<(), FsError> {
        let fd = if path.is_root() {
            self.root.try_clone()?
        } else {
            let (parent, name) = self.parent(path)?;
            if !self.clear(&parent, name, true)? {
                rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))?;
            }
            rustix::fs::openat(
                &parent,
                name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )?
        };
        apply_meta(&fd, meta)?;
        self.dir_times.push((path.clone(), meta.mtime));
        Ok(())
    }

    fn file(
        &mut self,
        path: &LayerPath,
        meta: &Meta,
        content: &mut dyn Read,
    ) -> Result<u64, FsError> {
        let (parent, name) = self.parent(path)?;
        self.clear(&parent, name, false)?;
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut file = File::from(fd);
        let written = io::copy(content, &mut file)?;
        apply_meta(&file, meta)?;
        rustix::fs::futimens(&file, &times(meta.mtime))?;
        Ok(written)
    }

    fn symlink(&mut self, path: &LayerPath, target: &[u8], meta: &Meta) -> Result<(), FsError> {
        let (parent, name) = self.parent(path)?;
        self.clear(&parent, name, false)?;
        rustix::fs::symlinkat(target, &parent, name)?;
        rustix::fs::chownat(
            &parent,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        rustix::fs::utimensat(&parent, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    fn hardlink(&mut self, path: &LayerPath, target: &LayerPath) -> Result<(), FsError> {
        if path == target {
            return Ok(());
        }
        let (target_parent, target_name) = target
            .split_last()
            .ok_or_else(|| FsError::Escape("it links to the layer root".into()))?;
        let target_parent = self.open_dir(&target_parent, false, true)?;
        let (parent, name) = self.parent(path)?;
        self.clear(&parent, name, false)?;
        rustix::fs::linkat(&target_parent, target_name, &parent, name, AtFlags::empty())?;
        Ok(())
    }

    fn node(&mut self, path: &LayerPath, kind: NodeKind, meta: &Meta) -> Result<(), FsError> {
        let (parent, name) = self.parent(path)?;
        self.clear(&parent, name, false)?;
        let (file_type, dev) = match kind {
            NodeKind::Char { major, minor } => {
                (FileType::CharacterDevice, rustix::fs::makedev(major, minor))
            }
            NodeKind::Block { major, minor } => {
                (FileType::BlockDevice, rustix::fs::makedev(major, minor))
            }
            NodeKind::Fifo => (FileType::Fifo, 0),
        };
        let mode = Mode::from_raw_mode(meta.mode & 0o7777);
        rustix::fs::mknodat(&parent, name, file_type, mode, dev)?;
        rustix::fs::chownat(
            &parent,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        // mknod applied the umask; the node was created by the call above in a directory only
        // this thread writes to, so following here cannot reach anything else.
        rustix::fs::chmodat(&parent, name, mode, AtFlags::empty())?;
        rustix::fs::utimensat(&parent, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    fn whiteout(&mut self, path: &LayerPath) -> Result<(), FsError> {
        let (parent, name) = self.parent(path)?;
        self.clear(&parent, name, false)?;
        rustix::fs::mknodat(
            &parent,
            name,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )?;
        Ok(())
    }

    fn opaque(&mut self, dir: &LayerPath) -> Result<(), FsError> {
        let fd = self.open_dir(dir, true, true)?;
        rustix::fs::fsetxattr(&fd, OPAQUE_XATTR, b"y", XattrFlags::empty())?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), FsError> {
        // Here, after the last entry, because creating entries in a directory changes its mtime.
        for (path, mtime) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            // A directory replaced by a later entry (a file, a symlink) has nothing to date; and
            // nothing is created here, so a path that no longer resolves beneath the root is moot.
            if let Ok(fd) = self.open_dir(&path, false, false) {
                rustix::fs::futimens(&fd, &times(mtime))?;
            }
        }
        Ok(())
    }
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Ownership, then mode (chown clears setuid bits), then xattrs (chown clears file
/// capabilities), through an fd that was opened without following symlinks.
fn apply_meta(fd: impl AsFd, meta: &Meta) -> Result<(), FsError> {
    rustix::fs::fchown(
        &fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode & 0o7777))?;
    for (name, value) in &meta.xattrs {
        if name.starts_with(RESERVED_XATTR_PREFIX) {
            tracing::warn!(xattr = %name, "ignoring an overlayfs xattr set by the image");
            continue;
        }
        match rustix::fs::fsetxattr(&fd, name.as_str(), value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(Errno::OPNOTSUPP) => {
                tracing::debug!(xattr = %name, "file system does not support this xattr");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `rm -r parent/name` without following symlinks.
fn remove_all(parent: &OwnedFd, name: &[u8]) -> Result<(), FsError> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    let mut entries = rustix::fs::Dir::read_from(&dir)?;
    let mut names = Vec::new();
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            names.push((child.to_vec(), entry.file_type()));
        }
    }
    for (child, file_type) in names {
        let is_dir = match file_type {
            FileType::Unknown => {
                rustix::fs::statat(&dir, child.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)?
            }
            t => t == FileType::Directory,
        };
        if is_dir {
            remove_all(&dir, &child)?;
        } else {
            rustix::fs::unlinkat(&dir, child.as_slice(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}
