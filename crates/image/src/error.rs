//! Errors of the image store.
//!
//! One enum for the whole crate because callers (the pool, the API) handle the result of a pull as
//! a unit; `kind()` gives the coarse class the API maps to a status code. Every message names the
//! thing (reference, registry, blob, layer entry) and says what to do about it.

use std::path::PathBuf;

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

/// Why a pull (or a local lookup) failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error(
        "image {reference} not found: the registry at {registry} has no manifest for it \
         (push it, or check the repository and tag)"
    )]
    NotFound { reference: String, registry: String },

    #[error(
        "image {reference} is incomplete: the registry at {registry} has no blob {digest} \
         (push the image again)"
    )]
    BlobNotFound {
        reference: String,
        registry: String,
        digest: String,
    },

    #[error(
        "registry {registry} refused the credentials for repository {repository} ({status}): \
         {check}"
    )]
    Unauthorized {
        registry: String,
        repository: String,
        status: u16,
        /// Where the credentials came from: "check registry_auth", or the config file's entry.
        check: String,
    },

    #[error(
        "registry {registry} requires credentials for repository {repository} ({status}): \
         set registry_auth (or give the daemon a registry config with --registry-config)"
    )]
    CredentialsRequired {
        registry: String,
        repository: String,
        status: u16,
    },

    #[error("registry {registry} is unreachable: {reason} (is it running? check the address)")]
    Unreachable { registry: String, reason: String },

    #[error("registry {registry} failed while serving {what} of {reference}: {detail}")]
    Registry {
        registry: String,
        reference: String,
        what: String,
        detail: String,
    },

    #[error("image {reference} is not a container image this host can run: {reason}")]
    Unsupported { reference: String, reason: String },

    #[error(
        "image {reference} has no linux/amd64 variant (it has {}): build and push one for \
         linux/amd64",
        if available.is_empty() { "none".to_string() } else { available.join(", ") }
    )]
    NoPlatform {
        reference: String,
        available: Vec<String>,
    },

    #[error(
        "blob {digest} of image {reference} is corrupt: {reason} (push the image again; if \
         it persists, the registry's storage is damaged or something between Wharf and the \
         registry alters what it sends)"
    )]
    Corrupt {
        reference: String,
        digest: String,
        reason: String,
    },

    #[error("{what} {digest} of image {reference} is malformed: {reason}")]
    Malformed {
        reference: String,
        what: &'static str,
        digest: String,
        reason: String,
    },

    #[error(
        "layer {layer} contains a hostile entry {entry:?}: {reason} (refusing to unpack it; \
         rebuild the image from trusted sources)"
    )]
    HostileLayer {
        layer: String,
        entry: String,
        reason: String,
    },

    #[error("{what} of {subject} exceeds the limit of {limit} ({constant}): {hint}")]
    TooLarge {
        subject: String,
        what: &'static str,
        limit: String,
        constant: &'static str,
        hint: &'static str,
    },

    #[error("cannot unpack entry {entry:?} of layer {layer}: {source}")]
    Unpack {
        layer: String,
        entry: String,
        #[source]
        source: std::io::Error,
    },

    /// An image archive (`oci-archive:`, `oci:`, `docker-archive:`) that cannot be used; the
    /// reason names the file or blob and says what to do.
    #[error("image {reference}: {reason}")]
    Archive {
        reference: String,
        kind: ImageErrorKind,
        reason: String,
    },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// The coarse class of this error, for mapping to API status codes.
    pub fn kind(&self) -> ImageErrorKind {
        match self {
            ImageError::InvalidReference { .. } => ImageErrorKind::InvalidReference,
            ImageError::NotFound { .. } | ImageError::BlobNotFound { .. } => {
                ImageErrorKind::NotFound
            }
            ImageError::Unauthorized { .. } | ImageError::CredentialsRequired { .. } => {
                ImageErrorKind::Unauthorized
            }
            ImageError::Unreachable { .. } => ImageErrorKind::Unreachable,
            ImageError::Registry { .. } | ImageError::Unsupported { .. } => {
                ImageErrorKind::Registry
            }
            ImageError::NoPlatform { .. } => ImageErrorKind::NoPlatform,
            ImageError::Corrupt { .. } | ImageError::Malformed { .. } => ImageErrorKind::Corrupt,
            ImageError::HostileLayer { .. } => ImageErrorKind::HostileLayer,
            ImageError::TooLarge { .. } => ImageErrorKind::TooLarge,
            ImageError::Unpack { .. } | ImageError::Io { .. } => ImageErrorKind::Io,
            ImageError::Archive { kind, .. } => *kind,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ImageError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Formats a byte count the way limits are written in messages (`10 GiB`, `4 MiB`, `512 B`).
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_thing_and_what_to_do() {
        let e = ImageError::NotFound {
            reference: "127.0.0.1:5000/nope:latest".into(),
            registry: "127.0.0.1:5000".into(),
        };
        assert_eq!(
            e.to_string(),
            "image 127.0.0.1:5000/nope:latest not found: the registry at 127.0.0.1:5000 has no \
             manifest for it (push it, or check the repository and tag)"
        );
        assert_eq!(e.kind(), ImageErrorKind::NotFound);

        let e = ImageError::Unreachable {
            registry: "127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "registry 127.0.0.1:1 is unreachable: connection refused (is it running? check the \
             address)"
        );

        let e = ImageError::Unauthorized {
            registry: "127.0.0.1:5000".into(),
            repository: "hello".into(),
            status: 401,
            check: "check registry_auth".into(),
        };
        assert_eq!(
            e.to_string(),
            "registry 127.0.0.1:5000 refused the credentials for repository hello (401): check \
             registry_auth"
        );

        let e = ImageError::NoPlatform {
            reference: "r/x:1".into(),
            available: vec!["linux/arm64".into(), "linux/s390x".into()],
        };
        assert!(
            e.to_string().contains("(it has linux/arm64, linux/s390x)"),
            "{e}"
        );
    }

    #[test]
    fn human_bytes_uses_the_largest_exact_unit() {
        assert_eq!(human_bytes(10 << 30), "10 GiB");
        assert_eq!(human_bytes(4 << 20), "4 MiB");
        assert_eq!(human_bytes(1536), "1536 B");
        assert_eq!(human_bytes(1 << 10), "1 KiB");
        assert_eq!(human_bytes(7), "7 B");
    }
}
