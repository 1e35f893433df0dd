//! Pulling images from archives on the daemon's machine: OCI image layouts (`oci-archive:` in a
//! tar, `oci:` a directory) and Docker archives (`docker-archive:`, what `docker save` and
//! `podman save` write). The forms are parsed in `crate::source`.
//!
//! The guarantees are a registry pull's: linux/amd64 is chosen from an index, every blob is
//! checked against its digest and size while it is copied into `blobs/` (through `tmp/`), each
//! layer is unpacked by the same unpacker into `layers/<diff id>/` (shared with registry images)
//! and checked against the config's diff id, and the manifests go into `blobs/` last, so that
//! [`ImageStore::get`] finds the image offline exactly as it finds a registry image.
//!
//! **Member names are hostile.** A tar is never extracted: its headers are read once into a
//! table of contents (name → offset and size; long names and PAX paths honoured, capped), and
//! only the members the layout or `manifest.json` names are read, by offset. Links between
//! members (`docker save` links identical layers) are followed inside the table only. In an
//! `oci:` directory every file is opened with `openat2(RESOLVE_BENEATH)` relative to the
//! directory, must be a regular file, and is opened non-blocking (a FIFO cannot hang a pull).
//!
//! **Pinning.** An archive image is pinned as `TRANSPORT:PATH@sha256:…`: the digest of its
//! manifest (or of the index chosen in `index.json`). A Docker archive has no manifest, so
//! Wharf writes a Docker v2 manifest for it (config and layer blobs as found, uncompressed layers
//! as `…rootfs.diff.tar`) and pins that. A later pull of the pinned form (a cold start whose
//! layers were removed) reads that digest from the archive, whatever its tags say by then, and
//! fails with a clear error if the archive no longer has it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{
    ImageStore, MAX_CONCURRENT_LAYER_PULLS, MAX_CONFIG_BYTES, MAX_LAYERS_PER_IMAGE,
    descriptor_size, image_too_large, layer_too_large, parse_config, parse_digest, parse_document,
    unpack_error,
};
use crate::blobs::WriteError;
use crate::digest::Digest;
use crate::error::{ImageError, ImageErrorKind, human_bytes};
use crate::manifest::{
    self, Compression, ConfigFile, DOCKER_CONFIG, DOCKER_MANIFEST, Descriptor, Document, Index,
    Manifest, OCI_CONFIG, Platform,
};
use crate::platform::{TARGET_ARCHITECTURE, TARGET_OS, select_platform};
use crate::registry::MAX_MANIFEST_BYTES;
use crate::source::{ArchiveReference, ArchiveTransport};
use crate::unpack::{
    ImageBudget, MAX_TAR_METADATA_BYTES, UnpackError, charge_unpacked, record_unpacked_bytes,
    unpack_layer,
};
use crate::{Image, source};

/// Most members (files, links, directories) an archive may have: `docker save` of a
/// 128-layer image has a few hundred.
pub const MAX_ARCHIVE_MEMBERS: usize = 100_000;
/// Largest `index.json`, `manifest.json` or `oci-layout` read from an archive.
const MAX_TOC_BYTES: u64 = MAX_MANIFEST_BYTES;
/// Links followed from one member name to the file it stands for.
const MAX_LINK_HOPS: usize = 8;
/// The annotation `oci:PATH:NAME` selects by (skopeo's).
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Parses an archive form; `Ok(None)` for anything else (a registry reference).
pub(super) fn parse(input: &str) -> Result<Option<ArchiveReference>, ImageError> {
    source::parse_archive(input).map_err(|reason| ImageError::InvalidReference {
        reference: input.to_owned(),
        reason,
    })
}

fn fail(src: &ArchiveReference, kind: ImageErrorKind, reason: impl Into<String>) -> ImageError {
    ImageError::Archive {
        reference: src.to_string(),
        kind,
        reason: reason.into(),
    }
}

/// The registry wording of a corrupt blob ("push the image again") does not fit an archive.
fn archive_wording(e: ImageError) -> ImageError {
    match e {
        ImageError::Corrupt {
            reference,
            digest,
            reason,
        } => ImageError::Archive {
            reference,
            kind: ImageErrorKind::Corrupt,
            reason: format!(
                "blob {digest} is corrupt: {reason} (the archive is damaged or was modified; \
                 export the image again)"
            ),
        },
        e => e,
    }
}

fn corrupt(src: &ArchiveReference, digest: &Digest, reason: String) -> ImageError {
    archive_wording(ImageError::Corrupt {
        reference: src.to_string(),
        digest: digest.to_string(),
        reason,
    })
}

/// One entry of the table of contents of a tar.
#[derive(Debug)]
enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// A symlink or hard link to another member (resolved to an archive-root path).
    Link(String),
    /// The name occurs more than once; reading it is refused rather than guessed.
    Duplicate,
}

/// An archive opened for reading members by name.
enum Container {
    Dir(OwnedFd),
    Tar {
        file: Arc<File>,
        members: HashMap<String, Member>,
    },
}

