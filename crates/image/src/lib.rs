//! The image piece of Wharf: pulls OCI and Docker images from a registry, keeps their blobs in a
//! content-addressed store, and unpacks their layers into directories that overlayfs stacks into
//! a container's root file system.
//!
//! ```text
//! <root>/blobs/sha256/<hex>   manifests, indexes, configs, compressed layers (by digest)
//! <root>/layers/<diff-id>/    one unpacked layer each, shared by every image that has it
//! <root>/tmp/                 work in progress; emptied by `ImageStore::open`
//! <root>/images.json          the images pulled, for `ImageStore::list` and `begin_prune`
//! ```
//!
//! # Why it is built this way
//!
//! **Image bytes are hostile.** A registry, or whoever pushed to it, chooses every byte we
//! receive. So:
//!
//! - *Digests and sizes are verified while streaming*, not after: a blob's bytes are hashed and
//!   counted as they arrive and the download is abandoned as soon as it runs past the size its
//!   descriptor declares. Nothing unverified is ever looked at by name. Manifests and configs,
//!   which are read into memory, are refused above [`MAX_MANIFEST_BYTES`] and
//!   [`MAX_CONFIG_BYTES`] while streaming (manifests are fetched by our own bounded GET, not
//!   by oci-client, which would read them whole).
//!   Digests from manifests become file names only after strict parsing (`sha256:` and 64
//!   lower-case hex digits), so `sha256:../../x` never reaches the file system.
//! - *Everything is written to `tmp/` and renamed into place.* A blob or layer is visible under
//!   its final name only once it is complete and verified (a layer also against the config's
//!   `rootfs.diff_ids`, the sha256 of its uncompressed tar), so a daemon killed mid-pull leaves
//!   only junk in `tmp/`, which the next `open` removes, and never a half layer that looks whole.
//!   Layers are keyed by diff id, so images that share a base share its unpacked directory.
//! - *Tar paths are resolved inside the layer root by the kernel.* Each entry's path is
//!   normalised (absolute paths and `..` refused), then created with `*at` system calls relative
//!   to a parent directory opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so
//!   neither `..` nor a symlink planted by an earlier entry can lead outside the root, even
//!   through a race; the final component is never followed (`O_NOFOLLOW`,
//!   `AT_SYMLINK_NOFOLLOW`, `linkat` without `AT_SYMLINK_FOLLOW`). `tar` is only the parser;
//!   its `unpack_in` is never used. Unpacked sizes and entry counts are capped
//!   ([`MAX_LAYER_UNPACKED_BYTES`], [`MAX_LAYER_ENTRIES`]), and so is an image's total
//!   ([`MAX_IMAGE_UNPACKED_BYTES`], shared by its layers' parallel unpacks). Whiteouts become overlayfs
//!   whiteouts (0:0 character devices) and opaque markers become `trusted.overlay.opaque=y`;
//!   an image's own `trusted.overlay.*` xattrs are dropped.
//!
//! **The registry client is `oci-client`**, which handles the distribution API and the
//! `WWW-Authenticate` dance (anonymous, basic, bearer tokens). Platform selection, manifest
//! parsing (lenient, OCI and Docker v2 alike), verification and error wording are ours. Plain
//! HTTP is used only for registries on loopback addresses and those listed as insecure
//! ([`RegistrySettings`]); credentials come from the function (`registry_auth`), else from a
//! Docker `config.json` ([`RegistryCredentials`]). Blob redirects (to S3 and the like) are
//! followed by reqwest, which drops the `Authorization` header when the host, port or scheme
//! changes; non-distributable layers are fetched from their `urls` (never with credentials)
//! when the registry does not have them.
//!
//! **Image archives** (`oci-archive:`, `oci:`, `docker-archive:`; parsed by [`ImageSource`]) go
//! through the same checks without a registry: members are read only by the names the layout
//! names, by offset, never by extracting the archive (`store/archive.rs`).
//!
//! Filesystem-mutating calls of unpacking sit behind the `LayerFs` seam, so the entry logic is
//! unit-tested against a recording fake; the kernel side is covered by the integration tests,
//! which need root and a local registry.

mod blobs;
mod credentials;
mod digest;
mod error;
mod layer_fs;
mod manifest;
mod platform;
mod progress;
mod reference;
mod registry;
mod resolve;
mod source;
mod store;
mod unpack;

use serde::{Deserialize, Serialize};

pub use credentials::{
    LoadReport, MAX_REGISTRY_CONFIG_BYTES, RegistryConfigError, RegistryCredentials,
    RegistrySettings,
};
pub use digest::Digest;
pub use error::{ImageError, ImageErrorKind};
pub use platform::{TARGET_ARCHITECTURE, TARGET_OS};
pub use progress::{LayerInfo, PROGRESS_INTERVAL, PullEvent, PullOptions};
pub use reference::{DEFAULT_REGISTRY, DEFAULT_TAG, ImageReference};
pub use registry::{CONNECT_TIMEOUT, MAX_MANIFEST_BYTES, READ_TIMEOUT};
pub use resolve::Resolved;
pub use source::{ArchiveReference, ArchiveTransport, ImageSource};
pub use store::gc::{ImageLease, PruneReport, Pruning, StoredImage};
pub use store::{ImageStore, MAX_CONCURRENT_LAYER_PULLS, MAX_CONFIG_BYTES, MAX_LAYERS_PER_IMAGE};
pub use unpack::{
    MAX_IMAGE_UNPACKED_BYTES, MAX_LAYER_ENTRIES, MAX_LAYER_UNPACKED_BYTES, MAX_TAR_METADATA_BYTES,
    UnpackLimits,
};

/// Installs ring as rustls' process-wide crypto provider. Idempotent; call once at start-up of
/// every binary that talks TLS (`ImageStore::open` calls it too).
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is all we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Credentials for one registry. (Bearer tokens are obtained from these by the token dance;
/// `Debug` does not show the password.)
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RegistryAuth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
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
    pub layers: Vec<std::path::PathBuf>,
}
