//! The cache and its garbage collection: which images the store holds (`images.json`), who is
//! using them right now (leases), and removing every image, blob and unpacked layer that nobody
//! uses ([`ImageStore::begin_prune`]).
//!
//! # Who keeps what
//!
//! Blobs are shared by digest and unpacked layers by diff id, so "the image nobody uses" is not
//! a set of files: prune computes what the images still in use reach (manifests, config, layer
//! blobs, layer directories) and removes everything else. An image is in use when
//!
//! - the caller names it (the API passes the pinned images of every deployed function), or
//! - someone holds an [`ImageLease`] on it: the pool holds one per instance for the instance's
//!   whole life (so a function removed or updated while its instances still run keeps its
//!   layers, which are their overlay lowerdirs), and a deploy holds the one
//!   [`ImageStore::pull_leased`] returns until the function is stored.
//!
//! # Why pulls and prunes exclude each other
//!
//! A pull skips blobs and layers that are already present; a prune running at the same time
//! could delete one of them right after the pull decided to reuse it, or delete the fresh
//! layers of an image that no function names yet. So pulls (and lease acquisitions) share a
//! lock that a prune holds exclusively. A prune does not *queue* for the lock: a queued writer
//! would make every new pull and cold start wait behind the slowest pull in progress. It polls
//! instead ([`PRUNE_POLL`]), so a prune waits for the pulls in progress, and cold starts wait
//! only for the prune itself (unlinking files), never for a pull of some other image.
//!
//! # Crash safety
//!
//! `images.json` is written to `tmp/` and renamed over the old one. A layer being removed is
//! first renamed into `tmp/` and deleted there, so a daemon killed half-way through a prune
//! leaves a complete layer or none under `layers/`, never a half one that `get` would take for
//! whole; `ImageStore::open` empties `tmp/`. The index is rewritten before anything is deleted:
//! a crash leaves unreferenced files, which the next prune removes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::{ImageStore, parse_config, parse_digest, parse_document};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::manifest::Document;
use crate::platform::select_platform;
use crate::reference::ImageReference;
use crate::registry::MAX_MANIFEST_BYTES;
use crate::store::MAX_CONFIG_BYTES;

/// The list of images in the store, under the store's root.
pub const INDEX_FILE: &str = "images.json";
/// Written into [`INDEX_FILE`]; a file with a larger number is refused, not overwritten.
pub const INDEX_FORMAT: u32 = 1;
/// How long a prune waits for pulls before it says so in the log.
const PRUNE_PATIENCE: Duration = Duration::from_secs(5);
/// Whether an index that could not be read is damaged (does not parse: may be started afresh).
struct Damaged(bool);
/// How often a prune tries again to get the store to itself while pulls are running.
pub const PRUNE_POLL: Duration = Duration::from_millis(25);

/// The lock pulls share and prunes hold alone, the leases, and the index writer's lock.
#[derive(Debug, Default)]
pub(crate) struct Gc {
    lock: Arc<RwLock<()>>,
    leases: Arc<Mutex<HashMap<String, usize>>>,
    /// Serialises read-modify-write of the index.
    index: Mutex<()>,
}

impl Gc {
    /// Held by a pull for its whole duration: no prune runs meanwhile.
    pub(crate) async fn shared(&self) -> OwnedRwLockReadGuard<()> {
        self.lock.clone().read_owned().await
    }

    /// A lease on `pinned`, taken while the caller holds [`Gc::shared`] (or the prune's lock).
    fn lease_held(&self, pinned: &str) -> ImageLease {
        let key = lease_key(pinned);
        *self
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        ImageLease {
            key,
            leases: self.leases.clone(),
        }
    }

    fn lease_count(&self, pinned: &str) -> usize {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.get(&lease_key(pinned)).copied().unwrap_or(0)
    }

    fn leased(&self) -> Vec<String> {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.keys().cloned().collect()
    }
}

/// Leases are counted by the canonical pinned reference (as `pull` returns it).
/// The digest a pinned reference names, a registry's or an archive's.
fn pinned_digest(pinned: &str) -> Option<Digest> {
    if let Ok(Some(archive)) = super::archive::parse(pinned) {
        return archive.digest;
    }
    ImageReference::parse(pinned).ok()?.digest
}

