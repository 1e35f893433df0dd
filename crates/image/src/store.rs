//! The image store: pulling an image (manifest → config → layers) and finding one offline.
//! Listing, leases and pruning are in [`gc`].

pub(crate) mod gc;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use std::os::unix::fs::PermissionsExt;

use crate::blobs::{BlobStore, WriteError};
use crate::digest::Digest;
use crate::error::{ImageError, human_bytes};
use crate::manifest::{
    self, Compression, ConfigFile, DOCKER_CONFIG, Document, Manifest, OCI_CONFIG, ParseError,
};
use crate::platform::{TARGET_ARCHITECTURE, TARGET_OS, select_platform};
use crate::progress::{LayerInfo, PullEvent, PullOptions};
use crate::reference::ImageReference;
use crate::registry::{BlobSource, MAX_MANIFEST_BYTES, RegistryClient, manifest_too_large};
use crate::unpack::{
    ImageBudget, MAX_IMAGE_UNPACKED_BYTES, UnpackError, UnpackLimits, charge_unpacked,
    record_unpacked_bytes, unpack_layer,
};
use crate::{Image, RegistryAuth, RegistrySettings, install_crypto_provider};

mod archive;

/// Largest image config accepted (it is read into memory; real ones are kilobytes).
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Most layers one image may have (overlayfs stacks them all; Docker stops at 127).
pub const MAX_LAYERS_PER_IMAGE: usize = 128;
/// Layers downloaded and unpacked at once during one pull.
pub const MAX_CONCURRENT_LAYER_PULLS: usize = 3;

/// Blobs under `<root>/blobs`, unpacked layers under `<root>/layers`.
///
/// One store per root directory per process: `open` clears `<root>/tmp`, which would break a
/// pull in progress in another store on the same root. Clones share everything.
#[derive(Clone, Debug)]
pub struct ImageStore {
    inner: Arc<Inner>,
    registries: Arc<RegistrySettings>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    blobs: BlobStore,
    layers: PathBuf,
    tmp: PathBuf,
    limits: UnpackLimits,
    /// Cap on the unpacked size of one image, all layers together.
    max_image_bytes: AtomicU64,
    /// Single-flight per blob and per layer within this process.
    locks: KeyedLocks,
    /// Pulls against prunes, leases, the image list.
    gc: gc::Gc,
}

