//! Building OCI (and Docker v2) images in memory and pushing them to a registry, for tests all
//! over the workspace.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use wharf_test_support::oci::{Entry, ImageBuilder, Layer, Pusher};
//! use wharf_test_support::registry::Registry;
//!
//! let registry = Registry::start()?;
//! let image = ImageBuilder::new()
//!     .layer(Layer::new(vec![Entry::dir("etc"), Entry::file("etc/motd", "hi\n")]))
//!     .cmd(["/bin/sh"])
//!     .build()?;
//! let digest = Pusher::for_registry(&registry).push_image("hello", "latest", &image).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::registry::Registry;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// What BuildKit gives the layers of attestation manifests.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The mtime of every entry the builder writes (reproducible digests).
pub const ENTRY_MTIME: u64 = 1_700_000_000;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One entry of a layer tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        content: Vec<u8>,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    /// Deletes `path` from the layers below (written as `dir/.wh.name`).
    Whiteout {
        path: String,
    },
    /// Hides everything below `dir` in the layers below (written as `dir/.wh..wh..opq`).
    Opaque {
        dir: String,
    },
    /// A character or block device (`entry_type` `Char` or `Block`) or a fifo (`Fifo`).
    Device {
        path: String,
        entry_type: tar::EntryType,
        major: u32,
        minor: u32,
        mode: u32,
    },
    /// `entry`, owned by `uid:gid` instead of root.
    Owned {
        entry: Box<Entry>,
        uid: u64,
        gid: u64,
    },
    /// Written as given, without any validation, for hostile-layer tests: the path and link name
    /// go straight into the header (at most 100 bytes each).
    Raw {
        path: Vec<u8>,
        entry_type: tar::EntryType,
        link_name: Vec<u8>,
        content: Vec<u8>,
        mode: u32,
    },
}

impl Entry {
    pub fn dir(path: &str) -> Entry {
        Entry::dir_mode(path, 0o755)
    }
    pub fn dir_mode(path: &str, mode: u32) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode,
        }
    }
    /// A regular file, mode 0644.
    pub fn file(path: &str, content: impl Into<Vec<u8>>) -> Entry {
        Entry::file_mode(path, content, 0o644)
    }
    /// A regular file, mode 0755.
    pub fn executable(path: &str, content: impl Into<Vec<u8>>) -> Entry {
        Entry::file_mode(path, content, 0o755)
    }
    pub fn file_mode(path: &str, content: impl Into<Vec<u8>>, mode: u32) -> Entry {
        Entry::File {
            path: path.into(),
            content: content.into(),
            mode,
        }
    }
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::Hardlink {
            path: path.into(),
            target: target.into(),
        }
    }
    pub fn whiteout(path: &str) -> Entry {
        Entry::Whiteout { path: path.into() }
    }
    pub fn opaque(dir: &str) -> Entry {
        Entry::Opaque { dir: dir.into() }
    }
    pub fn char_device(path: &str, major: u32, minor: u32) -> Entry {
        Entry::Device {
            path: path.into(),
            entry_type: tar::EntryType::Char,
            major,
            minor,
            mode: 0o666,
        }
    }
    pub fn fifo(path: &str) -> Entry {
        Entry::Device {
            path: path.into(),
            entry_type: tar::EntryType::Fifo,
            major: 0,
            minor: 0,
            mode: 0o600,
        }
    }
    /// This entry, owned by `uid:gid`.
    pub fn owned(self, uid: u64, gid: u64) -> Entry {
        Entry::Owned {
            entry: Box::new(self),
            uid,
            gid,
        }
    }
    pub fn raw(
        path: impl Into<Vec<u8>>,
        entry_type: tar::EntryType,
        link_name: impl Into<Vec<u8>>,
        content: impl Into<Vec<u8>>,
    ) -> Entry {
        Entry::Raw {
            path: path.into(),
            entry_type,
            link_name: link_name.into(),
            content: content.into(),
            mode: 0o644,
        }
    }
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

/// OCI or Docker v2 media types for manifests, configs and layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Oci,
    Docker,
}

/// A blob ready to push.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.into(),
            digest: sha256_digest(&bytes),
            bytes,
        }
    }

    /// The descriptor (`mediaType`, `digest`, `size`) that refers to this blob.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// A layer: entries, in order, and how to compress them.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    pub entries: Vec<Entry>,
    pub compression: Compression,
}