/// A member's bytes: `len` bytes of a file from `pos`, read with `pread` (so several layers of
/// one archive are read at once).
struct Slice {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a member",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

type MemberReader = (Box<dyn Read + Send>, u64);

impl Container {
    fn open(src: &ArchiveReference) -> Result<Container, ImageError> {
        let path = &src.path;
        let not_found = |what: &str| {
            fail(
                src,
                ImageErrorKind::NotFound,
                format!(
                    "{what} {} does not exist on the machine Wharf runs on{}",
                    path.display(),
                    if src.digest.is_some() {
                        " (it was removed after the function was deployed: put it back, or \
                         deploy the function again)"
                    } else {
                        ""
                    }
                ),
            )
        };
        match src.transport {
            ArchiveTransport::OciDir => {
                let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
                match rustix::fs::open(path, flags, Mode::empty()) {
                    Ok(fd) => Ok(Container::Dir(fd)),
                    Err(Errno::NOENT) => Err(not_found("directory")),
                    Err(Errno::NOTDIR) => Err(fail(
                        src,
                        ImageErrorKind::InvalidReference,
                        format!(
                            "{} is not a directory (for an OCI layout in a tar, use \
                             oci-archive:{})",
                            path.display(),
                            path.display()
                        ),
                    )),
                    Err(e) => Err(ImageError::io("open", path, e.into())),
                }
            }
            ArchiveTransport::OciArchive | ArchiveTransport::DockerArchive => {
                let meta = match std::fs::metadata(path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(not_found("archive"));
                    }
                    Err(e) => return Err(ImageError::io("inspect", path, e)),
                };
                if meta.is_dir() {
                    return Err(fail(
                        src,
                        ImageErrorKind::InvalidReference,
                        format!(
                            "{} is a directory, not an archive (for an OCI image layout \
                             directory, use oci:{})",
                            path.display(),
                            path.display()
                        ),
                    ));
                }
                if !meta.is_file() {
                    return Err(fail(
                        src,
                        ImageErrorKind::InvalidReference,
                        format!("{} is not a regular file", path.display()),
                    ));
                }
                let file = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
                let members = table_of_contents(&file).map_err(|reason| {
                    fail(
                        src,
                        ImageErrorKind::InvalidReference,
                        format!("{} is not a usable tar archive: {reason}", path.display()),
                    )
                })?;
                Ok(Container::Tar {
                    file: Arc::new(file),
                    members,
                })
            }
        }
    }

    /// Opens the member `name` (a path relative to the archive root, built by us); `None` if
    /// there is none. The error is the reason.
    fn member(&self, name: &str) -> Result<Option<MemberReader>, String> {
        match self {
            Container::Dir(dir) => {
                let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
                let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
                let fd = match rustix::fs::openat2(dir, name, flags, Mode::empty(), resolve) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) => return Ok(None),
                    Err(Errno::XDEV) => {
                        return Err(format!(
                            "{name} resolves outside the layout directory (through .. or a \
                             symlink)"
                        ));
                    }
                    Err(e) => return Err(format!("cannot open {name}: {e}")),
                };
                let file = File::from(fd);
                let meta = file
                    .metadata()
                    .map_err(|e| format!("cannot inspect {name}: {e}"))?;
                if !meta.is_file() {
                    return Err(format!("{name} is not a regular file"));
                }
                let size = meta.len();
                Ok(Some((
                    Box::new(Slice {
                        file: Arc::new(file),
                        pos: 0,
                        end: size,
                    }),
                    size,
                )))
            }
            Container::Tar { file, members } => {
                let mut name = name.to_owned();
                for _ in 0..=MAX_LINK_HOPS {
                    match members.get(&name) {
                        None => return Ok(None),
                        Some(Member::Duplicate) => {
                            return Err(format!(
                                "the archive has more than one member named {name}"
                            ));
                        }
                        Some(Member::Link(target)) => name = target.clone(),
                        Some(Member::File { offset, size }) => {
                            return Ok(Some((
                                Box::new(Slice {
                                    file: file.clone(),
                                    pos: *offset,
                                    end: offset + size,
                                }),
                                *size,
                            )));
                        }
                    }
                }
                Err(format!(
                    "{name} is a chain of more than {MAX_LINK_HOPS} links"
                ))
            }
        }
    }
}

/// Reads the headers of a tar into name → member, without extracting anything.
fn table_of_contents(file: &File) -> Result<HashMap<String, Member>, String> {
    use tar::EntryType;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| e.to_string())?
        .raw(true);
    let mut members = HashMap::new();
    let mut count = 0usize;
    let mut long_name: Option<Vec<u8>> = None;
    let mut pax_path: Option<Vec<u8>> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| e.to_string())?;
        count += 1;
        if count > MAX_ARCHIVE_MEMBERS {
            return Err(format!(
                "it has more than {MAX_ARCHIVE_MEMBERS} members (MAX_ARCHIVE_MEMBERS)"
            ));
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::GNULongName => {
                long_name = Some(read_metadata(&mut entry)?);
                continue;
            }
            EntryType::XHeader => {
                let data = read_metadata(&mut entry)?;
                for record in tar::PaxExtensions::new(&data).flatten() {
                    if record.key() == Ok("path") {
                        pax_path = Some(record.value_bytes().to_vec());
                    }
                }
                continue;
            }
            EntryType::XGlobalHeader | EntryType::GNULongLink => continue,
            _ => {}
        }
        let raw = match pax_path.take().or(long_name.take()) {
            Some(name) => name,
            None => entry.path_bytes().into_owned(),
        };
        let Some(name) = normalise(&raw, "") else {
            continue; // never asked for: not UTF-8, or outside the archive root
        };
        let member = match kind {
            EntryType::Regular | EntryType::Continuous => {
                let (offset, size) = (entry.raw_file_position(), entry.size());
                if offset.checked_add(size).is_none_or(|end| end > len) {
                    return Err(format!(
                        "member {name} runs past the end of the file (it is truncated)"
                    ));
                }
                Member::File { offset, size }
            }
            EntryType::Symlink | EntryType::Link => {
                let Some(target) = entry.link_name_bytes() else {
                    continue;
                };
                let base = match (kind, name.rsplit_once('/')) {
                    (EntryType::Symlink, Some((parent, _))) => parent.to_owned(),
                    _ => String::new(),
                };
                if target.starts_with(b"/") {
                    continue;
                }
                match normalise(&target, &base) {
                    Some(target) => Member::Link(target),
                    None => continue,
                }
            }
            _ => continue,
        };
        members
            .entry(name)
            .and_modify(|m| *m = Member::Duplicate)
            .or_insert(member);
    }
    Ok(members)
}

