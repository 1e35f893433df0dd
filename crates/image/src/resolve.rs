//! Resolving a reference to its digest without pulling: what a deploy with `prepull: false`
//! does, so that the function is still pinned by digest while the first cold start pulls.

use crate::error::ImageError;
use crate::manifest::Document;
use crate::platform::select_platform;
use crate::reference::ImageReference;
use crate::registry::RegistryClient;
use crate::store::parse_document;
use crate::{ImageStore, RegistryAuth};

/// What a reference names at the registry now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The reference pinned by digest, e.g. `127.0.0.1:5000/hello@sha256:…`.
    pub pinned: String,
    /// The digest of the manifest (or index) the reference names.
    pub digest: String,
}

impl ImageStore {
    /// Resolves `reference` to the digest the registry has for it: one manifest fetch, and for
    /// an index a check that it has a linux/amd64 image. Nothing is downloaded into the store;
    /// [`ImageStore::pull`] of [`Resolved::pinned`] fetches the rest later.
    pub async fn resolve(
        &self,
        reference: &str,
        auth: &RegistryAuth,
    ) -> Result<Resolved, ImageError> {
        // An archive is read all the same: that is how its digest is known, and the file may be
        // gone by the first cold start. It is local, so this costs no download.
        if crate::source::parse_archive(reference)
            .map_err(|reason| ImageError::InvalidReference {
                reference: reference.to_owned(),
                reason,
            })?
            .is_some()
        {
            let image = self.pull(reference, auth).await?;
            return Ok(Resolved {
                pinned: image.pinned,
                digest: image.digest,
            });
        }
        let r =
            ImageReference::parse(reference).map_err(|reason| ImageError::InvalidReference {
                reference: reference.to_owned(),
                reason,
            })?;
        let client = RegistryClient::new(&r, auth, self.registries())?;
        let (bytes, digest) = client.manifest(None).await?;
        if let Document::Index(index) = parse_document(&r, &digest, &bytes)? {
            select_platform(&index).map_err(|available| ImageError::NoPlatform {
                reference: r.to_string(),
                available,
            })?;
        }
        Ok(Resolved {
            pinned: r.pinned(&digest),
            digest: digest.to_string(),
        })
    }
}
