//! API SKETCH — to be replaced by the real implementation (see the helper's task).
//!
//! The image piece: registry client, content-addressed blob store, layer unpacking.
#![allow(unused_variables, clippy::unimplemented)]

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Installs ring as rustls' process-wide crypto provider. Idempotent; call once at start-up of
/// every binary that talks TLS.
pub fn install_crypto_provider() {
    unimplemented!()
}

/// Credentials for one registry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RegistryAuth {
    #[default]
    Anonymous,
    Basic { username: String, password: String },
}

/// What the image's config says about how to run it (OCI image config `config` object).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `K=V` strings, in the image's order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `USER` as written in the image: `name`, `uid`, `uid:gid`, `name:group`.
    pub user: Option<String>,
}

/// An image present locally: every layer unpacked.
#[derive(Clone, Debug)]
pub struct Image {
    /// The reference pinned by digest, e.g. `127.0.0.1:5000/hello@sha256:…`.
    pub pinned: String,
    /// The digest the reference resolved to (of the index when a tag names an index).
    pub digest: String,
    pub config: ImageConfig,
    /// Unpacked layer directories, base layer first.
    pub layers: Vec<PathBuf>,
}

/// Coarse classes of image errors, for mapping to API status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageErrorKind {
    InvalidReference,
    NotFound,
    Unauthorized,
    Unreachable,
    Registry,
    NoPlatform,
    Corrupt,
    HostileLayer,
    TooLarge,
    Io,
}

#[derive(Debug, thiserror::Error)]
#[error("image error")]
pub struct ImageError;

impl ImageError {
    pub fn kind(&self) -> ImageErrorKind {
        unimplemented!()
    }
}

/// Blobs under `<root>/blobs`, unpacked layers under `<root>/layers`.
#[derive(Clone, Debug)]
pub struct ImageStore {}

impl ImageStore {
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        unimplemented!()
    }

    pub async fn pull(&self, reference: &str, auth: &RegistryAuth) -> Result<Image, ImageError> {
        unimplemented!()
    }

    pub fn get(&self, pinned: &str) -> Result<Option<Image>, ImageError> {
        unimplemented!()
    }
}