/// One layer of a pull: its blob and what it must unpack to.
struct LayerJob {
    digest: Digest,
    size: u64,
    media_type: String,
    /// Other places to fetch it from (non-distributable layers only).
    urls: Vec<String>,
    compression: Compression,
    diff_id: Digest,
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        ImageStore::open_with_limits(root, UnpackLimits::default())
    }

    /// Like [`ImageStore::open`], with other caps on unpacked layers.
    pub fn open_with_limits(root: &Path, limits: UnpackLimits) -> Result<ImageStore, ImageError> {
        install_crypto_provider();
        let root = std::path::absolute(root).map_err(|e| ImageError::io("resolve", root, e))?;
        let blobs = root.join("blobs").join("sha256");
        let layers = root.join("layers");
        let tmp = root.join("tmp");
        for dir in [&blobs, &layers, &tmp] {
            std::fs::create_dir_all(dir).map_err(|e| ImageError::io("create", dir, e))?;
        }
        // Unpacked layers hold setuid binaries and device nodes of the image's choosing: no
        // other host user may reach them.
        for dir in [root.join("blobs"), layers.clone(), tmp.clone()] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| ImageError::io("restrict permissions of", &dir, e))?;
        }
        let removed = clear_dir(&tmp)?;
        if removed > 0 {
            tracing::info!(
                count = removed,
                dir = %tmp.display(),
                "removed unfinished downloads and unpacks"
            );
        }
        Ok(ImageStore {
            inner: Arc::new(Inner {
                blobs: BlobStore::new(blobs, tmp.clone()),
                root,
                layers,
                tmp,
                limits,
                max_image_bytes: AtomicU64::new(MAX_IMAGE_UNPACKED_BYTES),
                locks: KeyedLocks::default(),
                gc: gc::Gc::default(),
            }),
            registries: Arc::default(),
        })
    }

    /// Caps the unpacked size of one image, all its layers together (default
    /// [`MAX_IMAGE_UNPACKED_BYTES`]); checked while unpacking.
    pub fn set_max_image_bytes(&self, bytes: u64) {
        self.inner.max_image_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn max_image_bytes(&self) -> u64 {
        self.inner.max_image_bytes.load(Ordering::Relaxed)
    }

    /// This store with registry credentials and insecure registries (the daemon's settings).
    pub fn with_registries(mut self, settings: RegistrySettings) -> ImageStore {
        self.registries = Arc::new(settings);
        self
    }

    /// Registry credentials and insecure registries ([`ImageStore::with_registries`]).
    pub(crate) fn registries(&self) -> &RegistrySettings {
        &self.registries
    }

    /// The store's root directory (absolute).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the layer with this diff id is (or would be) unpacked.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.inner.layers.join(diff_id.hex())
    }

    /// Pulls `reference` (linux/amd64) and unpacks its layers; layers and blobs already present
    /// are not fetched again. `reference` may also be an image archive (see `source`). The image
    /// is added to the store's list ([`ImageStore::list`]);
    /// a prune may remove it once this returns unless it is in use (see
    /// [`ImageStore::pull_leased`]).
    pub async fn pull(&self, reference: &str, auth: &RegistryAuth) -> Result<Image, ImageError> {
        self.pull_with(reference, auth, &PullOptions::default())
            .await
    }

    /// [`ImageStore::pull`], reporting progress to the subscriber in `options`.
    pub async fn pull_with(
        &self,
        reference: &str,
        auth: &RegistryAuth,
        options: &PullOptions,
    ) -> Result<Image, ImageError> {
        self.pull_leased_with(reference, auth, options)
            .await
            .map(|(image, _lease)| image)
    }

    /// The pull itself; the caller holds the shared side of the prune lock.
    async fn pull_unlocked(
        &self,
        reference: &str,
        auth: &RegistryAuth,
        options: &PullOptions,
    ) -> Result<Image, ImageError> {
        if let Some(archive) = archive::parse(reference)? {
            return self.pull_archive(archive).await;
        }
        let started = Instant::now();
        let r =
            ImageReference::parse(reference).map_err(|reason| ImageError::InvalidReference {
                reference: reference.to_owned(),
                reason,
            })?;
        let client = RegistryClient::new(&r, auth, &self.registries)?;
        let (top_bytes, top_digest) = client.manifest(None).await?;
        let mut manifests = vec![(top_digest.clone(), top_bytes.clone())];
        let manifest = match parse_document(&r, &top_digest, &top_bytes)? {
            Document::Manifest(m) => m,
            Document::Index(index) => {
                let entry =
                    select_platform(&index).map_err(|available| ImageError::NoPlatform {
                        reference: r.to_string(),
                        available,
                    })?;
                let digest = parse_digest(&r, "index", &top_digest, &entry.digest)?;
                let size = descriptor_size(&r, "index", &top_digest, entry.size)?;
                if size > MAX_MANIFEST_BYTES {
                    return Err(manifest_too_large(&r));
                }
                tracing::debug!(reference = %r, index = %top_digest, manifest = %digest, "selected linux/amd64");
                let (bytes, digest) = client.manifest(Some(&digest)).await?;
                if bytes.len() as u64 != size {
                    return Err(ImageError::Corrupt {
                        reference: r.to_string(),
                        digest: digest.to_string(),
                        reason: format!(
                            "the manifest is {} bytes, the index says {size}",
                            bytes.len()
                        ),
                    });
                }
                let manifest = match parse_document(&r, &digest, &bytes)? {
                    Document::Manifest(m) => m,
                    Document::Index(_) => {
                        return Err(ImageError::Unsupported {
                            reference: r.to_string(),
                            reason: "its index points to another index for linux/amd64".into(),
                        });
                    }
                };
                manifests.push((digest, bytes));
                manifest
            }
        };
        let manifest_digest = &manifests.last().expect("at least one manifest").0;
        let (config, jobs) = self
            .read_config(&client, &r, manifest_digest, &manifest)
            .await?;
        options.emit(|| PullEvent::Layers {
            reference: r.to_string(),
            digest: top_digest.to_string(),
            layers: jobs
                .iter()
                .map(|j| LayerInfo {
                    digest: j.digest.to_string(),
                    size: j.size,
                })
                .collect(),
        });

        let max_image_bytes = self.max_image_bytes();
        // Compressed layers unpack to more than their size: refuse before downloading when
        // these alone are over the cap.
        let compressed: u64 = jobs.iter().map(|j| j.size).sum();
        if compressed > max_image_bytes {
            return Err(image_too_large(
                &r,
                None,
                "the compressed size",
                max_image_bytes,
            ));
        }
        let budget = Arc::new(ImageBudget::new(max_image_bytes));
        let layers: Vec<PathBuf> = futures::stream::iter(jobs)
            .map(|job| self.ensure_layer(&client, &r, job, options, &budget))
            .buffered(MAX_CONCURRENT_LAYER_PULLS)
            .try_collect()
            .await?;

        // The manifests go in last: with them, `get` can find the image offline.
        for (digest, bytes) in &manifests {
            self.inner
                .blobs
                .write_bytes(digest, bytes)
                .map_err(|e| write_error(e, &r, digest))?;
        }
        tracing::info!(
            reference = %r,
            digest = %top_digest,
            layers = layers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pulled image"
        );
        Ok(Image {
            pinned: r.pinned(&top_digest),
            digest: top_digest.to_string(),
            config: config.image_config(),
            layers,
        })
    }

    /// The image pinned by `pinned` (`registry/repository@sha256:…`), if its manifest, config
    /// and every layer are present locally. No network.
    pub fn get(&self, pinned: &str) -> Result<Option<Image>, ImageError> {
        if let Some(archive) = archive::parse(pinned)? {
            return self.get_archive(archive);
        }
        let r = ImageReference::parse(pinned).map_err(|reason| ImageError::InvalidReference {
            reference: pinned.to_owned(),
            reason,
        })?;
        let Some(digest) = r.digest.clone() else {
            return Err(ImageError::InvalidReference {
                reference: pinned.to_owned(),
                reason: "it is not pinned by digest (expected registry/repository@sha256:…)".into(),
            });
        };
        self.local_image(&r, &digest, r.pinned(&digest))
    }

    /// The image whose manifest or index has `digest`, from `blobs/` and `layers/` alone:
    /// `None` unless its manifest, config and every layer are present. `r` words errors.
    pub(crate) fn local_image(
        &self,
        r: &dyn std::fmt::Display,
        digest: &Digest,
        pinned: String,
    ) -> Result<Option<Image>, ImageError> {
        let Some(bytes) = self.read_blob(digest, MAX_MANIFEST_BYTES)? else {
            return Ok(None);
        };
        let manifest = match parse_document(r, digest, &bytes)? {
            Document::Manifest(m) => m,
            Document::Index(index) => {
                let Ok(entry) = select_platform(&index) else {
                    return Ok(None);
                };
                let child = parse_digest(r, "index", digest, &entry.digest)?;
                let Some(bytes) = self.read_blob(&child, MAX_MANIFEST_BYTES)? else {
                    return Ok(None);
                };
                match parse_document(r, &child, &bytes)? {
                    Document::Manifest(m) => m,
                    Document::Index(_) => return Ok(None),
                }
            }
        };
        let config_digest = parse_digest(r, "manifest", digest, &manifest.config.digest)?;
        let Some(config_bytes) = self.read_blob(&config_digest, MAX_CONFIG_BYTES)? else {
            return Ok(None);
        };
        let config = parse_config(r, &config_digest, &config_bytes)?;
        let diff_ids = config.rootfs.diff_ids.as_deref().unwrap_or_default();
        let mut layers = Vec::with_capacity(diff_ids.len());
        for diff_id in diff_ids {
            let diff_id = parse_digest(r, "config", &config_digest, diff_id)?;
            let dir = self.layer_dir(&diff_id);
            if !dir.is_dir() {
                return Ok(None);
            }
            layers.push(dir);
        }
        Ok(Some(Image {
            pinned,
            digest: digest.to_string(),
            config: config.image_config(),
            layers,
        }))
    }

    fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Option<Vec<u8>>, ImageError> {
        let path = self.inner.blobs.path(digest);
        self.inner
            .blobs
            .read(digest, limit)
            .map_err(|e| ImageError::io("read", path, e))
    }

    /// Fetches and checks the config; returns it with the layers to pull, base first.
    async fn read_config(
        &self,
        client: &RegistryClient,
        r: &ImageReference,
        manifest_digest: &Digest,
        manifest: &Manifest,
    ) -> Result<(ConfigFile, Vec<LayerJob>), ImageError> {
        let media_type = manifest.config.media_type.as_str();
        if media_type != OCI_CONFIG && media_type != DOCKER_CONFIG {
            return Err(ImageError::Unsupported {
                reference: r.to_string(),
                reason: format!(
                    "its config has media type {media_type:?}; it looks like an artifact (a \
                     chart, a wasm module, a signature), not a container image"
                ),
            });
        }
        let config_digest = parse_digest(r, "manifest", manifest_digest, &manifest.config.digest)?;
        let config_size = descriptor_size(r, "manifest", manifest_digest, manifest.config.size)?;
        if config_size > MAX_CONFIG_BYTES {
            return Err(ImageError::TooLarge {
                subject: format!("image {r}"),
                what: "the config",
                limit: human_bytes(MAX_CONFIG_BYTES),
                constant: "MAX_CONFIG_BYTES",
                hint: "this is not a normal image config",
            });
        }
        let source = BlobSource {
            digest: &config_digest,
            size: config_size,
            media_type: &manifest.config.media_type,
            urls: &[],
        };
        // No progress events: they are about layers.
        self.fetch_blob(client, r, source, &PullOptions::default())
            .await?;
        let bytes = self
            .read_blob(&config_digest, MAX_CONFIG_BYTES)?
            .ok_or_else(|| {
                ImageError::io(
                    "read",
                    self.inner.blobs.path(&config_digest),
                    std::io::ErrorKind::NotFound.into(),
                )
            })?;
        let config = parse_config(r, &config_digest, &bytes)?;
        let os_mismatch = !config.os.is_empty() && config.os != TARGET_OS;
        let arch_mismatch =
            !config.architecture.is_empty() && config.architecture != TARGET_ARCHITECTURE;
        if os_mismatch || arch_mismatch {
            return Err(ImageError::NoPlatform {
                reference: r.to_string(),
                available: vec![format!("{}/{}", config.os, config.architecture)],
            });
        }
        if manifest.layers.len() > MAX_LAYERS_PER_IMAGE {
            return Err(ImageError::TooLarge {
                subject: format!("image {r}"),
                what: "the number of layers",
                limit: MAX_LAYERS_PER_IMAGE.to_string(),
                constant: "MAX_LAYERS_PER_IMAGE",
                hint: "squash some layers",
            });
        }
        let diff_ids = match &config.rootfs.diff_ids {
            Some(ids) => ids.as_slice(),
            None if manifest.layers.is_empty() => &[],
            None => {
                return Err(ImageError::Malformed {
                    reference: r.to_string(),
                    what: "config",
                    digest: config_digest.to_string(),
                    reason: "it has no rootfs.diff_ids, which Wharf needs to verify the unpacked \
                             layers (rebuild the image with a current build tool)"
                        .into(),
                });
            }
        };
        if manifest.layers.len() != diff_ids.len() {
            return Err(ImageError::Malformed {
                reference: r.to_string(),
                what: "config",
                digest: config_digest.to_string(),
                reason: format!(
                    "it lists {} diff ids, the manifest {} layers",
                    diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        let mut jobs = Vec::with_capacity(manifest.layers.len());
        for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
            let digest = parse_digest(r, "manifest", manifest_digest, &layer.digest)?;
            let size = descriptor_size(r, "manifest", manifest_digest, layer.size)?;
            let compression = manifest::layer_compression(&layer.media_type).ok_or_else(|| {
                ImageError::Unsupported {
                    reference: r.to_string(),
                    reason: format!(
                        "layer {digest} has media type {:?}, which is not a tar layer (plain, \
                         gzip or zstd)",
                        layer.media_type
                    ),
                }
            })?;
            if size > self.inner.limits.max_bytes {
                return Err(layer_too_large(&digest, &self.inner.limits));
            }
            let diff_id = parse_digest(r, "config", &config_digest, diff_id)?;
            let urls = if manifest::is_non_distributable(&layer.media_type) {
                layer.urls.clone()
            } else {
                Vec::new()
            };
            jobs.push(LayerJob {
                digest,
                size,
                media_type: layer.media_type.clone(),
                urls,
                compression,
                diff_id,
            });
        }
        Ok((config, jobs))
    }

    /// Downloads a blob unless present; returns the bytes downloaded.
    async fn fetch_blob(
        &self,
        client: &RegistryClient,
        r: &ImageReference,
        source: BlobSource<'_>,
        options: &PullOptions,
    ) -> Result<u64, ImageError> {
        let (digest, size) = (source.digest, source.size);
        let blobs = &self.inner.blobs;
        if blobs.contains(digest) {
            return Ok(0);
        }
        let _guard = self.inner.locks.lock(format!("blob:{digest}")).await;
        if blobs.contains(digest) {
            return Ok(0);
        }
        let stream = client.blob(source).await?;
        let mut progress = options.download(digest, size);
        let stream = stream.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                progress.add(chunk.len() as u64);
            }
        });
        blobs
            .write_stream(digest, size, stream)
            .await
            .map_err(|e| write_error(e, r, digest))
    }

    /// Makes sure the layer is unpacked under `layers/<diff id>`; returns that directory.
    async fn ensure_layer(
        &self,
        client: &RegistryClient,
        r: &ImageReference,
        job: LayerJob,
        options: &PullOptions,
        budget: &Arc<ImageBudget>,
    ) -> Result<PathBuf, ImageError> {
        let dest = self.layer_dir(&job.diff_id);
        let present = || {
            options.emit(|| PullEvent::LayerPresent {
                layer: job.digest.to_string(),
                size: job.size,
            })
        };
        // A layer already unpacked counts towards the image's size all the same.
        let reuse = || {
            charge_unpacked(&dest, budget)
                .map_err(|e| unpack_error(e, r, &job.digest, &self.inner.limits))?;
            present();
            Ok(dest.clone())
        };
        if dest.is_dir() {
            tracing::debug!(layer = %job.digest, diff_id = %job.diff_id, "layer already unpacked");
            return reuse();
        }
        let _guard = self
            .inner
            .locks
            .lock(format!("layer:{}", job.diff_id))
            .await;
        if dest.is_dir() {
            return reuse();
        }
        let started = Instant::now();
        let source = BlobSource {
            digest: &job.digest,
            size: job.size,
            media_type: &job.media_type,
            urls: &job.urls,
        };
        let downloaded = self.fetch_blob(client, r, source, options).await?;
        let download_time = started.elapsed();
        options.emit(|| PullEvent::Unpacking {
            layer: job.digest.to_string(),
        });

        let tmp = tempfile::Builder::new()
            .prefix("layer-")
            .suffix(".partial")
            .tempdir_in(&self.inner.tmp)
            .map_err(|e| ImageError::io("create a temporary directory in", &self.inner.tmp, e))?;
        // The layer root is the container's `/` unless the tar says otherwise.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| ImageError::io("set permissions of", tmp.path(), e))?;
        let blob = self.inner.blobs.path(&job.digest);
        let limits = self.inner.limits;
        let unpack_dir = tmp.path().to_owned();
        let (compression, diff_id) = (job.compression, job.diff_id.clone());
        let budget = budget.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let stats = unpack_layer(
                &blob,
                compression,
                &diff_id,
                &unpack_dir,
                &limits,
                Some(&budget),
            )?;
            record_unpacked_bytes(&unpack_dir, stats.bytes);
            // One flush of the file system instead of an fsync per file: the rename below must
            // not become durable before the contents.
            let dir = std::fs::File::open(&unpack_dir).map_err(|source| UnpackError::Local {
                action: "open",
                path: unpack_dir.clone(),
                source,
            })?;
            rustix::fs::syncfs(&dir).map_err(|e| UnpackError::Local {
                action: "sync",
                path: unpack_dir.clone(),
                source: e.into(),
            })?;
            Ok(stats)
        })
        .await;
        let stats = match unpacked {
            Ok(result) => result.map_err(|e| unpack_error(e, r, &job.digest, &limits))?,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(join) => {
                return Err(ImageError::io(
                    "unpack into",
                    tmp.path(),
                    std::io::Error::other(join),
                ));
            }
        };
        let unpack_time = started.elapsed() - download_time;
        match std::fs::rename(tmp.path(), &dest) {
            Ok(()) => {
                // Renamed away: nothing left for the guard to delete.
                let _ = tmp.keep();
            }
            // Another process finished the same layer first; ours is dropped with `tmp`.
            Err(_) if dest.is_dir() => {}
            Err(e) => return Err(ImageError::io("rename an unpacked layer to", &dest, e)),
        }
        options.emit(|| PullEvent::LayerDone {
            layer: job.digest.to_string(),
            unpacked_bytes: stats.bytes,
        });
        tracing::info!(
            layer = %job.digest,
            diff_id = %job.diff_id,
            downloaded_bytes = downloaded,
            unpacked_bytes = stats.bytes,
            entries = stats.entries,
            download_ms = download_time.as_millis() as u64,
            unpack_ms = unpack_time.as_millis() as u64,
            "unpacked layer"
        );
        Ok(dest)
    }
}