fn read_metadata(entry: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    entry
        .take(MAX_TAR_METADATA_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    if data.len() as u64 > MAX_TAR_METADATA_BYTES {
        return Err(format!(
            "a long-name or PAX header is larger than {} (MAX_TAR_METADATA_BYTES)",
            human_bytes(MAX_TAR_METADATA_BYTES)
        ));
    }
    while data.last() == Some(&0) {
        data.pop();
    }
    Ok(data)
}

/// `raw` (relative to `base`) as `a/b/c`: `.` and empty components dropped, `..` applied;
/// `None` if it is not UTF-8, leaves the root or is empty.
fn normalise(raw: &[u8], base: &str) -> Option<String> {
    let raw = std::str::from_utf8(raw).ok()?;
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Reads a small member whole (`index.json`, a manifest, a config); `None` if absent.
fn read_small(
    c: &Container,
    src: &ArchiveReference,
    name: &str,
    limit: u64,
    constant: &'static str,
) -> Result<Option<Vec<u8>>, ImageError> {
    let Some((reader, size)) = c
        .member(name)
        .map_err(|reason| fail(src, ImageErrorKind::Corrupt, reason))?
    else {
        return Ok(None);
    };
    if size > limit {
        return Err(ImageError::TooLarge {
            subject: format!("{name} of image {src}"),
            what: "the size",
            limit: human_bytes(limit),
            constant,
            hint: "this is not a normal image archive",
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    reader
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(src, ImageErrorKind::Io, format!("cannot read {name}: {e}")))?;
    Ok(Some(bytes))
}

/// Reads the blob `digest`, checking its size (when a descriptor gives one) and digest.
fn read_blob(
    c: &Container,
    src: &ArchiveReference,
    digest: &Digest,
    size: Option<u64>,
    limit: u64,
    constant: &'static str,
) -> Result<Option<Vec<u8>>, ImageError> {
    let Some(bytes) = read_small(c, src, &blob_name(digest), limit, constant)? else {
        return Ok(None);
    };
    if let Some(size) = size.filter(|s| *s != bytes.len() as u64) {
        return Err(corrupt(
            src,
            digest,
            format!("it is {} bytes, its descriptor says {size}", bytes.len()),
        ));
    }
    let actual = Digest::of(&bytes);
    if actual != *digest {
        return Err(corrupt(
            src,
            digest,
            format!("its content has digest {actual}"),
        ));
    }
    Ok(Some(bytes))
}

fn missing_blob(src: &ArchiveReference, digest: &Digest) -> ImageError {
    fail(
        src,
        ImageErrorKind::Corrupt,
        format!(
            "the archive has no blob {digest}, which the image needs (export the image again \
             with all its blobs)"
        ),
    )
}

/// `index.json` of an OCI layout: entries with their annotations.
#[derive(Debug, Deserialize)]
struct LayoutIndex {
    #[serde(default)]
    manifests: Vec<LayoutEntry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

impl LayoutEntry {
    fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            platform: self.platform.clone(),
            urls: Vec::new(),
        }
    }
}

/// One image of `manifest.json` in a Docker archive.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// A layer to bring in from the archive.
struct ArchiveLayer {
    member: String,
    /// From the manifest (OCI); a Docker archive's layers are identified by diff id only.
    digest: Option<Digest>,
    size: Option<u64>,
    compression: Option<Compression>,
    diff_id: Digest,
}

/// A layer brought in: its directory and the blob it came from.
struct LayerDone {
    dir: PathBuf,
    digest: Digest,
    size: u64,
    compression: Compression,
}

/// What an archive resolves to before its layers are brought in.
struct Plan {
    /// The pinned digest; for a Docker archive known only once the layers are hashed.
    top: Option<Digest>,
    manifests: Vec<(Digest, Vec<u8>)>,
    config_digest: Digest,
    config_bytes: Vec<u8>,
    config: ConfigFile,
    layers: Vec<ArchiveLayer>,
}

async fn blocking<T, F>(f: F) -> Result<T, ImageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ImageError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => Err(ImageError::io(
            "read an image archive in",
            PathBuf::new(),
            io::Error::other(join),
        )),
    }
}

impl ImageStore {
    pub(super) async fn pull_archive(&self, src: ArchiveReference) -> Result<Image, ImageError> {
        let started = Instant::now();
        let src = Arc::new(src);
        let (container, plan, stored) = {
            let (store, src) = (self.clone(), src.clone());
            blocking(move || {
                let c = Container::open(&src)?;
                let plan = match src.transport {
                    ArchiveTransport::DockerArchive => store.plan_docker(&c, &src)?,
                    _ => plan_oci(&c, &src)?,
                };
                // What the layers take in the archive (a Docker archive's by member size).
                let stored: u64 = plan
                    .layers
                    .iter()
                    .map(|l| match l.size {
                        Some(size) => size,
                        None => c
                            .member(&l.member)
                            .ok()
                            .flatten()
                            .map_or(0, |(_, size)| size),
                    })
                    .sum();
                Ok((Arc::new(c), plan, stored))
            })
            .await?
        };
        let max_image_bytes = self.max_image_bytes();
        // Layers unpack to at least what they take compressed: refuse before copying any when
        // these alone are over the cap.
        if stored > max_image_bytes {
            return Err(image_too_large(
                &src,
                None,
                "the compressed size",
                max_image_bytes,
            ));
        }
        // One budget for the image's layers together (`wharf serve --max-image-size`).
        let budget = Arc::new(ImageBudget::new(max_image_bytes));
        let done: Vec<LayerDone> = futures::stream::iter(plan.layers)
            .map(|layer| self.archive_layer(container.clone(), src.clone(), layer, budget.clone()))
            .buffered(MAX_CONCURRENT_LAYER_PULLS)
            .try_collect()
            .await?;
        let mut manifests = plan.manifests;
        let top = match plan.top {
            Some(top) => top,
            None => {
                let bytes = docker_manifest(&plan.config_digest, plan.config_bytes.len(), &done);
                let digest = Digest::of(&bytes);
                if let Some(pinned) = src.digest.as_ref().filter(|d| **d != digest) {
                    return Err(no_longer_there(&src, pinned));
                }
                manifests.push((digest.clone(), bytes));
                digest
            }
        };
        self.store_bytes(&src, &plan.config_digest, &plan.config_bytes)?;
        // The manifests go in last: with them, `get` can find the image offline.
        for (digest, bytes) in &manifests {
            self.store_bytes(&src, digest, bytes)?;
        }
        tracing::info!(
            reference = %src,
            digest = %top,
            layers = done.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pulled image from archive"
        );
        Ok(Image {
            pinned: src.pinned(&top),
            digest: top.to_string(),
            config: plan.config.image_config(),
            layers: done.into_iter().map(|l| l.dir).collect(),
        })
    }

    /// [`ImageStore::get`] for a pinned archive reference: the same walk through `blobs/`.
    pub(super) fn get_archive(&self, src: ArchiveReference) -> Result<Option<Image>, ImageError> {
        let Some(digest) = src.digest.clone() else {
            return Err(ImageError::InvalidReference {
                reference: src.to_string(),
                reason: format!(
                    "it is not pinned by digest (expected {}:PATH@sha256:…)",
                    src.transport.prefix()
                ),
            });
        };
        self.local_image(&src, &digest, src.pinned(&digest))
    }

    fn store_bytes(
        &self,
        src: &ArchiveReference,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(), ImageError> {
        self.inner
            .blobs
            .write_bytes(digest, bytes)
            .map_err(|e| match e {
                WriteError::Corrupt(reason) => corrupt(src, digest, reason),
                WriteError::Source(source) => ImageError::io("read", &src.path, source),
                WriteError::Local {
                    action,
                    path,
                    source,
                } => ImageError::Io {
                    action,
                    path,
                    source,
                },
            })
    }

    /// Chooses the image of a Docker archive and reads its config.
    fn plan_docker(&self, c: &Container, src: &ArchiveReference) -> Result<Plan, ImageError> {
        let Some(bytes) = read_small(c, src, "manifest.json", MAX_TOC_BYTES, "MAX_MANIFEST_BYTES")?
        else {
            return Err(fail(
                src,
                ImageErrorKind::InvalidReference,
                format!(
                    "{} is not a Docker archive: it has no manifest.json (docker save and \
                     podman save write one; for an OCI archive use oci-archive:)",
                    src.path.display()
                ),
            ));
        };
        let entries: Vec<DockerEntry> = serde_json::from_slice(&bytes).map_err(|e| {
            fail(
                src,
                ImageErrorKind::Corrupt,
                format!("its manifest.json is malformed: {e}"),
            )
        })?;
        let tags = |e: &DockerEntry| e.repo_tags.clone().unwrap_or_default().join(", ");
        let entry = if let Some(pinned) = &src.digest {
            // The manifest written at the first pull names the config to look for.
            let config = self.read_blob(pinned, MAX_MANIFEST_BYTES)?.and_then(|b| {
                match manifest::parse_document(&b) {
                    Ok(Document::Manifest(m)) => Digest::parse(&m.config.digest).ok(),
                    _ => None,
                }
            });
            let found = match &config {
                Some(config) => entries
                    .iter()
                    .find(|e| docker_config_digest(c, &e.config).as_ref() == Some(config)),
                None if entries.len() == 1 => entries.first(),
                None => None,
            };
            found.ok_or_else(|| no_longer_there(src, pinned))?
        } else if let Some(wanted) = &src.selector {
            // `saved:v1` and `docker.io/library/saved:v1` are one name (docker writes the
            // first, skopeo the second).
            let wanted_ref = crate::reference::ImageReference::parse(wanted).ok();
            let same = |tag: &String| {
                tag == wanted
                    || wanted_ref.is_some()
                        && crate::reference::ImageReference::parse(tag).ok() == wanted_ref
            };
            entries
                .iter()
                .find(|e| e.repo_tags.iter().flatten().any(same))
                .ok_or_else(|| {
                    let all: Vec<String> = entries.iter().map(tags).collect();
                    fail(
                        src,
                        ImageErrorKind::NotFound,
                        format!(
                            "the archive has no image tagged {wanted} (it has: {})",
                            all.join("; ")
                        ),
                    )
                })?
        } else {
            match entries.as_slice() {
                [one] => one,
                [] => {
                    return Err(fail(
                        src,
                        ImageErrorKind::Corrupt,
                        "its manifest.json lists no image",
                    ));
                }
                many => {
                    let all: Vec<String> = many.iter().map(tags).collect();
                    return Err(fail(
                        src,
                        ImageErrorKind::InvalidReference,
                        format!(
                            "the archive holds {} images ({}): choose one with \
                             docker-archive:{}:REPO:TAG",
                            many.len(),
                            all.join("; "),
                            src.path.display()
                        ),
                    ));
                }
            }
        };
        let config_member = normalise(entry.config.as_bytes(), "").ok_or_else(|| {
            fail(
                src,
                ImageErrorKind::Corrupt,
                format!("manifest.json names the config {:?}", entry.config),
            )
        })?;
        let config_bytes =
            read_small(c, src, &config_member, MAX_CONFIG_BYTES, "MAX_CONFIG_BYTES")?.ok_or_else(
                || {
                    fail(
                        src,
                        ImageErrorKind::Corrupt,
                        format!(
                            "the archive has no config {config_member}, which manifest.json names"
                        ),
                    )
                },
            )?;
        let config_digest = Digest::of(&config_bytes);
        if let Some(named) = digest_in_name(&config_member).filter(|d| *d != config_digest) {
            return Err(corrupt(
                src,
                &named,
                format!("its content has digest {config_digest}"),
            ));
        }
        let config = checked_config(src, &config_digest, &config_bytes, entry.layers.len())?;
        let mut layers = Vec::with_capacity(entry.layers.len());
        for (member, diff_id) in entry
            .layers
            .iter()
            .zip(config.rootfs.diff_ids.as_deref().unwrap_or_default())
        {
            let member = normalise(member.as_bytes(), "").ok_or_else(|| {
                fail(
                    src,
                    ImageErrorKind::Corrupt,
                    format!("manifest.json names the layer {member:?}"),
                )
            })?;
            layers.push(ArchiveLayer {
                member,
                digest: None,
                size: None,
                compression: None,
                diff_id: parse_digest(src, "config", &config_digest, diff_id)?,
            });
        }
        Ok(Plan {
            top: None,
            manifests: Vec::new(),
            config_digest,
            config_bytes,
            config,
            layers,
        })
    }

    /// Brings one layer in: its blob into `blobs/` (checked), unpacked into `layers/`.
    async fn archive_layer(
        &self,
        c: Arc<Container>,
        src: Arc<ArchiveReference>,
        layer: ArchiveLayer,
        budget: Arc<ImageBudget>,
    ) -> Result<LayerDone, ImageError> {
        let _guard = self
            .inner
            .locks
            .lock(format!("layer:{}", layer.diff_id))
            .await;
        let store = self.clone();
        blocking(move || store.archive_layer_blocking(&c, &src, layer, &budget)).await
    }

    fn archive_layer_blocking(
        &self,
        c: &Container,
        src: &ArchiveReference,
        layer: ArchiveLayer,
        budget: &ImageBudget,
    ) -> Result<LayerDone, ImageError> {
        let dest = self.layer_dir(&layer.diff_id);
        let (digest, size, compression) = match (layer.digest, layer.size, layer.compression) {
            (Some(digest), Some(size), Some(compression)) => {
                if !dest.is_dir() && !self.inner.blobs.contains(&digest) {
                    self.copy_blob(c, src, &layer.member, Some((&digest, size)))?;
                }
                (digest, size, compression)
            }
            _ => {
                let compression = sniff_compression(c, src, &layer.member)?;
                if dest.is_dir() && compression == Compression::None {
                    // An uncompressed layer is its own diff id, already unpacked.
                    let (_, size) = c
                        .member(&layer.member)
                        .map_err(|reason| fail(src, ImageErrorKind::Corrupt, reason))?
                        .ok_or_else(|| missing_layer(src, &layer.member))?;
                    (layer.diff_id.clone(), size, compression)
                } else {
                    let (digest, size) = self.copy_blob(c, src, &layer.member, None)?;
                    (digest, size, compression)
                }
            }
        };
        if dest.is_dir() {
            // Counts towards the image's size all the same.
            charge_unpacked(&dest, budget)
                .map_err(|e| archive_wording(unpack_error(e, src, &digest, &self.inner.limits)))?;
        } else {
            self.unpack_archive_layer(src, &digest, compression, &layer.diff_id, budget)?;
        }
        Ok(LayerDone {
            dir: dest,
            digest,
            size,
            compression,
        })
    }

    /// Copies a member into `blobs/` through `tmp/`, hashing and counting as it goes; with
    /// `expected`, refuses it unless it has that digest and size. Returns its digest and size.
    fn copy_blob(
        &self,
        c: &Container,
        src: &ArchiveReference,
        member: &str,
        expected: Option<(&Digest, u64)>,
    ) -> Result<(Digest, u64), ImageError> {
        let (mut reader, size) = c
            .member(member)
            .map_err(|reason| fail(src, ImageErrorKind::Corrupt, reason))?
            .ok_or_else(|| match expected {
                Some((digest, _)) => missing_blob(src, digest),
                None => missing_layer(src, member),
            })?;
        if let Some((digest, declared)) = expected
            && declared != size
        {
            return Err(corrupt(
                src,
                digest,
                format!("it is {size} bytes, its descriptor says {declared}"),
            ));
        }
        if size > self.inner.limits.max_bytes {
            return Err(match expected {
                Some((digest, _)) => layer_too_large(digest, &self.inner.limits),
                None => ImageError::TooLarge {
                    subject: format!("layer {member} of image {src}"),
                    what: "the size",
                    limit: human_bytes(self.inner.limits.max_bytes),
                    constant: "MAX_LAYER_UNPACKED_BYTES",
                    hint: "make the image smaller",
                },
            });
        }
        let tmp_dir = &self.inner.tmp;
        let mut tmp = tempfile::Builder::new()
            .prefix("blob-")
            .suffix(".partial")
            .tempfile_in(tmp_dir)
            .map_err(|e| ImageError::io("create a temporary file in", tmp_dir, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut copied = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| {
                fail(
                    src,
                    ImageErrorKind::Io,
                    format!("cannot read {member}: {e}"),
                )
            })?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| ImageError::io("write", tmp.path(), e))?;
        }
        let digest = Digest::from_hasher(hasher);
        if let Some((expected, _)) = expected
            && *expected != digest
        {
            return Err(corrupt(
                src,
                expected,
                format!("its content has digest {digest}"),
            ));
        }
        if self.inner.blobs.contains(&digest) {
            return Ok((digest, copied));
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| ImageError::io("sync", tmp.path(), e))?;
        let target = self.inner.blobs.path(&digest);
        tmp.persist(&target)
            .map_err(|e| ImageError::io("rename a verified blob to", &target, e.error))?;
        Ok((digest, copied))
    }

    /// Unpacks the blob into `layers/<diff id>` through `tmp/` (as a registry pull does).
    fn unpack_archive_layer(
        &self,
        src: &ArchiveReference,
        blob: &Digest,
        compression: Compression,
        diff_id: &Digest,
        budget: &ImageBudget,
    ) -> Result<(), ImageError> {
        let started = Instant::now();
        let dest = self.layer_dir(diff_id);
        let tmp_dir = &self.inner.tmp;
        let tmp = tempfile::Builder::new()
            .prefix("layer-")
            .suffix(".partial")
            .tempdir_in(tmp_dir)
            .map_err(|e| ImageError::io("create a temporary directory in", tmp_dir, e))?;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| ImageError::io("set permissions of", tmp.path(), e))?;
        let limits = self.inner.limits;
        let stats = unpack_layer(
            &self.inner.blobs.path(blob),
            compression,
            diff_id,
            tmp.path(),
            &limits,
            Some(budget),
        )
        .and_then(|stats| {
            record_unpacked_bytes(tmp.path(), stats.bytes);
            let dir = File::open(tmp.path()).map_err(|source| UnpackError::Local {
                action: "open",
                path: tmp.path().to_owned(),
                source,
            })?;
            rustix::fs::syncfs(&dir).map_err(|e| UnpackError::Local {
                action: "sync",
                path: tmp.path().to_owned(),
                source: e.into(),
            })?;
            Ok(stats)
        })
        .map_err(|e| archive_wording(unpack_error(e, src, blob, &limits)))?;
        match std::fs::rename(tmp.path(), &dest) {
            Ok(()) => {
                let _ = tmp.keep();
            }
            Err(_) if dest.is_dir() => {}
            Err(e) => return Err(ImageError::io("rename an unpacked layer to", &dest, e)),
        }
        tracing::info!(
            layer = %blob,
            diff_id = %diff_id,
            unpacked_bytes = stats.bytes,
            entries = stats.entries,
            unpack_ms = started.elapsed().as_millis() as u64,
            "unpacked layer from archive"
        );
        Ok(())
    }
}

