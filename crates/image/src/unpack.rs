//! Turning a layer tar into an overlayfs lower directory.
//!
//! `tar` is used only as a parser, in raw mode: it hands us each header and its data, and we
//! apply GNU long names and PAX records ourselves. That is deliberate. In its normal mode `tar`
//! reads long-name and PAX entries into memory whatever their size; in raw mode we can refuse
//! one over [`MAX_TAR_METADATA_BYTES`] before reading it. We also refuse archives that parsers
//! could read differently (a PAX `size` that disagrees with the header, GNU sparse files).
//!
//! Each entry's path is normalised by [`LayerPath::parse`] (leading `./` stripped, absolute paths
//! and `..` refused), mapped by [`classify`] to a node, an overlayfs whiteout or an opaque
//! marker, and handed to a [`LayerFs`], which resolves it inside the layer root. Sizes and counts
//! are capped ([`UnpackLimits`]). The pure parts (normalisation, whiteout mapping, the entry
//! loop against a recording [`LayerFs`]) are unit-tested here; the real file system is exercised
//! by the crate's integration tests.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tar::EntryType;

use crate::digest::{Digest, HashingReader, is_limit_exceeded};
use crate::layer_fs::{FsError, LayerFs, Meta, NodeKind, RootedFs};
use crate::manifest::Compression;

/// Most bytes one layer may unpack to (file contents and tar metadata), to keep a small,
/// highly compressed layer from filling the disk.
pub const MAX_LAYER_UNPACKED_BYTES: u64 = 10 << 30;
/// Default cap on the unpacked size of one image, all its layers together
/// (`wharf serve --max-image-size`).
pub const MAX_IMAGE_UNPACKED_BYTES: u64 = 10 << 30;
/// Most tar entries one layer may have, to bound inode use and unpack time.
pub const MAX_LAYER_ENTRIES: u64 = 1_000_000;
/// Largest GNU long-name or PAX header entry; these are read into memory.
pub const MAX_TAR_METADATA_BYTES: u64 = 1 << 20;
/// Bytes of tar framing allowed per entry (header block and padding) on top of the content,
/// when bounding the whole uncompressed stream (trailing padding included).
const TAR_FRAMING_PER_ENTRY: u64 = 1024;
/// Prefix of overlayfs/AUFS whiteout names in layer tars.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The name that marks its directory opaque.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// AUFS metadata names (`.wh..wh.plnk`, `.wh..wh.aufs`), which are not whiteouts.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Caps on what one layer may unpack to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: MAX_LAYER_UNPACKED_BYTES,
            max_entries: MAX_LAYER_ENTRIES,
        }
    }
}

impl UnpackLimits {
    /// Bound on the uncompressed stream, so that trailing garbage cannot be drained forever.
    fn stream_limit(&self) -> u64 {
        self.max_bytes
            .saturating_add(self.max_entries.saturating_mul(TAR_FRAMING_PER_ENTRY))
            .saturating_add(MAX_TAR_METADATA_BYTES)
    }
}

/// The unpacked bytes one image may still use, shared by its layers' unpacks (which run in
/// parallel): each reserves its bytes before writing them.
#[derive(Debug)]
pub struct ImageBudget {
    used: AtomicU64,
    limit: u64,
}