/// A layer as pushed: the (compressed) blob and the digest of the uncompressed tar.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    pub blob: Blob,
    pub diff_id: String,
}

impl Layer {
    pub fn new(entries: Vec<Entry>) -> Layer {
        Layer {
            entries,
            compression: Compression::Gzip,
        }
    }

    pub fn compression(mut self, compression: Compression) -> Layer {
        self.compression = compression;
        self
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> anyhow::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            append(&mut b, entry, (0, 0)).with_context(|| format!("writing {entry:?}"))?;
        }
        Ok(b.into_inner()?)
    }

    pub fn build(&self, format: Format) -> anyhow::Result<BuiltLayer> {
        let tar = self.tar()?;
        let diff_id = sha256_digest(&tar);
        let (bytes, media_type) = match (self.compression, format) {
            (Compression::None, Format::Oci) => (tar, "application/vnd.oci.image.layer.v1.tar"),
            (Compression::None, Format::Docker) => {
                (tar, "application/vnd.docker.image.rootfs.diff.tar")
            }
            (Compression::Gzip, _) => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&tar)?;
                let media_type = match format {
                    Format::Oci => "application/vnd.oci.image.layer.v1.tar+gzip",
                    Format::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                };
                (gz.finish()?, media_type)
            }
            // Docker v2 has no zstd media type; registries and runtimes use the OCI one.
            (Compression::Zstd, _) => (
                zstd::encode_all(&tar[..], 3)?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        Ok(BuiltLayer {
            blob: Blob::new(media_type, bytes),
            diff_id,
        })
    }
}

fn header(entry_type: tar::EntryType, mode: u32, size: u64, owner: (u64, u64)) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(entry_type);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(owner.0);
    h.set_gid(owner.1);
    h.set_mtime(ENTRY_MTIME);
    let _ = h.set_device_major(0);
    let _ = h.set_device_minor(0);
    h
}

fn append(b: &mut tar::Builder<Vec<u8>>, entry: &Entry, owner: (u64, u64)) -> anyhow::Result<()> {
    let empty: &[u8] = &[];
    let header = |entry_type, mode, size| header(entry_type, mode, size, owner);
    match entry {
        Entry::Owned { entry, uid, gid } => append(b, entry, (*uid, *gid))?,
        Entry::Device {
            path,
            entry_type,
            major,
            minor,
            mode,
        } => {
            let mut h = header(*entry_type, *mode, 0);
            h.set_device_major(*major)?;
            h.set_device_minor(*minor)?;
            b.append_data(&mut h, path, empty)?;
        }
        Entry::Dir { path, mode } => {
            let mut h = header(tar::EntryType::Directory, *mode, 0);
            let path = format!("{}/", path.trim_end_matches('/'));
            b.append_data(&mut h, path, empty)?;
        }
        Entry::File {
            path,
            content,
            mode,
        } => {
            let mut h = header(tar::EntryType::Regular, *mode, content.len() as u64);
            b.append_data(&mut h, path, &content[..])?;
        }
        Entry::Symlink { path, target } => {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, path, target)?;
        }
        Entry::Hardlink { path, target } => {
            let mut h = header(tar::EntryType::Link, 0o644, 0);
            b.append_link(&mut h, path, target)?;
        }
        Entry::Whiteout { path } => {
            let (dir, name) = split_parent(path);
            let mut h = header(tar::EntryType::Regular, 0o600, 0);
            b.append_data(&mut h, format!("{dir}.wh.{name}"), empty)?;
        }
        Entry::Opaque { dir } => {
            let dir = dir.trim_end_matches('/');
            let prefix = if dir.is_empty() || dir == "." {
                String::new()
            } else {
                format!("{dir}/")
            };
            let mut h = header(tar::EntryType::Regular, 0o600, 0);
            b.append_data(&mut h, format!("{prefix}.wh..wh..opq"), empty)?;
        }
        Entry::Raw {
            path,
            entry_type,
            link_name,
            content,
            mode,
        } => {
            let mut h = header(*entry_type, *mode, content.len() as u64);
            let gnu = h.as_gnu_mut().context("gnu header")?;
            ensure!(
                path.len() <= gnu.name.len(),
                "raw path longer than 100 bytes"
            );
            ensure!(
                link_name.len() <= gnu.linkname.len(),
                "raw link name longer than 100 bytes"
            );
            gnu.name[..path.len()].copy_from_slice(path);
            gnu.linkname[..link_name.len()].copy_from_slice(link_name);
            h.set_cksum();
            b.append(&h, &content[..])?;
        }
    }
    Ok(())
}