fn lease_key(pinned: &str) -> String {
    if matches!(super::archive::parse(pinned), Ok(Some(_))) {
        return pinned.to_owned();
    }
    match ImageReference::parse(pinned) {
        Ok(r) => match &r.digest {
            Some(d) => r.pinned(d),
            None => pinned.to_owned(),
        },
        Err(_) => pinned.to_owned(),
    }
}

/// While it lives, a prune keeps the image's blobs and layers. Dropping it ends the use.
pub struct ImageLease {
    key: String,
    leases: Arc<Mutex<HashMap<String, usize>>>,
}

impl std::fmt::Debug for ImageLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ImageLease").field(&self.key).finish()
    }
}

impl Drop for ImageLease {
    fn drop(&mut self) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = leases.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                leases.remove(&self.key);
            }
        }
    }
}

/// One image of the store, as [`ImageStore::list`] shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredImage {
    /// `registry/repository@sha256:…`
    pub pinned: String,
    /// What the reference resolved to (the index's digest when it named an index).
    pub digest: String,
    /// Disk space of its blobs (manifests, config, compressed layers) and unpacked layers;
    /// parts shared with other images are counted for each of them.
    pub size_bytes: u64,
    pub layers: usize,
    /// Every blob and layer is present (`get` finds it offline).
    pub complete: bool,
    /// Instances running on it and deploys in progress.
    pub in_use: usize,
    /// When it was last pulled, in milliseconds since the Unix epoch.
    pub pulled_at_ms: u64,
}

/// What a prune removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Pinned references no longer in the store's list.
    pub images_removed: Vec<String>,
    pub blobs_removed: usize,
    pub layers_removed: usize,
    /// Disk space of the removed blobs and layers.
    pub bytes_freed: u64,
}

/// The store to a prune alone: no pull runs and no lease is taken until it is dropped.
pub struct Pruning {
    store: ImageStore,
    _exclusive: OwnedRwLockWriteGuard<()>,
}

impl std::fmt::Debug for Pruning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pruning")
            .field("root", &self.store.root())
            .finish()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    format: u32,
    images: Vec<IndexEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IndexEntry {
    pinned: String,
    digest: String,
    pulled_at_ms: u64,
}

/// What an image reaches in the store.
#[derive(Debug, Default)]
struct Parts {
    blobs: Vec<Digest>,
    diff_ids: Vec<Digest>,
    layers: usize,
    complete: bool,
}

impl ImageStore {
    /// A lease on the image pinned by `pinned`: a prune keeps it while the lease lives. Waits
    /// only while a prune is running.
    pub async fn lease(&self, pinned: &str) -> ImageLease {
        let _shared = self.inner.gc.shared().await;
        self.inner.gc.lease_held(pinned)
    }

    /// [`ImageStore::pull`], and a lease on the image taken before the pull lets a prune run:
    /// hold it until the image is recorded wherever keeps it in use (a deployed function).
    pub async fn pull_leased(
        &self,
        reference: &str,
        auth: &crate::RegistryAuth,
    ) -> Result<(crate::Image, ImageLease), ImageError> {
        self.pull_leased_with(reference, auth, &crate::PullOptions::default())
            .await
    }

    /// [`ImageStore::pull_leased`], reporting progress to the subscriber in `options`.
    pub async fn pull_leased_with(
        &self,
        reference: &str,
        auth: &crate::RegistryAuth,
        options: &crate::PullOptions,
    ) -> Result<(crate::Image, ImageLease), ImageError> {
        let _shared = self.inner.gc.shared().await;
        let image = self.pull_unlocked(reference, auth, options).await?;
        // Reads, writes and syncs images.json: off the async workers.
        let (store, recorded) = (self.clone(), image.clone());
        tokio::task::spawn_blocking(move || store.record(&recorded))
            .await
            .map_err(|e| ImageError::io("record", self.index_path(), std::io::Error::other(e)))??;
        let lease = self.inner.gc.lease_held(&image.pinned);
        Ok((image, lease))
    }

