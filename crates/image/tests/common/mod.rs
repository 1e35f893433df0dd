//! Shared set-up for the image store's integration tests: a real registry on loopback, a store
//! in a temporary directory, and images built and pushed by `wharf_test_support::oci`.
#![allow(dead_code)] // each test binary uses a different part

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use wharf_image::{ImageStore, RegistryAuth};
use wharf_test_support::oci::{BuiltImage, ImageBuilder, Pusher};
use wharf_test_support::registry::Registry;

/// Unpacking creates device nodes, chowns and sets `trusted.*` xattrs: it needs root. A test
/// that cannot run says so and does not pass silently.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: needs root (mknod, chown, trusted.* xattrs)");
    false
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "wharf_image=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A registry, a store and a pusher.
pub struct Env {
    pub registry: Registry,
    pub store: ImageStore,
    pub pusher: Pusher,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> anyhow::Result<Env> {
        init_tracing();
        let registry = Registry::start()?;
        let dir = tempfile::tempdir()?;
        let store = ImageStore::open(&dir.path().join("store"))?;
        let pusher = Pusher::for_registry(&registry);
        Ok(Env {
            registry,
            store,
            pusher,
            dir,
        })
    }

    /// `host/repo:tag`.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.registry.host())
    }

    /// Builds and pushes `image` as `repo:tag`; returns what was pushed and its digest.
    pub async fn push(
        &self,
        repo: &str,
        tag: &str,
        image: ImageBuilder,
    ) -> anyhow::Result<(BuiltImage, String)> {
        let built = image.build()?;
        let digest = self.pusher.push_image(repo, tag, &built).await?;
        Ok((built, digest))
    }

    pub async fn pull(
        &self,
        repo_and_tag: &str,
    ) -> Result<wharf_image::Image, wharf_image::ImageError> {
        self.store
            .pull(&self.reference(repo_and_tag), &RegistryAuth::Anonymous)
            .await
    }

    pub fn store_root(&self) -> PathBuf {
        self.store.root().to_owned()
    }

    /// Entries left in the store's `tmp/` (must be none after any pull, good or bad).
    pub fn tmp_entries(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.store_root().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// Unpacked layer directories in the store.
    pub fn layer_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.store_root().join("layers"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        dirs
    }
}

pub fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}