/// `"a/b/c"` → `("a/b/", "c")`, `"c"` → `("", "c")`.
fn split_parent(path: &str) -> (&str, &str) {
    let path = path.trim_end_matches('/');
    match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    }
}

/// An image to build: layers (base first) and the run configuration.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    pub layers: Vec<Layer>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub os: String,
    pub architecture: String,
    pub format: Format,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder {
            layers: Vec::new(),
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            working_dir: None,
            user: None,
            os: "linux".into(),
            architecture: "amd64".into(),
            format: Format::Oci,
        }
    }
}

fn strings<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}

impl ImageBuilder {
    /// An empty linux/amd64 OCI image.
    pub fn new() -> ImageBuilder {
        ImageBuilder::default()
    }
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }
    pub fn entrypoint<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.entrypoint = Some(strings(args));
        self
    }
    pub fn cmd<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.cmd = Some(strings(args));
        self
    }
    /// Adds one `K=V`.
    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.into());
        self
    }
    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.into());
        self
    }
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }
    pub fn platform(mut self, os: &str, architecture: &str) -> Self {
        self.os = os.into();
        self.architecture = architecture.into();
        self
    }
    /// Docker v2 media types (`application/vnd.docker.distribution.manifest.v2+json`).
    pub fn docker_v2(mut self) -> Self {
        self.format = Format::Docker;
        self
    }

    /// The config JSON (as Docker and BuildKit write it).
    pub fn config_json(&self, diff_ids: &[String]) -> Value {
        let mut config = serde_json::Map::new();
        if let Some(e) = &self.entrypoint {
            config.insert("Entrypoint".into(), json!(e));
        }
        if let Some(c) = &self.cmd {
            config.insert("Cmd".into(), json!(c));
        }
        if !self.env.is_empty() {
            config.insert("Env".into(), json!(self.env));
        }
        if let Some(w) = &self.working_dir {
            config.insert("WorkingDir".into(), json!(w));
        }
        if let Some(u) = &self.user {
            config.insert("User".into(), json!(u));
        }
        json!({
            "architecture": self.architecture,
            "os": self.os,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "wharf-test-support"}],
        })
    }

    pub fn build(&self) -> anyhow::Result<BuiltImage> {
        let layers = self
            .layers
            .iter()
            .map(|l| l.build(self.format))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let (manifest_type, config_type) = match self.format {
            Format::Oci => (OCI_MANIFEST, OCI_CONFIG),
            Format::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
        };
        let config = Blob::new(
            config_type,
            serde_json::to_vec(&self.config_json(&diff_ids))?,
        );
        let manifest = manifest_json(manifest_type, &config, layers.iter().map(|l| &l.blob));
        Ok(BuiltImage {
            manifest: Blob::new(manifest_type, serde_json::to_vec(&manifest)?),
            config,
            layers,
            os: self.os.clone(),
            architecture: self.architecture.clone(),
        })
    }
}

fn manifest_json<'a>(
    media_type: &str,
    config: &Blob,
    layers: impl Iterator<Item = &'a Blob>,
) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": layers.map(Blob::descriptor).collect::<Vec<_>>(),
    })
}

/// An image ready to push.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// The manifest; its digest is what the image is pinned by.
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<BuiltLayer>,
    pub os: String,
    pub architecture: String,
}

impl BuiltImage {
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }
    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}

/// A multi-platform index (or Docker manifest list) over several images, optionally with a
/// BuildKit-style `unknown/unknown` attestation entry.
#[derive(Clone, Debug, Default)]
pub struct IndexBuilder {
    pub images: Vec<BuiltImage>,
    pub attestation: bool,
    pub format: Format,
}