impl ImageBudget {
    pub fn new(limit: u64) -> ImageBudget {
        ImageBudget {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Reserves `bytes`; fails once the image as a whole would exceed its limit.
    pub(crate) fn take(&self, bytes: u64) -> Result<(), UnpackError> {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit {
            return Err(UnpackError::ImageTooLarge { limit: self.limit });
        }
        Ok(())
    }
}

/// On an unpacked layer's directory: what the layer unpacked to, in bytes (decimal text). A
/// later pull of an image that shares the layer charges it to that image's [`ImageBudget`] from
/// this, without walking the directory.
pub const UNPACKED_BYTES_XATTR: &str = "user.wharf.unpacked-bytes";

/// Records `bytes` as what the layer in `dir` unpacked to ([`UNPACKED_BYTES_XATTR`]). Best
/// effort: on a file system without user xattrs the layer is simply not charged again later.
pub fn record_unpacked_bytes(dir: &Path, bytes: u64) {
    let value = bytes.to_string();
    if let Err(e) = rustix::fs::setxattr(
        dir,
        UNPACKED_BYTES_XATTR,
        value.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    ) {
        tracing::debug!(dir = %dir.display(), error = %e, "cannot record a layer's unpacked size");
    }
}

/// What the layer unpacked in `dir` unpacked to, if it was recorded.
pub fn recorded_unpacked_bytes(dir: &Path) -> Option<u64> {
    let mut buf = [0u8; 24];
    let n = rustix::fs::getxattr(dir, UNPACKED_BYTES_XATTR, &mut buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.parse().ok()
}

/// Charges the layer already unpacked in `dir` to `budget` (nothing if its size was never
/// recorded: a layer unpacked by an older Wharf).
pub fn charge_unpacked(dir: &Path, budget: &ImageBudget) -> Result<(), UnpackError> {
    match recorded_unpacked_bytes(dir) {
        Some(bytes) => budget.take(bytes),
        None => Ok(()),
    }
}

/// A path inside a layer: components joined by `/`, no `.`, `..` or empty components, never
/// absolute. The empty path is the layer root.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LayerPath(Vec<u8>);

/// Why an entry path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    Empty,
    Absolute,
    DotDot,
    Nul,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::Empty => "its path is empty",
            PathError::Absolute => "its path is absolute",
            PathError::DotDot => "its path has a .. component",
            PathError::Nul => "its path contains a NUL byte",
        })
    }
}

impl LayerPath {
    pub fn root() -> LayerPath {
        LayerPath(Vec::new())
    }

    /// Normalises a tar path: strips leading `./` (and `.` components and repeated or trailing
    /// slashes); refuses empty and absolute paths, `..` components and NUL bytes.
    pub fn parse(raw: &[u8]) -> Result<LayerPath, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.starts_with(b"/") {
            return Err(PathError::Absolute);
        }
        if raw.contains(&0) {
            return Err(PathError::Nul);
        }
        let mut out = LayerPath::root();
        for component in raw.split(|&b| b == b'/') {
            match component {
                b"" | b"." => {}
                b".." => return Err(PathError::DotDot),
                c => out = out.join(c),
            }
        }
        Ok(out)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }

    /// Appends one component (which must not contain `/`).
    pub fn join(&self, name: &[u8]) -> LayerPath {
        debug_assert!(!name.contains(&b'/') && !name.is_empty());
        let mut bytes = self.0.clone();
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        LayerPath(bytes)
    }

    /// The parent and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(LayerPath, &[u8])> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => (LayerPath(self.0[..i].to_vec()), &self.0[i + 1..]),
            None => (LayerPath::root(), &self.0[..]),
        })
    }
}

impl fmt::Display for LayerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str(".")
        } else {
            f.write_str(&String::from_utf8_lossy(&self.0))
        }
    }
}

impl fmt::Debug for LayerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LayerPath({self})")
    }
}

/// What an entry path stands for in an overlayfs layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A file, directory, link or device at this path (the root for `./`).
    Node(LayerPath),
    /// `dir/.wh.name`: `dir/name` is deleted; becomes a 0:0 character device named `name`.
    Whiteout(LayerPath),
    /// `dir/.wh..wh..opq`: `dir` hides the layers below; becomes `trusted.overlay.opaque=y`.
    Opaque(LayerPath),
    /// AUFS bookkeeping (`.wh..wh.plnk/…`), meaningless to overlayfs.
    Ignored,
}

/// Maps a normalised path to what it stands for (whiteouts per the OCI image layer spec).
pub fn classify(path: LayerPath) -> Result<Target, &'static str> {
    if path
        .components()
        .any(|c| c.starts_with(AUFS_META_PREFIX) && c != OPAQUE_MARKER)
    {
        return Ok(Target::Ignored);
    }
    let Some((parent, name)) = path.split_last() else {
        return Ok(Target::Node(path));
    };
    if name == OPAQUE_MARKER {
        return Ok(Target::Opaque(parent));
    }
    match name.strip_prefix(WHITEOUT_PREFIX) {
        Some(b"" | b"." | b"..") => Err("it is a whiteout that names no file"),
        Some(deleted) => Ok(Target::Whiteout(parent.join(deleted))),
        None => Ok(Target::Node(path)),
    }
}