/// Removes everything in `dir`; returns how many entries there were.
fn clear_dir(dir: &Path) -> Result<usize, ImageError> {
    let mut removed = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| ImageError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io("list", dir, e))?;
        let path = entry.path();
        let is_dir = entry
            .file_type()
            .map_err(|e| ImageError::io("inspect", &path, e))?
            .is_dir();
        let result = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        result.map_err(|e| ImageError::io("remove", &path, e))?;
        removed += 1;
    }
    Ok(removed)
}

pub(crate) fn parse_document(
    r: &dyn std::fmt::Display,
    digest: &Digest,
    bytes: &[u8],
) -> Result<Document, ImageError> {
    manifest::parse_document(bytes).map_err(|e| match e {
        ParseError::Malformed(reason) => ImageError::Malformed {
            reference: r.to_string(),
            what: "manifest",
            digest: digest.to_string(),
            reason,
        },
        ParseError::Unsupported(reason) => ImageError::Unsupported {
            reference: r.to_string(),
            reason,
        },
    })
}

fn parse_config(
    r: &dyn std::fmt::Display,
    digest: &Digest,
    bytes: &[u8],
) -> Result<ConfigFile, ImageError> {
    ConfigFile::parse(bytes).map_err(|reason| ImageError::Malformed {
        reference: r.to_string(),
        what: "config",
        digest: digest.to_string(),
        reason,
    })
}