/// An index ready to push: the index itself and every manifest it refers to.
#[derive(Clone, Debug)]
pub struct BuiltIndex {
    pub index: Blob,
    pub images: Vec<BuiltImage>,
    /// The attestation manifest and its blobs, if any.
    pub attestation: Option<(Blob, Vec<Blob>)>,
}

impl IndexBuilder {
    pub fn new() -> IndexBuilder {
        IndexBuilder::default()
    }
    pub fn image(mut self, image: BuiltImage) -> Self {
        self.images.push(image);
        self
    }
    /// Adds an attestation manifest for the first image, as `docker buildx` does.
    pub fn with_attestation(mut self) -> Self {
        self.attestation = true;
        self
    }
    pub fn docker_manifest_list(mut self) -> Self {
        self.format = Format::Docker;
        self
    }

    pub fn build(&self) -> anyhow::Result<BuiltIndex> {
        let mut entries: Vec<Value> = self
            .images
            .iter()
            .map(|image| {
                let mut d = image.manifest.descriptor();
                d["platform"] = json!({"architecture": image.architecture, "os": image.os});
                d
            })
            .collect();
        let attestation = if self.attestation {
            let subject = self
                .images
                .first()
                .context("an attestation needs an image")?;
            let statement = Blob::new(
                IN_TOTO,
                serde_json::to_vec(&json!({
                    "_type": "https://in-toto.io/Statement/v0.1",
                    "predicateType": "https://spdx.dev/Document",
                    "subject": [{"digest": {"sha256": subject.digest().trim_start_matches("sha256:")}}],
                }))?,
            );
            let config = Blob::new(
                OCI_CONFIG,
                serde_json::to_vec(&json!({
                    "architecture": "unknown",
                    "os": "unknown",
                    "config": {},
                    "rootfs": {"type": "layers", "diff_ids": [statement.digest]},
                }))?,
            );
            let manifest = Blob::new(
                OCI_MANIFEST,
                serde_json::to_vec(&manifest_json(
                    OCI_MANIFEST,
                    &config,
                    [&statement].into_iter(),
                ))?,
            );
            let mut d = manifest.descriptor();
            d["platform"] = json!({"architecture": "unknown", "os": "unknown"});
            d["annotations"] = json!({
                "vnd.docker.reference.digest": subject.digest(),
                "vnd.docker.reference.type": "attestation-manifest",
            });
            entries.push(d);
            Some((manifest, vec![config, statement]))
        } else {
            None
        };
        let media_type = match self.format {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        };
        let index = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": entries});
        Ok(BuiltIndex {
            index: Blob::new(media_type, serde_json::to_vec(&index)?),
            images: self.images.clone(),
            attestation,
        })
    }
}

/// Pushes blobs and manifests over the distribution HTTP API (plain HTTP: loopback only).
#[derive(Clone, Debug)]
pub struct Pusher {
    base: String,
    client: reqwest::Client,
    credentials: Option<(String, String)>,
}

impl Pusher {
    /// A pusher for the registry at `host` (`127.0.0.1:PORT`), anonymous.
    pub fn new(host: &str) -> Pusher {
        // reqwest is built without a crypto provider (see the root Cargo.toml).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a plain reqwest client builds");
        Pusher {
            base: format!("http://{host}"),
            client,
            credentials: None,
        }
    }

    /// A pusher for `registry`, with its credentials if it has any.
    pub fn for_registry(registry: &Registry) -> Pusher {
        let pusher = Pusher::new(&registry.host());
        match registry.credentials() {
            Some((user, pass)) => pusher.with_basic_auth(user, pass),
            None => pusher,
        }
    }

