//! Choosing the linux/amd64 manifest out of an index (or a Docker manifest list).
//!
//! Written here rather than taken from `oci-client`'s resolvers: we must skip the `unknown/unknown`
//! entries BuildKit adds for attestations, prefer the baseline amd64 variant over `v2`/`v3`
//! micro-architecture builds, and report which platforms an image *does* have when it lacks ours.

use crate::manifest::{DOCKER_MANIFEST, Descriptor, Index, OCI_MANIFEST};

/// The platform Wharf runs images for.
pub const TARGET_OS: &str = "linux";
pub const TARGET_ARCHITECTURE: &str = "amd64";

/// The entry to pull for linux/amd64, or the platforms the index offers instead.
pub fn select_platform(index: &Index) -> Result<&Descriptor, Vec<String>> {
    let is_manifest = |d: &Descriptor| {
        d.media_type.is_empty() || d.media_type == OCI_MANIFEST || d.media_type == DOCKER_MANIFEST
    };
    let variant_rank = |d: &Descriptor| match d.platform.as_ref().and_then(|p| p.variant.as_deref())
    {
        None | Some("") | Some("v1") => 1,
        Some(v) => v
            .strip_prefix('v')
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(u32::MAX),
    };
    let best = index
        .manifests
        .iter()
        .filter(|d| is_manifest(d))
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == TARGET_OS && p.architecture == TARGET_ARCHITECTURE)
        })
        .min_by_key(|d| variant_rank(d));
    if let Some(best) = best {
        return Ok(best);
    }
    let mut available: Vec<String> = Vec::new();
    for d in &index.manifests {
        let Some(p) = &d.platform else { continue };
        if p.os == "unknown" && p.architecture == "unknown" {
            continue; // attestation manifests
        }
        let name = p.to_string();
        if !available.contains(&name) {
            available.push(name);
        }
    }
    Err(available)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Platform;

    fn entry(os: &str, arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
            urls: vec![],
        }
    }

    #[test]
    fn picks_amd64_and_skips_attestations() {
        let index = Index {
            manifests: vec![
                entry("unknown", "unknown", None, "att"),
                entry("linux", "arm64", Some("v8"), "arm"),
                entry("linux", "amd64", None, "amd"),
            ],
        };
        assert_eq!(select_platform(&index).unwrap().digest, "amd");
    }

    #[test]
    fn prefers_the_baseline_amd64_variant() {
        let index = Index {
            manifests: vec![
                entry("linux", "amd64", Some("v3"), "v3"),
                entry("linux", "amd64", Some("v2"), "v2"),
                entry("linux", "amd64", None, "v1"),
            ],
        };
        assert_eq!(select_platform(&index).unwrap().digest, "v1");
        let index = Index {
            manifests: vec![
                entry("linux", "amd64", Some("v3"), "v3"),
                entry("linux", "amd64", Some("v2"), "v2"),
            ],
        };
        assert_eq!(select_platform(&index).unwrap().digest, "v2");
    }

    #[test]
    fn no_amd64_names_what_there_is() {
        let index = Index {
            manifests: vec![
                entry("linux", "arm64", Some("v8"), "a"),
                entry("unknown", "unknown", None, "att"),
                entry("linux", "s390x", None, "s"),
                entry("windows", "amd64", None, "w"),
                entry("linux", "arm64", Some("v8"), "a2"),
            ],
        };
        assert_eq!(
            select_platform(&index).unwrap_err(),
            vec!["linux/arm64/v8", "linux/s390x", "windows/amd64"]
        );
        assert_eq!(
            select_platform(&Index { manifests: vec![] }).unwrap_err(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn nested_indexes_are_not_chosen() {
        let mut nested = entry("linux", "amd64", None, "nested");
        nested.media_type = crate::manifest::OCI_INDEX.into();
        let index = Index {
            manifests: vec![nested],
        };
        assert!(select_platform(&index).is_err());
    }
}