/// What unpacking a layer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// Content bytes written plus tar metadata read.
    pub bytes: u64,
}

/// Why unpacking a layer failed; `store` adds the layer digest and image reference.
#[derive(Debug)]
pub enum UnpackError {
    Hostile {
        entry: String,
        reason: String,
    },
    TooLarge {
        what: &'static str,
        limit: u64,
        constant: &'static str,
    },
    Malformed {
        entry: Option<String>,
        reason: String,
    },
    Io {
        entry: String,
        source: io::Error,
    },
    DiffId {
        expected: Digest,
        actual: Digest,
    },
    /// The image's layers together unpack to more than its [`ImageBudget`].
    ImageTooLarge {
        limit: u64,
    },
    Local {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn too_large_bytes(limits: &UnpackLimits) -> UnpackError {
    UnpackError::TooLarge {
        what: "the unpacked size",
        limit: limits.max_bytes,
        constant: "MAX_LAYER_UNPACKED_BYTES",
    }
}

/// Unpacks the decompressed tar stream `blob` into the directory `dest`, then checks that the
/// stream's sha256 is `diff_id`.
pub fn unpack_layer(
    blob: &Path,
    compression: Compression,
    diff_id: &Digest,
    dest: &Path,
    limits: &UnpackLimits,
    budget: Option<&ImageBudget>,
) -> Result<UnpackStats, UnpackError> {
    let local = |action, path: &Path| {
        let path = path.to_owned();
        move |source| UnpackError::Local {
            action,
            path,
            source,
        }
    };
    let file = File::open(blob).map_err(local("open", blob))?;
    let buffered = BufReader::with_capacity(256 << 10, file);
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(local("decompress", blob))?,
        ),
    };
    let mut stream = HashingReader::new(decoded, limits.stream_limit());
    let mut fs = RootedFs::open(dest).map_err(local("open", dest))?;
    let stats = unpack_entries_within(&mut stream, &mut fs, limits, budget)?;
    stream.drain().map_err(|e| stream_error(e, limits, None))?;
    let (actual, _) = stream.finish();
    if actual != *diff_id {
        return Err(UnpackError::DiffId {
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(stats)
}

fn stream_error(e: io::Error, limits: &UnpackLimits, entry: Option<String>) -> UnpackError {
    if is_limit_exceeded(&e) {
        UnpackError::TooLarge {
            what: "the uncompressed tar stream",
            limit: limits.stream_limit(),
            constant: "MAX_LAYER_UNPACKED_BYTES",
        }
    } else {
        UnpackError::Malformed {
            entry,
            reason: e.to_string(),
        }
    }
}

/// Extended-header state carried from GNU long-name / PAX entries to the entry they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// The PAX records we honour.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn parse_pax(bytes: &[u8]) -> Result<Pax, String> {
    let mut pax = Pax::default();
    for record in tar::PaxExtensions::new(bytes) {
        let record = record.map_err(|e| format!("a PAX header is malformed: {e}"))?;
        let key = record
            .key()
            .map_err(|_| "a PAX key is not UTF-8".to_string())?;
        let value = record.value_bytes();
        let number = || -> Result<u64, String> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("PAX {key} is not a number"))
        };
        match key {
            "path" => pax.path = Some(value.to_vec()),
            "linkpath" => pax.linkpath = Some(value.to_vec()),
            "size" => pax.size = Some(number()?),
            "uid" => pax.uid = Some(number()?),
            "gid" => pax.gid = Some(number()?),
            "mtime" => {
                // Seconds with an optional fraction: keep the whole seconds.
                let text = std::str::from_utf8(value).map_err(|_| "PAX mtime is not UTF-8")?;
                let whole = text.split('.').next().unwrap_or_default();
                pax.mtime = Some(
                    whole
                        .parse()
                        .map_err(|_| format!("PAX mtime {text:?} is not a number"))?,
                );
            }
            k if k.starts_with("GNU.sparse.") => {
                return Err("GNU sparse files are not supported".into());
            }
            k if k.starts_with(PAX_XATTR_PREFIX) => {
                pax.xattrs
                    .push((k[PAX_XATTR_PREFIX.len()..].to_owned(), value.to_vec()));
            }
            _ => {}
        }
    }
    Ok(pax)
}