/// A digest named inside the document `within`.
fn parse_digest(
    r: &dyn std::fmt::Display,
    what: &'static str,
    within: &Digest,
    digest: &str,
) -> Result<Digest, ImageError> {
    Digest::parse(digest).map_err(|reason| ImageError::Malformed {
        reference: r.to_string(),
        what,
        digest: within.to_string(),
        reason,
    })
}

fn descriptor_size(
    r: &dyn std::fmt::Display,
    what: &'static str,
    within: &Digest,
    size: i64,
) -> Result<u64, ImageError> {
    u64::try_from(size).map_err(|_| ImageError::Malformed {
        reference: r.to_string(),
        what,
        digest: within.to_string(),
        reason: format!("a descriptor has the negative size {size}"),
    })
}

fn layer_too_large(digest: &Digest, limits: &UnpackLimits) -> ImageError {
    ImageError::TooLarge {
        subject: format!("layer {digest}"),
        what: "the size",
        limit: human_bytes(limits.max_bytes),
        constant: "MAX_LAYER_UNPACKED_BYTES",
        hint: "make the image smaller",
    }
}

/// The image's layers together are over `wharf serve --max-image-size`.
fn image_too_large(
    r: &dyn std::fmt::Display,
    layer: Option<&Digest>,
    what: &'static str,
    limit: u64,
) -> ImageError {
    ImageError::TooLarge {
        subject: match layer {
            Some(layer) => format!("image {r} (reached while unpacking its layer {layer})"),
            None => format!("image {r}"),
        },
        what,
        limit: human_bytes(limit),
        constant: "wharf serve --max-image-size",
        hint: "make the image smaller, or start wharf serve with a larger --max-image-size",
    }
}