/// Chooses the image of an OCI layout, reads its manifest(s) and config.
fn plan_oci(c: &Container, src: &ArchiveReference) -> Result<Plan, ImageError> {
    let not_a_layout = |missing: &str| {
        fail(
            src,
            ImageErrorKind::InvalidReference,
            format!(
                "{} is not an OCI image layout: it has no {missing} (skopeo copy … {}:PATH \
                 writes one{})",
                src.path.display(),
                src.transport.prefix(),
                match src.transport {
                    ArchiveTransport::OciArchive => "; for docker save output use docker-archive:",
                    _ => "",
                }
            ),
        )
    };
    let layout = read_small(c, src, "oci-layout", MAX_TOC_BYTES, "MAX_MANIFEST_BYTES")?
        .ok_or_else(|| not_a_layout("oci-layout file"))?;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct LayoutFile {
        image_layout_version: String,
    }
    let version = serde_json::from_slice::<LayoutFile>(&layout)
        .map(|l| l.image_layout_version)
        .map_err(|e| {
            fail(
                src,
                ImageErrorKind::Corrupt,
                format!("its oci-layout file is malformed: {e}"),
            )
        })?;
    if !version.starts_with("1.") {
        return Err(fail(
            src,
            ImageErrorKind::InvalidReference,
            format!("its image layout version is {version:?}; Wharf reads version 1.x"),
        ));
    }
    let index_bytes = read_small(c, src, "index.json", MAX_TOC_BYTES, "MAX_MANIFEST_BYTES")?
        .ok_or_else(|| not_a_layout("index.json"))?;
    let index: LayoutIndex = serde_json::from_slice(&index_bytes).map_err(|e| {
        fail(
            src,
            ImageErrorKind::Corrupt,
            format!("its index.json is malformed: {e}"),
        )
    })?;

    let index_json = Digest::of(&index_bytes);
    let (top, top_size) = match &src.digest {
        Some(pinned) => (pinned.clone(), None),
        None => {
            let entry = choose_entry(src, &index)?;
            let digest = parse_digest(src, "index.json", &index_json, &entry.digest)?;
            let size = descriptor_size(src, "index.json", &index_json, entry.size)?;
            (digest, Some(size))
        }
    };
    let top_bytes = read_blob(
        c,
        src,
        &top,
        top_size,
        MAX_MANIFEST_BYTES,
        "MAX_MANIFEST_BYTES",
    )?
    .ok_or_else(|| match &src.digest {
        Some(pinned) => no_longer_there(src, pinned),
        None => missing_blob(src, &top),
    })?;
    let mut manifests = vec![(top.clone(), top_bytes.clone())];
    let manifest = match parse_document(src, &top, &top_bytes)? {
        Document::Manifest(m) => m,
        Document::Index(index) => {
            let entry = select_platform(&index).map_err(|available| ImageError::NoPlatform {
                reference: src.to_string(),
                available,
            })?;
            let digest = parse_digest(src, "index", &top, &entry.digest)?;
            let size = descriptor_size(src, "index", &top, entry.size)?;
            let bytes = read_blob(
                c,
                src,
                &digest,
                Some(size),
                MAX_MANIFEST_BYTES,
                "MAX_MANIFEST_BYTES",
            )?
            .ok_or_else(|| missing_blob(src, &digest))?;
            let manifest = match parse_document(src, &digest, &bytes)? {
                Document::Manifest(m) => m,
                Document::Index(_) => {
                    return Err(ImageError::Unsupported {
                        reference: src.to_string(),
                        reason: "its index points to another index for linux/amd64".into(),
                    });
                }
            };
            manifests.push((digest, bytes));
            manifest
        }
    };
    let manifest_digest = manifests.last().expect("one manifest").0.clone();
    oci_config_and_layers(c, src, top, manifests, &manifest_digest, &manifest)
}