fn strip_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// Applies every entry of the tar stream `reader` to `fs`.
#[cfg(test)]
pub fn unpack_entries<R: Read>(
    reader: R,
    fs: &mut dyn LayerFs,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    unpack_entries_within(reader, fs, limits, None)
}

/// [`unpack_entries`], also charging every byte to the image's `budget`.
pub fn unpack_entries_within<R: Read>(
    reader: R,
    fs: &mut dyn LayerFs,
    limits: &UnpackLimits,
    budget: Option<&ImageBudget>,
) -> Result<UnpackStats, UnpackError> {
    let take = |bytes: u64| budget.map_or(Ok(()), |b| b.take(bytes));
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| stream_error(e, limits, None))?
        .raw(true);
    let mut stats = UnpackStats::default();
    let mut pending = Pending::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| stream_error(e, limits, None))?;
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(UnpackError::TooLarge {
                what: "the number of entries",
                limit: limits.max_entries,
                constant: "MAX_LAYER_ENTRIES",
            });
        }
        let entry_type = entry.header().entry_type();
        let is_extension = matches!(
            entry_type,
            EntryType::GNULongName
                | EntryType::GNULongLink
                | EntryType::XHeader
                | EntryType::XGlobalHeader
        );
        if is_extension {
            let size = entry.size();
            if size > MAX_TAR_METADATA_BYTES {
                return Err(UnpackError::TooLarge {
                    what: "a tar extended header (long name or PAX)",
                    limit: MAX_TAR_METADATA_BYTES,
                    constant: "MAX_TAR_METADATA_BYTES",
                });
            }
            stats.bytes += size;
            if stats.bytes > limits.max_bytes {
                return Err(too_large_bytes(limits));
            }
            take(size)?;
            let mut data = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut data)
                .map_err(|e| stream_error(e, limits, None))?;
            let slot = match entry_type {
                EntryType::GNULongName => &mut pending.long_name,
                EntryType::GNULongLink => &mut pending.long_link,
                EntryType::XHeader => &mut pending.pax,
                _ => continue, // global PAX headers: nothing we honour
            };
            if slot.is_some() {
                return Err(UnpackError::Malformed {
                    entry: None,
                    reason: "two extended headers of one kind describe the same entry".into(),
                });
            }
            *slot = Some(data);
            continue;
        }
        let extended = std::mem::take(&mut pending);
        let pax = match extended.pax.as_deref().map(parse_pax).transpose() {
            Ok(pax) => pax.unwrap_or_default(),
            Err(reason) => {
                return Err(UnpackError::Malformed {
                    entry: Some(String::from_utf8_lossy(&entry.header().path_bytes()).into()),
                    reason,
                });
            }
        };
        let raw_path = pax
            .path
            .clone()
            .or(extended.long_name.map(strip_nul))
            .unwrap_or_else(|| entry.header().path_bytes().into_owned());
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let hostile = |reason: String| UnpackError::Hostile {
            entry: name.clone(),
            reason,
        };
        let malformed = |reason: String| UnpackError::Malformed {
            entry: Some(name.clone()),
            reason,
        };
        if let Some(size) = pax.size.filter(|s| *s != entry.size()) {
            return Err(malformed(format!(
                "its PAX size ({size}) disagrees with its header ({}); parsers would read this \
                 archive differently",
                entry.size()
            )));
        }
        let path = LayerPath::parse(&raw_path).map_err(|e| hostile(e.to_string()))?;
        let target = classify(path).map_err(|r| hostile(r.to_owned()))?;
        let header = entry.header();
        let header_err = |e: io::Error| malformed(format!("its header is malformed: {e}"));
        let id = |v: u64| {
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| malformed(format!("its owner id {v} is out of range")))
        };
        let meta = Meta {
            mode: header.mode().map_err(header_err)? & 0o7777,
            uid: id(pax
                .uid
                .map_or_else(|| header.uid(), Ok)
                .map_err(header_err)?)?,
            gid: id(pax
                .gid
                .map_or_else(|| header.gid(), Ok)
                .map_err(header_err)?)?,
            mtime: match pax.mtime {
                Some(t) => t,
                None => i64::try_from(header.mtime().map_err(header_err)?).unwrap_or(i64::MAX),
            },
            xattrs: pax.xattrs,
        };
        let link_name = pax
            .linkpath
            .or(extended.long_link.map(strip_nul))
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let fs_err = |e: FsError| match e {
            FsError::Escape(reason) => UnpackError::Hostile {
                entry: name.clone(),
                reason,
            },
            FsError::Io(source) => UnpackError::Io {
                entry: name.clone(),
                source,
            },
        };
        let path = match target {
            Target::Ignored => continue,
            Target::Whiteout(path) => {
                fs.whiteout(&path).map_err(fs_err)?;
                continue;
            }
            Target::Opaque(dir) => {
                fs.opaque(&dir).map_err(fs_err)?;
                continue;
            }
            Target::Node(path) => path,
        };
        if path.is_root() && entry_type != EntryType::Directory {
            return Err(hostile(
                "it replaces the layer root with a non-directory".into(),
            ));
        }
        match entry_type {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                if stats.bytes.saturating_add(size) > limits.max_bytes {
                    return Err(too_large_bytes(limits));
                }
                take(size)?;
                let written = fs.file(&path, &meta, &mut entry).map_err(fs_err)?;
                stats.bytes += written;
            }
            EntryType::Directory => fs.dir(&path, &meta).map_err(fs_err)?,
            EntryType::Symlink => {
                let target = link_name
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| malformed("it is a symlink without a target".into()))?;
                if target.contains(&0) {
                    return Err(hostile("its symlink target contains a NUL byte".into()));
                }
                fs.symlink(&path, &target, &meta).map_err(fs_err)?;
            }
            EntryType::Link => {
                let raw = link_name
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| malformed("it is a hard link without a target".into()))?;
                let target = LayerPath::parse(&raw).map_err(|e| {
                    hostile(format!(
                        "its hard link target {:?} is refused: {e}",
                        String::from_utf8_lossy(&raw)
                    ))
                })?;
                if target.is_root() {
                    return Err(hostile("it is a hard link to the layer root".into()));
                }
                fs.hardlink(&path, &target).map_err(fs_err)?;
            }
            EntryType::Char | EntryType::Block => {
                let major = header.device_major().map_err(header_err)?;
                let minor = header.device_minor().map_err(header_err)?;
                let (Some(major), Some(minor)) = (major, minor) else {
                    return Err(malformed("it is a device without numbers".into()));
                };
                let kind = if entry_type == EntryType::Char {
                    NodeKind::Char { major, minor }
                } else {
                    NodeKind::Block { major, minor }
                };
                fs.node(&path, kind, &meta).map_err(fs_err)?;
            }
            EntryType::Fifo => fs.node(&path, NodeKind::Fifo, &meta).map_err(fs_err)?,
            EntryType::GNUSparse => {
                return Err(malformed("GNU sparse files are not supported".into()));
            }
            other => {
                tracing::warn!(entry = %name, entry_type = ?other, "skipping a tar entry of unknown type");
            }
        }
    }
    if pending.long_name.is_some() || pending.long_link.is_some() || pending.pax.is_some() {
        return Err(UnpackError::Malformed {
            entry: None,
            reason: "the archive ends with an extended header that describes no entry".into(),
        });
    }
    fs.finish().map_err(|e| match e {
        FsError::Escape(reason) => UnpackError::Hostile {
            entry: ".".into(),
            reason,
        },
        FsError::Io(source) => UnpackError::Io {
            entry: ".".into(),
            source,
        },
    })?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Records what unpacking asked of the file system.
    #[derive(Default)]
    struct Recorder {
        ops: Vec<String>,
    }

    impl LayerFs for Recorder {
        fn dir(&mut self, path: &LayerPath, meta: &Meta) -> Result<(), FsError> {
            self.ops.push(format!(
                "dir {path} {:o} {}:{}",
                meta.mode, meta.uid, meta.gid
            ));
            Ok(())
        }
        fn file(
            &mut self,
            path: &LayerPath,
            meta: &Meta,
            content: &mut dyn Read,
        ) -> Result<u64, FsError> {
            let mut s = String::new();
            content.read_to_string(&mut s)?;
            self.ops.push(format!("file {path} {:o} {s:?}", meta.mode));
            Ok(s.len() as u64)
        }
        fn symlink(&mut self, path: &LayerPath, target: &[u8], _: &Meta) -> Result<(), FsError> {
            self.ops.push(format!(
                "symlink {path} -> {}",
                String::from_utf8_lossy(target)
            ));
            Ok(())
        }
        fn hardlink(&mut self, path: &LayerPath, target: &LayerPath) -> Result<(), FsError> {
            self.ops.push(format!("hardlink {path} -> {target}"));
            Ok(())
        }
        fn node(&mut self, path: &LayerPath, kind: NodeKind, _: &Meta) -> Result<(), FsError> {
            self.ops.push(format!("node {path} {kind:?}"));
            Ok(())
        }
        fn whiteout(&mut self, path: &LayerPath) -> Result<(), FsError> {
            self.ops.push(format!("whiteout {path}"));
            Ok(())
        }
        fn opaque(&mut self, dir: &LayerPath) -> Result<(), FsError> {
            self.ops.push(format!("opaque {dir}"));
            Ok(())
        }
        fn finish(&mut self) -> Result<(), FsError> {
            self.ops.push("finish".into());
            Ok(())
        }
    }

    /// A tar entry with the name written raw into the header (no validation by `tar`).
    fn raw_entry(
        b: &mut tar::Builder<Vec<u8>>,
        kind: EntryType,
        name: &[u8],
        link: &[u8],
        data: &[u8],
        mode: u32,
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_device_major(0).unwrap();
        h.set_device_minor(0).unwrap();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn run(
        build: impl FnOnce(&mut tar::Builder<Vec<u8>>),
        limits: UnpackLimits,
    ) -> (Result<UnpackStats, UnpackError>, Vec<String>) {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let bytes = b.into_inner().unwrap();
        let mut rec = Recorder::default();
        let result = unpack_entries(&bytes[..], &mut rec, &limits);
        (result, rec.ops)
    }

    #[test]
    fn normalises_paths() {
        let p = |s: &[u8]| LayerPath::parse(s).map(|p| p.to_string());
        assert_eq!(p(b"./etc/passwd"), Ok("etc/passwd".into()));
        assert_eq!(p(b"././a//b/./c/"), Ok("a/b/c".into()));
        assert_eq!(p(b"./"), Ok(".".into()));
        assert_eq!(p(b"."), Ok(".".into()));
        assert_eq!(p(b"/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(p(b"../x"), Err(PathError::DotDot));
        assert_eq!(p(b"a/../../x"), Err(PathError::DotDot));
        assert_eq!(p(b"a/.."), Err(PathError::DotDot));
        assert_eq!(p(b""), Err(PathError::Empty));
        assert_eq!(p(b"a\0b"), Err(PathError::Nul));
        assert_eq!(p(b"..a/b.."), Ok("..a/b..".into()));
    }

    #[test]
    fn maps_whiteouts() {
        let c = |s: &[u8]| classify(LayerPath::parse(s).unwrap());
        let path = |s: &str| LayerPath::parse(s.as_bytes()).unwrap();
        assert_eq!(
            c(b"etc/.wh.passwd"),
            Ok(Target::Whiteout(path("etc/passwd")))
        );
        assert_eq!(c(b".wh.tmp"), Ok(Target::Whiteout(path("tmp"))));
        assert_eq!(c(b"./usr/.wh..wh..opq"), Ok(Target::Opaque(path("usr"))));
        assert_eq!(c(b".wh..wh..opq"), Ok(Target::Opaque(LayerPath::root())));
        assert_eq!(c(b".wh..wh.plnk/123.456"), Ok(Target::Ignored));
        assert_eq!(c(b"a/.wh..wh.aufs"), Ok(Target::Ignored));
        assert_eq!(c(b"a/.wh."), Err("it is a whiteout that names no file"));
        assert_eq!(c(b"a/.wh..."), Err("it is a whiteout that names no file"));
        assert_eq!(c(b"a/b.wh.c"), Ok(Target::Node(path("a/b.wh.c"))));
        assert_eq!(c(b"./"), Ok(Target::Node(LayerPath::root())));
    }

    #[test]
    fn applies_entries_in_order() {
        let (result, ops) = run(
            |b| {
                raw_entry(b, EntryType::Directory, b"./", b"", b"", 0o755);
                raw_entry(b, EntryType::Directory, b"./etc/", b"", b"", 0o755);
                raw_entry(b, EntryType::Regular, b"./etc/motd", b"", b"hi", 0o4644);
                raw_entry(
                    b,
                    EntryType::Symlink,
                    b"./etc/link",
                    b"/etc/motd",
                    b"",
                    0o777,
                );
                raw_entry(b, EntryType::Link, b"./etc/hard", b"./etc/motd", b"", 0o644);
                raw_entry(b, EntryType::Char, b"dev/null", b"", b"", 0o666);
                raw_entry(b, EntryType::Fifo, b"run/fifo", b"", b"", 0o600);
                raw_entry(b, EntryType::Regular, b"etc/.wh.shadow", b"", b"", 0o600);
                raw_entry(b, EntryType::Regular, b"usr/.wh..wh..opq", b"", b"", 0o600);
                raw_entry(b, EntryType::Regular, b".wh..wh.plnk/1", b"", b"", 0o600);
            },
            UnpackLimits::default(),
        );
        let stats = result.unwrap();
        assert_eq!(stats.entries, 10);
        assert_eq!(stats.bytes, 2);
        assert_eq!(
            ops,
            [
                "dir . 755 0:0",
                "dir etc 755 0:0",
                "file etc/motd 4644 \"hi\"",
                "symlink etc/link -> /etc/motd",
                "hardlink etc/hard -> etc/motd",
                "node dev/null Char { major: 0, minor: 0 }",
                "node run/fifo Fifo",
                "whiteout etc/shadow",
                "opaque usr",
                "finish",
            ]
        );
    }

    #[test]
    fn honours_gnu_long_names_and_pax() {
        let long = format!("{}/file", "d".repeat(150));
        let (result, ops) = run(
            |b| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(EntryType::Regular);
                h.set_size(1);
                h.set_mode(0o600);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                b.append_data(&mut h, &long, &b"x"[..]).unwrap();
                b.append_pax_extensions([
                    ("path", &b"pax/name"[..]),
                    ("SCHILY.xattr.user.k", b"v"),
                ])
                .unwrap();
                raw_entry(b, EntryType::Regular, b"ignored", b"", b"y", 0o600);
            },
            UnpackLimits::default(),
        );
        result.unwrap();
        assert_eq!(ops[0], format!("file {long} 600 \"x\""));
        assert_eq!(ops[1], "file pax/name 600 \"y\"");
    }

    #[test]
    fn refuses_hostile_paths_before_touching_the_file_system() {
        let cases: [(&[u8], EntryType, &[u8], &str); 5] = [
            (b"../evil", EntryType::Regular, b"", "has a .. component"),
            (b"/etc/passwd", EntryType::Regular, b"", "is absolute"),
            (
                b"a/../../evil",
                EntryType::Directory,
                b"",
                "has a .. component",
            ),
            (
                b"link",
                EntryType::Link,
                b"../../etc/shadow",
                "hard link target",
            ),
            (b"link", EntryType::Link, b"/etc/shadow", "hard link target"),
        ];
        for (name, kind, link, needle) in cases {
            let (result, ops) = run(
                |b| raw_entry(b, kind, name, link, b"", 0o644),
                UnpackLimits::default(),
            );
            match result {
                Err(UnpackError::Hostile { entry, reason }) => {
                    assert_eq!(entry.as_bytes(), name);
                    assert!(reason.contains(needle), "{reason}");
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(name)),
            }
            assert!(ops.is_empty(), "{ops:?}");
        }
        let (result, _) = run(
            |b| raw_entry(b, EntryType::Regular, b"./", b"", b"", 0o644),
            UnpackLimits::default(),
        );
        assert!(
            matches!(result, Err(UnpackError::Hostile { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn caps_entries_and_bytes() {
        let small = UnpackLimits {
            max_bytes: 10,
            max_entries: 2,
        };
        let (result, _) = run(
            |b| {
                for name in [&b"a"[..], b"b", b"c"] {
                    raw_entry(b, EntryType::Directory, name, b"", b"", 0o755);
                }
            },
            small,
        );
        assert!(
            matches!(
                result,
                Err(UnpackError::TooLarge {
                    constant: "MAX_LAYER_ENTRIES",
                    limit: 2,
                    ..
                })
            ),
            "{result:?}"
        );
        let (result, ops) = run(
            |b| {
                raw_entry(b, EntryType::Regular, b"a", b"", b"123456", 0o644);
                raw_entry(b, EntryType::Regular, b"b", b"", b"123456", 0o644);
            },
            small,
        );
        assert!(
            matches!(
                result,
                Err(UnpackError::TooLarge {
                    constant: "MAX_LAYER_UNPACKED_BYTES",
                    limit: 10,
                    ..
                })
            ),
            "{result:?}"
        );
        assert_eq!(ops.len(), 1, "the second file must not be written: {ops:?}");
    }

    #[test]
    fn one_budget_caps_the_layers_of_an_image_together() {
        let budget = ImageBudget::new(10);
        let layer = |name: &[u8]| {
            let mut b = tar::Builder::new(Vec::new());
            raw_entry(&mut b, EntryType::Regular, name, b"", b"123456", 0o644);
            b.into_inner().unwrap()
        };
        let limits = UnpackLimits::default();
        let mut first = Recorder::default();
        unpack_entries_within(&layer(b"a")[..], &mut first, &limits, Some(&budget)).unwrap();
        let mut second = Recorder::default();
        let result = unpack_entries_within(&layer(b"b")[..], &mut second, &limits, Some(&budget));
        assert!(
            matches!(result, Err(UnpackError::ImageTooLarge { limit: 10 })),
            "{result:?}"
        );
        assert!(second.ops.is_empty(), "nothing written over the budget");
    }

    #[test]
    fn refuses_parser_differentials() {
        let (result, _) = run(
            |b| {
                b.append_pax_extensions([("size", &b"5"[..])]).unwrap();
                raw_entry(b, EntryType::Regular, b"f", b"", b"123", 0o644);
            },
            UnpackLimits::default(),
        );
        assert!(
            matches!(&result, Err(UnpackError::Malformed { reason, .. }) if reason.contains("PAX size")),
            "{result:?}"
        );
        let (result, _) = run(
            |b| b.append_pax_extensions([("path", &b"x"[..])]).unwrap(),
            UnpackLimits::default(),
        );
        assert!(
            matches!(&result, Err(UnpackError::Malformed { reason, .. }) if reason.contains("describes no entry")),
            "{result:?}"
        );
    }

    proptest! {
        #[test]
        fn normalised_paths_never_escape(raw in proptest::collection::vec(
            prop_oneof![Just(&b".."[..]), Just(&b"."[..]), Just(&b""[..]), Just(&b"a"[..]), Just(&b".wh.x"[..]), Just(&b".wh..wh..opq"[..])],
            0..8,
        ), absolute in any::<bool>()) {
            let mut bytes = raw.join(&b'/');
            if absolute { bytes.insert(0, b'/'); }
            match LayerPath::parse(&bytes) {
                Ok(p) => {
                    prop_assert!(!bytes.starts_with(b"/"));
                    prop_assert!(!p.as_bytes().starts_with(b"/"));
                    prop_assert!(p.components().all(|c| c != b".." && c != b"." && !c.is_empty()));
                    prop_assert!(!raw.contains(&&b".."[..]));
                    if let Ok(Target::Whiteout(t) | Target::Opaque(t) | Target::Node(t)) = classify(p) {
                        prop_assert!(t.components().all(|c| c != b".." && c != b"."));
                    }
                }
                Err(e) => prop_assert!(
                    bytes.starts_with(b"/") || bytes.split(|&b| b == b'/').any(|c| c == b"..") || bytes.is_empty(),
                    "{e}"
                ),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_entry_loop(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut rec = Recorder::default();
            let _ = unpack_entries(&bytes[..], &mut rec, &UnpackLimits::default());
        }
    }
}