    /// Every image of the store's list, with its size on disk. Reads the file system: call it
    /// off the async workers.
    pub fn list(&self) -> Result<Vec<StoredImage>, ImageError> {
        let index = self.read_index()?;
        let mut layer_sizes: HashMap<Digest, u64> = HashMap::new();
        let mut images = Vec::with_capacity(index.images.len());
        for entry in index.images {
            let parts = self.parts(&entry.pinned)?.unwrap_or_default();
            let mut size = 0;
            for blob in &parts.blobs {
                size += disk_usage(&self.inner.blobs.path(blob));
            }
            for diff_id in &parts.diff_ids {
                size += *layer_sizes
                    .entry(diff_id.clone())
                    .or_insert_with(|| disk_usage(&self.layer_dir(diff_id)));
            }
            images.push(StoredImage {
                in_use: self.inner.gc.lease_count(&entry.pinned),
                pinned: entry.pinned,
                digest: entry.digest,
                size_bytes: size,
                layers: parts.layers,
                complete: parts.complete,
                pulled_at_ms: entry.pulled_at_ms,
            });
        }
        Ok(images)
    }

    /// Waits until no pull is running and gets the store to itself; see the module docs.
    pub async fn begin_prune(&self) -> Pruning {
        let started = std::time::Instant::now();
        let mut said = false;
        loop {
            if let Ok(guard) = self.inner.gc.lock.clone().try_write_owned() {
                return Pruning {
                    store: self.clone(),
                    _exclusive: guard,
                };
            }
            if !said && started.elapsed() >= PRUNE_PATIENCE {
                tracing::info!(
                    waited_s = started.elapsed().as_secs(),
                    "the prune waits for the image pulls in progress to finish"
                );
                said = true;
            }
            tokio::time::sleep(PRUNE_POLL).await;
        }
    }

    /// Adds (or refreshes) a pulled image in the index.
    fn record(&self, image: &crate::Image) -> Result<(), ImageError> {
        let _writer = self
            .inner
            .gc
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut index = self.read_index_to_update()?;
        index.images.retain(|e| e.pinned != image.pinned);
        index.images.push(IndexEntry {
            pinned: image.pinned.clone(),
            digest: image.digest.clone(),
            pulled_at_ms: unix_ms(SystemTime::now()),
        });
        self.write_index(&index)
    }

    fn index_path(&self) -> std::path::PathBuf {
        self.inner.root.join(INDEX_FILE)
    }

    /// The index, to change it: a damaged one (it does not parse) is started afresh, since
    /// only the listing of unused images is lost (a prune still finds their files); one written
    /// by a newer Wharf, or one that cannot be read, is an error and is left alone.
    fn read_index_to_update(&self) -> Result<IndexFile, ImageError> {
        match self.read_index_checked() {
            Ok(index) => Ok(index),
            Err((e, Damaged(true))) => {
                tracing::warn!(error = %e, "the image list is damaged: starting a new one");
                Ok(IndexFile::default())
            }
            Err((e, Damaged(false))) => Err(e),
        }
    }

    fn read_index(&self) -> Result<IndexFile, ImageError> {
        self.read_index_checked().map_err(|(e, _)| e)
    }