fn oci_config_and_layers(
    c: &Container,
    src: &ArchiveReference,
    top: Digest,
    manifests: Vec<(Digest, Vec<u8>)>,
    manifest_digest: &Digest,
    manifest: &Manifest,
) -> Result<Plan, ImageError> {
    let media_type = manifest.config.media_type.as_str();
    if media_type != OCI_CONFIG && media_type != DOCKER_CONFIG {
        return Err(ImageError::Unsupported {
            reference: src.to_string(),
            reason: format!(
                "its config has media type {media_type:?}; it looks like an artifact, not a \
                 container image"
            ),
        });
    }
    let config_digest = parse_digest(src, "manifest", manifest_digest, &manifest.config.digest)?;
    let config_size = descriptor_size(src, "manifest", manifest_digest, manifest.config.size)?;
    let config_bytes = read_blob(
        c,
        src,
        &config_digest,
        Some(config_size),
        MAX_CONFIG_BYTES,
        "MAX_CONFIG_BYTES",
    )?
    .ok_or_else(|| missing_blob(src, &config_digest))?;
    let config = checked_config(src, &config_digest, &config_bytes, manifest.layers.len())?;
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (layer, diff_id) in manifest
        .layers
        .iter()
        .zip(config.rootfs.diff_ids.as_deref().unwrap_or_default())
    {
        let digest = parse_digest(src, "manifest", manifest_digest, &layer.digest)?;
        let size = descriptor_size(src, "manifest", manifest_digest, layer.size)?;
        let compression = manifest::layer_compression(&layer.media_type).ok_or_else(|| {
            ImageError::Unsupported {
                reference: src.to_string(),
                reason: format!(
                    "layer {digest} has media type {:?}, which is not a tar layer (plain, gzip \
                     or zstd)",
                    layer.media_type
                ),
            }
        })?;
        layers.push(ArchiveLayer {
            member: blob_name(&digest),
            digest: Some(digest),
            size: Some(size),
            compression: Some(compression),
            diff_id: parse_digest(src, "config", &config_digest, diff_id)?,
        });
    }
    Ok(Plan {
        top: Some(top),
        manifests,
        config_digest,
        config_bytes,
        config,
        layers,
    })
}