fn write_error(e: WriteError, r: &ImageReference, digest: &Digest) -> ImageError {
    match e {
        WriteError::Corrupt(reason) => ImageError::Corrupt {
            reference: r.to_string(),
            digest: digest.to_string(),
            reason,
        },
        WriteError::Source(e) => ImageError::Registry {
            registry: r.registry.clone(),
            reference: r.to_string(),
            what: format!("blob {digest}"),
            detail: format!("the download broke off: {e}"),
        },
        WriteError::Local {
            action,
            path,
            source,
        } => ImageError::Io {
            action,
            path,
            source,
        },
    }
}

fn unpack_error(
    e: UnpackError,
    r: &dyn std::fmt::Display,
    layer: &Digest,
    limits: &UnpackLimits,
) -> ImageError {
    match e {
        UnpackError::Hostile { entry, reason } => ImageError::HostileLayer {
            layer: layer.to_string(),
            entry,
            reason,
        },
        UnpackError::TooLarge {
            what,
            limit,
            constant,
        } => ImageError::TooLarge {
            subject: format!("layer {layer}"),
            what,
            limit: if constant == "MAX_LAYER_ENTRIES" {
                limit.to_string()
            } else {
                human_bytes(limit)
            },
            constant,
            hint: if limit == limits.max_bytes || limit == limits.max_entries {
                "make the image smaller"
            } else {
                "this is not a normal image layer"
            },
        },
        UnpackError::Malformed { entry, reason } => ImageError::Malformed {
            reference: r.to_string(),
            what: "layer",
            digest: layer.to_string(),
            reason: match entry {
                Some(entry) => format!("entry {entry:?}: {reason}"),
                None => reason,
            },
        },
        UnpackError::Io { entry, source } => ImageError::Unpack {
            layer: layer.to_string(),
            entry,
            source,
        },
        UnpackError::ImageTooLarge { limit } => {
            image_too_large(r, Some(layer), "the unpacked size", limit)
        }
        UnpackError::DiffId { expected, actual } => ImageError::Corrupt {
            reference: r.to_string(),
            digest: layer.to_string(),
            reason: format!("it unpacks to diff id {actual}, the image config says {expected}"),
        },
        UnpackError::Local {
            action,
            path,
            source,
        } => ImageError::Io {
            action,
            path,
            source,
        },
    }
}