    fn read_index_checked(&self) -> Result<IndexFile, (ImageError, Damaged)> {
        let path = self.index_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IndexFile::default()),
            Err(e) => return Err((ImageError::io("read", path, e), Damaged(false))),
        };
        let invalid = |why: String, damaged: bool| {
            let e = ImageError::io(
                "read the image list",
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, why),
            );
            (e, Damaged(damaged))
        };
        let damaged = |e: serde_json::Error| {
            invalid(
                format!("{e} (remove the file: the next pull and prune rebuild it from the store)"),
                true,
            )
        };
        // The format first: a newer Wharf's list may not parse as this one's, and must not be
        // taken for a damaged one.
        #[derive(Deserialize)]
        struct Format {
            #[serde(default)]
            format: u32,
        }
        let Format { format } = serde_json::from_slice(&bytes).map_err(damaged)?;
        if format > INDEX_FORMAT {
            return Err(invalid(
                format!(
                    "it has format {format}, this Wharf reads format {INDEX_FORMAT} (a newer \
                     Wharf wrote it: run that Wharf, or move the file away to start a new list)"
                ),
                false,
            ));
        }
        let index: IndexFile = serde_json::from_slice(&bytes).map_err(damaged)?;
        Ok(index)
    }

    /// Writes the index to `tmp/` and renames it into place.
    fn write_index(&self, index: &IndexFile) -> Result<(), ImageError> {
        let index = IndexFile {
            format: INDEX_FORMAT,
            images: index.images.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&index).map_err(|e| {
            ImageError::io("serialise the image list for", self.index_path(), e.into())
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix("images-")
            .suffix(".json")
            .tempfile_in(&self.inner.tmp)
            .map_err(|e| ImageError::io("create a temporary file in", &self.inner.tmp, e))?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| ImageError::io("write", tmp.path().to_owned(), e))?;
        tmp.persist(self.index_path())
            .map_err(|e| ImageError::io("rename the image list to", self.index_path(), e.error))?;
        Ok(())
    }

    /// The blobs and layers `pinned` reaches in the store; `None` if not even its manifest is
    /// here. Present parts are listed even when others are missing.
    fn parts(&self, pinned: &str) -> Result<Option<Parts>, ImageError> {
        let not_pinned = || ImageError::InvalidReference {
            reference: pinned.to_owned(),
            reason: "it is not pinned by digest (expected registry/repository@sha256:… or \
                     TRANSPORT:PATH@sha256:…)"
                .into(),
        };
        // An image archive's blobs are in the store like a registry image's.
        let (r, digest): (String, Digest) = match super::archive::parse(pinned)? {
            Some(archive) => {
                let digest = archive.digest.clone().ok_or_else(not_pinned)?;
                (archive.to_string(), digest)
            }
            None => {
                let r = ImageReference::parse(pinned).map_err(|reason| {
                    ImageError::InvalidReference {
                        reference: pinned.to_owned(),
                        reason,
                    }
                })?;
                let digest = r.digest.clone().ok_or_else(not_pinned)?;
                (r.to_string(), digest)
            }
        };
        let Some(bytes) = self.read_blob(&digest, MAX_MANIFEST_BYTES)? else {
            return Ok(None);
        };
        let mut parts = Parts {
            blobs: vec![digest.clone()],
            ..Parts::default()
        };
        let (manifest_digest, manifest) = match parse_document(&r, &digest, &bytes)? {
            Document::Manifest(m) => (digest, m),
            Document::Index(index) => {
                let Ok(entry) = select_platform(&index) else {
                    return Ok(Some(parts));
                };
                let child = parse_digest(&r, "index", &digest, &entry.digest)?;
                parts.blobs.push(child.clone());
                let Some(bytes) = self.read_blob(&child, MAX_MANIFEST_BYTES)? else {
                    return Ok(Some(parts));
                };
                match parse_document(&r, &child, &bytes)? {
                    Document::Manifest(m) => (child, m),
                    Document::Index(_) => return Ok(Some(parts)),
                }
            }
        };
        let config_digest =
            parse_digest(&r, "manifest", &manifest_digest, &manifest.config.digest)?;
        parts.blobs.push(config_digest.clone());
        parts.layers = manifest.layers.len();
        let mut complete = self.inner.blobs.contains(&config_digest);
        for layer in &manifest.layers {
            parts.blobs.push(parse_digest(
                &r,
                "manifest",
                &manifest_digest,
                &layer.digest,
            )?);
        }
        if let Some(config) = self.read_blob(&config_digest, MAX_CONFIG_BYTES)? {
            let config = parse_config(&r, &config_digest, &config)?;
            for diff_id in config.rootfs.diff_ids.as_deref().unwrap_or_default() {
                let diff_id = parse_digest(&r, "config", &config_digest, diff_id)?;
                complete &= self.layer_dir(&diff_id).is_dir();
                parts.diff_ids.push(diff_id);
            }
            complete &= parts.diff_ids.len() == parts.layers;
        }
        // A layer blob may be pruned once unpacked; the image is whole without it.
        parts.complete = complete;
        Ok(Some(parts))
    }
}