/// The entry of `index.json` to pull: by name when one is given, else the only one, else the
/// linux/amd64 one when the entries are per platform.
fn choose_entry<'a>(
    src: &ArchiveReference,
    index: &'a LayoutIndex,
) -> Result<&'a LayoutEntry, ImageError> {
    let names: Vec<&str> = index
        .manifests
        .iter()
        .filter_map(|e| e.annotations.get(REF_NAME).map(String::as_str))
        .collect();
    let listed = || {
        if names.is_empty() {
            "none has a name".to_string()
        } else {
            format!("names: {}", names.join(", "))
        }
    };
    let candidates: Vec<&LayoutEntry> = match &src.selector {
        Some(wanted) => index
            .manifests
            .iter()
            .filter(|e| e.annotations.get(REF_NAME) == Some(wanted))
            .collect(),
        None => index.manifests.iter().collect(),
    };
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(fail(
            src,
            ImageErrorKind::NotFound,
            match &src.selector {
                Some(wanted) => {
                    format!("its index.json has no image named {wanted} ({})", listed())
                }
                None => "its index.json lists no image".to_string(),
            },
        )),
        many if many.iter().all(|e| e.platform.is_some()) => {
            let index = Index {
                manifests: many.iter().map(|e| e.descriptor()).collect(),
            };
            let chosen = select_platform(&index).map_err(|available| ImageError::NoPlatform {
                reference: src.to_string(),
                available,
            })?;
            Ok(many
                .iter()
                .find(|e| e.digest == chosen.digest)
                .expect("chosen among these"))
        }
        many => Err(fail(
            src,
            ImageErrorKind::InvalidReference,
            format!(
                "its index.json lists {} images ({}): choose one with {}:{}:NAME",
                many.len(),
                listed(),
                src.transport.prefix(),
                src.path.display()
            ),
        )),
    }
}