/// Per-key async mutexes, so that one process downloads a blob or unpacks a layer once even
/// when several pulls need it at the same time.
#[derive(Debug, Default)]
struct KeyedLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    async fn lock(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, weak| weak.strong_count() > 0);
            match locks.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keyed_locks_serialise_one_key_only() {
        let locks = Arc::new(KeyedLocks::default());
        let a = locks.lock("a".into()).await;
        let _b = locks.lock("b".into()).await; // another key is not blocked
        let locks2 = locks.clone();
        let waiter = tokio::spawn(async move { locks2.lock("a".into()).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn open_creates_the_layout_and_clears_tmp() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp/layer-x.partial/sub")).unwrap();
        std::fs::write(dir.path().join("tmp/blob-y.partial"), b"half").unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        assert!(dir.path().join("blobs/sha256").is_dir());
        assert!(dir.path().join("layers").is_dir());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(store.root(), dir.path());
    }

    #[test]
    fn pull_can_be_spawned() {
        fn assert_send<T: Send + 'static>(_: &T) {}
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let pull = async move { store.pull("x", &RegistryAuth::Anonymous).await };
        assert_send(&pull);
    }

    #[test]
    fn get_needs_a_pinned_reference_and_is_none_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let e = store.get("127.0.0.1:5000/x:latest").unwrap_err();
        assert_eq!(e.kind(), crate::ImageErrorKind::InvalidReference);
        let pinned = format!("127.0.0.1:5000/x@{}", Digest::of(b"nothing"));
        assert!(store.get(&pinned).unwrap().is_none());
    }
}