    pub fn with_basic_auth(mut self, user: &str, pass: &str) -> Pusher {
        self.credentials = Some((user.into(), pass.into()));
        self
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url);
        match &self.credentials {
            Some((user, pass)) => request.basic_auth(user, Some(pass)),
            None => request,
        }
    }

    /// Uploads a blob (monolithic POST + PUT) unless the repository has it; returns its digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_digest(bytes);
        let head = self
            .request(
                reqwest::Method::HEAD,
                &format!("{}/v2/{repo}/blobs/{digest}", self.base),
            )
            .send()
            .await?;
        if head.status().is_success() {
            return Ok(digest);
        }
        let start = self
            .request(
                reqwest::Method::POST,
                &format!("{}/v2/{repo}/blobs/uploads/", self.base),
            )
            .header("Content-Length", "0")
            .send()
            .await?;
        ensure!(
            start.status() == reqwest::StatusCode::ACCEPTED,
            "starting an upload to {repo} answered {}: {}",
            start.status(),
            start.text().await.unwrap_or_default()
        );
        let location = start
            .headers()
            .get("location")
            .context("upload without Location")?
            .to_str()?
            .to_owned();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = self
            .request(
                reqwest::Method::PUT,
                &format!("{location}{separator}digest={digest}"),
            )
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await?;
        ensure!(
            put.status() == reqwest::StatusCode::CREATED,
            "uploading blob {digest} to {repo} answered {}: {}",
            put.status(),
            put.text().await.unwrap_or_default()
        );
        Ok(digest)
    }

    /// Puts a manifest (or index) under `reference` (a tag or its digest); returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> anyhow::Result<String> {
        let digest = sha256_digest(bytes);
        let response = self
            .request(
                reqwest::Method::PUT,
                &format!("{}/v2/{repo}/manifests/{reference}", self.base),
            )
            .header("Content-Type", media_type)
            .body(bytes.to_vec())
            .send()
            .await?;
        let status = response.status();
        if status != reqwest::StatusCode::CREATED {
            bail!(
                "putting manifest {repo}:{reference} answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        if let Some(header) = response.headers().get("docker-content-digest") {
            ensure!(
                header.to_str()? == digest,
                "the registry computed {header:?} for manifest {digest}"
            );
        }
        Ok(digest)
    }

    /// Pushes the image's blobs and its manifest as `repo:tag`; returns the manifest digest.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        image: &BuiltImage,
    ) -> anyhow::Result<String> {
        self.push_image_blobs(repo, image).await?;
        self.push_manifest(repo, tag, &image.manifest.media_type, &image.manifest.bytes)
            .await
    }

    async fn push_image_blobs(&self, repo: &str, image: &BuiltImage) -> anyhow::Result<()> {
        for layer in &image.layers {
            self.push_blob(repo, &layer.blob.bytes).await?;
        }
        self.push_blob(repo, &image.config.bytes).await?;
        Ok(())
    }

    /// Pushes every image of the index by digest, the attestation if any, then the index as
    /// `repo:tag`; returns the index digest.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        index: &BuiltIndex,
    ) -> anyhow::Result<String> {
        for image in &index.images {
            self.push_image_blobs(repo, image).await?;
            self.push_manifest(
                repo,
                image.digest(),
                &image.manifest.media_type,
                &image.manifest.bytes,
            )
            .await?;
        }
        if let Some((manifest, blobs)) = &index.attestation {
            for blob in blobs {
                self.push_blob(repo, &blob.bytes).await?;
            }
            self.push_manifest(
                repo,
                &manifest.digest,
                &manifest.media_type,
                &manifest.bytes,
            )
            .await?;
        }
        self.push_manifest(repo, tag, &index.index.media_type, &index.index.bytes)
            .await
    }
}

/// The entries of the host directory `dir` and everything below it, at `prefix` in the image
/// (modes kept, symlinks as symlinks), leaving out what `keep` refuses (given the path below
/// `dir`, e.g. `__pycache__` or `lib/test`).
pub fn tree_entries(
    dir: &Path,
    prefix: &str,
    keep: &dyn Fn(&Path) -> bool,
    out: &mut Vec<Entry>,
) -> anyhow::Result<()> {
    fn walk(
        root: &Path,
        dir: &Path,
        prefix: &str,
        keep: &dyn Fn(&Path) -> bool,
        out: &mut Vec<Entry>,
    ) -> anyhow::Result<()> {
        out.push(Entry::dir(prefix));
        let mut children: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let host = child.path();
            if !keep(host.strip_prefix(root).unwrap_or(&host)) {
                continue;
            }
            let path = format!("{prefix}/{}", child.file_name().to_string_lossy());
            let meta = std::fs::symlink_metadata(&host)?;
            if meta.is_symlink() {
                let target = std::fs::read_link(&host)?;
                out.push(Entry::symlink(&path, &target.to_string_lossy()));
            } else if meta.is_dir() {
                walk(root, &host, &path, keep, out)?;
            } else if meta.is_file() {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = meta.permissions().mode() & 0o777;
                out.push(Entry::file_mode(&path, std::fs::read(&host)?, mode));
            }
        }
        Ok(())
    }
    walk(dir, dir, prefix.trim_start_matches('/'), keep, out)
}