impl Pruning {
    /// Removes every image, blob and unpacked layer that neither `in_use` (pinned references,
    /// e.g. of the deployed functions) nor a lease reaches. Reads and deletes files: call it
    /// off the async workers. An error before anything is removed leaves the store as it was;
    /// a reference in `in_use` that is not pinned, or a stored manifest that cannot be read,
    /// stops the prune before it removes anything.
    pub fn run(self, in_use: &[String]) -> Result<PruneReport, ImageError> {
        let store = &self.store;
        let inner = &store.inner;
        let roots: BTreeSet<String> = in_use
            .iter()
            .map(|p| lease_key(p))
            .chain(inner.gc.leased())
            .collect();
        let mut keep_blobs = HashSet::new();
        let mut keep_layers = HashSet::new();
        for root in &roots {
            if let Some(parts) = store.parts(root)? {
                keep_blobs.extend(parts.blobs.iter().map(|d| d.hex().to_owned()));
                keep_layers.extend(parts.diff_ids.iter().map(|d| d.hex().to_owned()));
            }
        }

        let mut report = PruneReport::default();
        let _writer = inner.gc.index.lock().unwrap_or_else(|e| e.into_inner());
        let mut index = store.read_index_to_update()?;
        let listed: HashSet<String> = index.images.iter().map(|e| e.pinned.clone()).collect();
        let (kept, removed): (Vec<_>, Vec<_>) = index
            .images
            .into_iter()
            .partition(|e| roots.contains(&lease_key(&e.pinned)));
        index.images = kept;
        // Images in use that an older Wharf pulled without listing them.
        for root in &roots {
            if !listed.contains(root)
                && let Some(digest) = pinned_digest(root)
                && inner.blobs.contains(&digest)
            {
                index.images.push(IndexEntry {
                    pinned: root.clone(),
                    digest: digest.to_string(),
                    pulled_at_ms: 0,
                });
            }
        }
        report.images_removed = removed.into_iter().map(|e| e.pinned).collect();
        store.write_index(&index)?;

        let blob_dir = inner.root.join("blobs").join("sha256");
        for (name, path) in digest_named_entries(&blob_dir)? {
            if keep_blobs.contains(&name) {
                continue;
            }
            let size = disk_usage(&path);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    report.blobs_removed += 1;
                    report.bytes_freed += size;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io("remove", path, e)),
            }
        }
        for (name, path) in digest_named_entries(&inner.layers)? {
            if keep_layers.contains(&name) {
                continue;
            }
            let size = disk_usage(&path);
            remove_layer(&path, &inner.tmp)?;
            report.layers_removed += 1;
            report.bytes_freed += size;
        }
        tracing::info!(
            images = report.images_removed.len(),
            blobs = report.blobs_removed,
            layers = report.layers_removed,
            bytes = report.bytes_freed,
            kept_images = roots.len(),
            "pruned the image store"
        );
        Ok(report)
    }
}

/// Entries of `dir` named like a sha256 hex digest (anything else is not the store's).
fn digest_named_entries(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, ImageError> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| ImageError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io("list", dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if Digest::parse(&format!("sha256:{name}")).is_ok() {
            found.push((name, entry.path()));
        }
    }
    Ok(found)
}

/// Moves a layer into `tmp/` (one rename: it is whole or gone) and deletes it there.
fn remove_layer(layer: &Path, tmp: &Path) -> Result<(), ImageError> {
    let trash = tempfile::Builder::new()
        .prefix("gc-")
        .tempdir_in(tmp)
        .map_err(|e| ImageError::io("create a temporary directory in", tmp, e))?;
    let target = trash.path().join("layer");
    match std::fs::rename(layer, &target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io("move into tmp/ for removal", layer, e)),
    }
    let path = trash.path().to_owned();
    trash.close().map_err(|e| ImageError::io("remove", path, e))
}