/// Parses the config and checks it fits this host and the manifest (`layers` entries).
fn checked_config(
    src: &ArchiveReference,
    digest: &Digest,
    bytes: &[u8],
    layers: usize,
) -> Result<ConfigFile, ImageError> {
    let config = parse_config(src, digest, bytes)?;
    let os_mismatch = !config.os.is_empty() && config.os != TARGET_OS;
    let arch_mismatch =
        !config.architecture.is_empty() && config.architecture != TARGET_ARCHITECTURE;
    if os_mismatch || arch_mismatch {
        return Err(ImageError::NoPlatform {
            reference: src.to_string(),
            available: vec![format!("{}/{}", config.os, config.architecture)],
        });
    }
    if layers > MAX_LAYERS_PER_IMAGE {
        return Err(ImageError::TooLarge {
            subject: format!("image {src}"),
            what: "the number of layers",
            limit: MAX_LAYERS_PER_IMAGE.to_string(),
            constant: "MAX_LAYERS_PER_IMAGE",
            hint: "squash some layers",
        });
    }
    let diff_ids = config.rootfs.diff_ids.as_ref().map_or(0, Vec::len);
    if layers > 0 && config.rootfs.diff_ids.is_none() {
        return Err(ImageError::Malformed {
            reference: src.to_string(),
            what: "config",
            digest: digest.to_string(),
            reason: "it has no rootfs.diff_ids, which Wharf needs to verify the unpacked layers \
                     (rebuild the image with a current build tool)"
                .into(),
        });
    }
    if layers != diff_ids {
        return Err(ImageError::Malformed {
            reference: src.to_string(),
            what: "config",
            digest: digest.to_string(),
            reason: format!("it lists {diff_ids} diff ids, the manifest {layers} layers"),
        });
    }
    Ok(config)
}