/// A layer holding `host_binary` at `image_path` plus every shared library `ldd` lists for it
/// (at the paths the dynamic loader will look for them), so that a dynamically linked host
/// binary runs inside an image that has nothing else.
pub fn binary_layer(host_binary: &Path, image_path: &str) -> anyhow::Result<Layer> {
    let binary =
        std::fs::read(host_binary).with_context(|| format!("reading {}", host_binary.display()))?;
    let mut files: Vec<(String, Vec<u8>)> =
        vec![(image_path.trim_start_matches('/').to_owned(), binary)];
    for library in shared_libraries(host_binary)? {
        let content = std::fs::read(&library).with_context(|| format!("reading {library}"))?;
        files.push((library.trim_start_matches('/').to_owned(), content));
    }
    let mut dirs = BTreeSet::new();
    for (path, _) in &files {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
    }
    let mut entries: Vec<Entry> = dirs.iter().map(|d| Entry::dir(d)).collect();
    let mut seen = BTreeSet::new();
    for (path, content) in files {
        if seen.insert(path.clone()) {
            entries.push(Entry::executable(&path, content));
        }
    }
    Ok(Layer::new(entries))
}

/// The absolute paths of the shared libraries (and the loader) `ldd` reports for `binary`;
/// empty for a static binary.
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<String>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || stdout.contains("statically linked") {
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
            || stdout.contains("statically linked")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {stderr}", binary.display());
    }
    let mut libraries = Vec::new();
    for line in stdout.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(path.to_owned());
        }
    }
    Ok(libraries)
}

/// A layer with the static busybox at `bin/busybox` and `bin/<applet>` symlinks for a few common
/// applets (`sh`, `cat`, `echo`, `ls`, `sleep`, `env`, `id`, `mkdir`, `touch`, `rm`).
pub fn busybox_layer() -> anyhow::Result<Layer> {
    const BUSYBOX: &str = "/bin/busybox";
    let binary = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX}: run scripts/setup.sh (busybox-static)"))?;
    let mut entries = vec![Entry::dir("bin"), Entry::executable("bin/busybox", binary)];
    for applet in [
        "sh", "cat", "echo", "ls", "sleep", "env", "id", "mkdir", "touch", "rm",
    ] {
        entries.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    Ok(Layer::new(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_reproducible_and_diff_ids_are_of_the_tar() {
        let layer = Layer::new(vec![Entry::dir("a"), Entry::file("a/b", "x")]);
        let one = layer.build(Format::Oci).unwrap();
        let two = layer.build(Format::Oci).unwrap();
        assert_eq!(one.blob.digest, two.blob.digest);
        assert_eq!(one.diff_id, sha256_digest(&layer.tar().unwrap()));
        let plain = layer
            .clone()
            .compression(Compression::None)
            .build(Format::Oci)
            .unwrap();
        assert_eq!(plain.blob.digest, plain.diff_id);
    }

    #[test]
    fn whiteouts_and_raw_entries_are_written_as_named() {
        let layer = Layer::new(vec![
            Entry::whiteout("etc/passwd"),
            Entry::opaque("usr/"),
            Entry::raw("../evil", tar::EntryType::Regular, "", "x"),
        ]);
        let tar = layer.tar().unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect();
        assert_eq!(names, ["etc/.wh.passwd", "usr/.wh..wh..opq", "../evil"]);
    }

    #[test]
    fn ldd_lists_the_loader_and_libc() {
        let libraries = shared_libraries(Path::new("/bin/ls")).unwrap();
        assert!(
            libraries.iter().any(|l| l.contains("libc.so")),
            "{libraries:?}"
        );
        assert!(
            libraries.iter().any(|l| l.contains("ld-linux")),
            "{libraries:?}"
        );
        assert!(
            shared_libraries(Path::new("/bin/busybox"))
                .unwrap()
                .is_empty()
        );
    }
}