/// Disk space used by `path` and everything below it (allocated blocks; a file with several
/// links inside counts once). 0 if it does not exist.
fn disk_usage(path: &Path) -> u64 {
    let mut total = 0;
    let mut seen = HashSet::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.blocks() * 512;
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&p)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_and_end_on_drop() {
        let gc = Gc::default();
        let p = format!("127.0.0.1:5000/x@{}", Digest::of(b"x"));
        let a = gc.lease_held(&p);
        let b = gc.lease_held(&p);
        assert_eq!(gc.lease_count(&p), 2);
        assert_eq!(gc.leased(), vec![p.clone()]);
        drop(a);
        assert_eq!(gc.lease_count(&p), 1);
        drop(b);
        assert_eq!(gc.lease_count(&p), 0);
        assert!(gc.leased().is_empty());
    }

    #[tokio::test]
    async fn a_prune_waits_for_pulls_and_leases_wait_for_a_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let pull = store.inner.gc.shared().await;
        let s = store.clone();
        let prune = tokio::spawn(async move { s.begin_prune().await });
        tokio::time::sleep(PRUNE_POLL * 4).await;
        assert!(!prune.is_finished(), "a prune ran during a pull");
        // Polling, not queueing: a new pull is not held up behind the waiting prune.
        let second = tokio::time::timeout(Duration::from_secs(5), store.inner.gc.shared())
            .await
            .expect("a pull waited for a prune that waits for pulls");
        drop((pull, second));
        let pruning = tokio::time::timeout(Duration::from_secs(5), prune)
            .await
            .unwrap()
            .unwrap();
        let p = format!("127.0.0.1:5000/x@{}", Digest::of(b"x"));
        let s = store.clone();
        let lease = tokio::spawn(async move { s.lease(&p).await });
        tokio::time::sleep(PRUNE_POLL * 4).await;
        assert!(!lease.is_finished(), "a lease was taken during a prune");
        let report = pruning.run(&[]).unwrap();
        assert_eq!(report, PruneReport::default());
        tokio::time::timeout(Duration::from_secs(5), lease)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn an_index_from_a_newer_wharf_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let path = dir.path().join(INDEX_FILE);
        std::fs::write(&path, r#"{"format": 99, "images": []}"#).unwrap();
        let e = store.list().unwrap_err().to_string();
        assert!(e.contains("format 99") && e.contains("newer Wharf"), "{e}");
        std::fs::write(&path, "{not json").unwrap();
        let e = store.list().unwrap_err().to_string();
        assert!(
            e.contains("images.json") && e.contains("remove the file"),
            "{e}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"{not json");

        // A pull records into a damaged list by starting a new one, never into a newer one.
        let image = crate::Image {
            pinned: format!("127.0.0.1:5000/x@{}", Digest::of(b"m")),
            digest: Digest::of(b"m").to_string(),
            config: crate::ImageConfig::default(),
            layers: vec![],
        };
        store.record(&image).unwrap();
        assert_eq!(store.read_index().unwrap().images.len(), 1);
        let newer = r#"{"format": 99, "images": [{"pinned": "a@b", "digest": "b"}]}"#;
        std::fs::write(&path, newer).unwrap();
        let e = store.record(&image).unwrap_err().to_string();
        assert!(e.contains("newer Wharf"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), newer);
        let e = futures::executor::block_on(store.begin_prune())
            .run(&[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("newer Wharf"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), newer);
    }

    #[test]
    fn prune_removes_unnamed_files_and_moves_layers_out_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let junk = Digest::of(b"junk");
        std::fs::write(store.inner.blobs.path(&junk), vec![7u8; 10_000]).unwrap();
        let layer = store.layer_dir(&Digest::of(b"layer"));
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::write(layer.join("etc/motd"), b"hi").unwrap();
        // Not named like a digest: not the store's to remove.
        std::fs::write(dir.path().join("blobs/sha256/README"), b"keep").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let report = rt.block_on(store.begin_prune()).run(&[]).unwrap();
        assert_eq!((report.blobs_removed, report.layers_removed), (1, 1));
        assert!(report.bytes_freed >= 10_000, "{report:?}");
        assert!(!layer.exists());
        assert!(dir.path().join("blobs/sha256/README").exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        let e = rt
            .block_on(store.begin_prune())
            .run(&["127.0.0.1:5000/x:latest".into()])
            .unwrap_err();
        assert_eq!(e.kind(), crate::ImageErrorKind::InvalidReference);
    }
}