/// The digest a Docker archive's member name states: `<hex>.json` or `blobs/sha256/<hex>`.
fn digest_in_name(member: &str) -> Option<Digest> {
    let name = member.rsplit('/').next()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// The digest of a Docker archive's config member, cheaply from its name when it states one.
fn docker_config_digest(c: &Container, config: &str) -> Option<Digest> {
    let member = normalise(config.as_bytes(), "")?;
    if let Some(d) = digest_in_name(&member) {
        return Some(d);
    }
    let (reader, _) = c.member(&member).ok()??;
    let mut bytes = Vec::new();
    reader.take(MAX_CONFIG_BYTES).read_to_end(&mut bytes).ok()?;
    Some(Digest::of(&bytes))
}

fn sniff_compression(
    c: &Container,
    src: &ArchiveReference,
    member: &str,
) -> Result<Compression, ImageError> {
    let (reader, _) = c
        .member(member)
        .map_err(|reason| fail(src, ImageErrorKind::Corrupt, reason))?
        .ok_or_else(|| missing_layer(src, member))?;
    let mut magic = Vec::with_capacity(4);
    reader.take(4).read_to_end(&mut magic).map_err(|e| {
        fail(
            src,
            ImageErrorKind::Io,
            format!("cannot read {member}: {e}"),
        )
    })?;
    Ok(match magic.as_slice() {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    })
}

fn missing_layer(src: &ArchiveReference, member: &str) -> ImageError {
    fail(
        src,
        ImageErrorKind::Corrupt,
        format!("the archive has no layer {member}, which manifest.json names"),
    )
}

fn no_longer_there(src: &ArchiveReference, pinned: &Digest) -> ImageError {
    fail(
        src,
        ImageErrorKind::NotFound,
        format!(
            "{} no longer holds the image {pinned} the function was deployed with (the archive \
             was changed after the deploy): put that archive back, or deploy the function again",
            src.path.display()
        ),
    )
}

/// The Docker v2 manifest Wharf writes for an image of a Docker archive.
fn docker_manifest(config: &Digest, config_size: usize, layers: &[LayerDone]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let media_type = match l.compression {
                Compression::None => DOCKER_LAYER,
                Compression::Gzip => DOCKER_LAYER_GZIP,
                Compression::Zstd => OCI_LAYER_ZSTD,
            };
            serde_json::json!({"mediaType": media_type, "size": l.size, "digest": l.digest.as_str()})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config_size, "digest": config.as_str()},
        "layers": layers,
    });
    serde_json::to_vec(&manifest).expect("a JSON value serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_inside_the_root() {
        assert_eq!(
            normalise(b"./blobs//sha256/ab", ""),
            Some("blobs/sha256/ab".into())
        );
        assert_eq!(normalise(b"../layer.tar", "abc"), Some("layer.tar".into()));
        assert_eq!(normalise(b"../../x", "abc"), None);
        assert_eq!(normalise(b"/etc/passwd", "").as_deref(), Some("etc/passwd"));
        assert_eq!(normalise(b".", ""), None);
        assert_eq!(normalise(b"\xff", ""), None);
    }

    #[test]
    fn digests_in_docker_member_names() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(digest_in_name(&format!("{hex}.json")), Some(d.clone()));
        assert_eq!(digest_in_name(&format!("blobs/sha256/{hex}")), Some(d));
        assert_eq!(digest_in_name("config.json"), None);
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> tempfile::NamedTempFile {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(link) = link {
                h.set_link_name(link).unwrap();
            }
            b.append_data(&mut h, name, *data).unwrap();
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&b.into_inner().unwrap()).unwrap();
        f
    }

    fn read_member(c: &Container, name: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(c.member(name)?.map(|(mut r, _)| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            v
        }))
    }

    #[test]
    fn tar_members_are_read_by_name_and_links_stay_inside() {
        use tar::EntryType as T;
        let f = tar_of(&[
            ("a/layer.tar", T::Regular, b"one", None),
            ("b/layer.tar", T::Symlink, b"", Some("../a/layer.tar")),
            ("c/layer.tar", T::Symlink, b"", Some("../../etc/passwd")),
            ("d/layer.tar", T::Link, b"", Some("a/layer.tar")),
            ("twice", T::Regular, b"1", None),
            ("twice", T::Regular, b"2", None),
            ("loop", T::Symlink, b"", Some("loop")),
        ]);
        let file = File::open(f.path()).unwrap();
        let members = table_of_contents(&file).unwrap();
        let c = Container::Tar {
            file: Arc::new(file),
            members,
        };
        assert_eq!(read_member(&c, "a/layer.tar").unwrap().unwrap(), b"one");
        assert_eq!(read_member(&c, "b/layer.tar").unwrap().unwrap(), b"one");
        assert_eq!(read_member(&c, "d/layer.tar").unwrap().unwrap(), b"one");
        assert_eq!(read_member(&c, "c/layer.tar").unwrap(), None);
        assert_eq!(read_member(&c, "etc/passwd").unwrap(), None);
        assert!(
            read_member(&c, "twice")
                .unwrap_err()
                .contains("more than one")
        );
        assert!(read_member(&c, "loop").unwrap_err().contains("chain"));
    }

    #[test]
    fn a_member_past_the_end_of_the_file_is_refused() {
        use tar::EntryType as T;
        let f = tar_of(&[("big", T::Regular, &[7u8; 4096], None)]);
        let whole = std::fs::read(f.path()).unwrap();
        std::fs::write(f.path(), &whole[..1024]).unwrap();
        let file = File::open(f.path()).unwrap();
        let err = table_of_contents(&file).unwrap_err();
        assert!(err.contains("big runs past the end"), "{err}");
    }
}
