//! Where an image comes from: a registry reference, or an image archive on the daemon's machine.
//!
//! The archive forms are skopeo's transports, so that what `skopeo copy`, `podman save` and
//! `docker save` write can be deployed as it is:
//!
//! - `oci-archive:PATH[:NAME]`: an OCI image layout in a tar;
//! - `oci:PATH[:NAME]`: an OCI image layout directory;
//! - `docker-archive:PATH[:REPO:TAG]`: `docker save` output (`manifest.json`, config, layers).
//!
//! `NAME` selects an image of the layout by its `org.opencontainers.image.ref.name` annotation,
//! `REPO:TAG` one of a Docker archive by its `RepoTags`; as in skopeo, PATH ends at the first
//! `:`. PATH must be absolute: it is read by the daemon, whose working directory means nothing to
//! the client. A pulled archive image is pinned as `TRANSPORT:PATH@sha256:…` (the digest of the
//! manifest, or of the index when one was chosen), and that digest is what is pulled again
//! later, whatever the archive holds by then.
//!
//! Known transports always win over a registry reference (`oci:foo` is never the repository
//! `oci` with tag `foo`); `WORD:/…` with any other word is refused as an unknown transport,
//! since a tag cannot start with `/`.

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::reference::ImageReference;

/// The transports Wharf reads archives from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveTransport {
    /// `oci-archive:` — an OCI image layout in a tar file.
    OciArchive,
    /// `oci:` — an OCI image layout directory.
    OciDir,
    /// `docker-archive:` — `docker save` / `podman save` output.
    DockerArchive,
}

impl ArchiveTransport {
    pub fn prefix(self) -> &'static str {
        match self {
            ArchiveTransport::OciArchive => "oci-archive",
            ArchiveTransport::OciDir => "oci",
            ArchiveTransport::DockerArchive => "docker-archive",
        }
    }
}

/// skopeo's transports Wharf does not read, refused by name.
const OTHER_TRANSPORTS: &[&str] = &[
    "docker",
    "dir",
    "docker-daemon",
    "containers-storage",
    "ostree",
    "sif",
    "tarball",
];

/// The forms Wharf accepts, for error messages.
const ACCEPTED: &str =
    "a registry reference (host/repository:tag), oci-archive:PATH, oci:PATH or docker-archive:PATH";

/// An image archive on the daemon's machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveReference {
    pub transport: ArchiveTransport,
    /// Absolute.
    pub path: PathBuf,
    /// `NAME` of an OCI layout, `REPO:TAG` of a Docker archive.
    pub selector: Option<String>,
    /// What the archive reference is pinned to.
    pub digest: Option<Digest>,
}

impl ArchiveReference {
    /// `TRANSPORT:PATH@digest`.
    pub fn pinned(&self, digest: &Digest) -> String {
        format!(
            "{}:{}@{digest}",
            self.transport.prefix(),
            self.path.display()
        )
    }
}

impl fmt::Display for ArchiveReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport.prefix(), self.path.display())?;
        if let Some(s) = &self.selector {
            write!(f, ":{s}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A parsed image source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    Registry(ImageReference),
    Archive(ArchiveReference),
}

impl ImageSource {
    /// Parses any form Wharf accepts; the error is the reason the input is refused.
    pub fn parse(input: &str) -> Result<ImageSource, String> {
        match parse_archive(input)? {
            Some(archive) => Ok(ImageSource::Archive(archive)),
            None => ImageReference::parse(input).map(ImageSource::Registry),
        }
    }
}

/// `Ok(None)` when `input` is not in an archive form (so it is a registry reference, or not a
/// reference at all).
pub(crate) fn parse_archive(input: &str) -> Result<Option<ArchiveReference>, String> {
    let Some((word, rest)) = input.split_once(':') else {
        return Ok(None);
    };
    let transport = match word {
        "oci-archive" => ArchiveTransport::OciArchive,
        "oci" => ArchiveTransport::OciDir,
        "docker-archive" => ArchiveTransport::DockerArchive,
        w if is_transport_word(w)
            && (rest.starts_with('/') || OTHER_TRANSPORTS.contains(&w) && w.contains('-')) =>
        {
            return Err(format!(
                "Wharf does not read images from the {w}: transport (it takes {ACCEPTED})"
            ));
        }
        _ => return Ok(None),
    };
    if let Some(c) = input.chars().find(|c| c.is_control()) {
        return Err(format!("it contains the character {c:?}"));
    }
    // A trailing `@sha256:<hex>` pins it; an `@` elsewhere belongs to the path.
    let (rest, digest) = match rest.rsplit_once('@') {
        Some((head, tail)) if tail.starts_with("sha256:") => (head, Some(Digest::parse(tail)?)),
        _ => (rest, None),
    };
    let (path, selector) = match rest.split_once(':') {
        Some((path, selector)) => (path, Some(selector.to_owned())),
        None => (rest, None),
    };
    let what = match transport {
        ArchiveTransport::OciDir => "the image layout directory",
        _ => "the archive",
    };
    if path.is_empty() {
        return Err(format!(
            "it names no path (expected {}:/absolute/path)",
            transport.prefix()
        ));
    }
    if !path.starts_with('/') {
        return Err(format!(
            "the path {path:?} is relative: give the absolute path of {what} on the machine \
             Wharf runs on"
        ));
    }
    if let Some(selector) = &selector {
        match transport {
            ArchiveTransport::DockerArchive => {
                ImageReference::parse(selector).map_err(|reason| {
                    format!("{selector:?} is not a REPO:TAG to select from the archive: {reason}")
                })?;
            }
            _ => validate_ref_name(selector)?,
        }
    }
    Ok(Some(ArchiveReference {
        transport,
        path: PathBuf::from(path),
        selector,
        digest,
    }))
}

fn is_transport_word(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
}

/// skopeo's rule for an image name in an OCI layout: `[A-Za-z0-9._-]+` components joined by `/`
/// or `+`.
fn validate_ref_name(name: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if name.len() <= 256 && name.split(['/', '+']).all(component_ok) {
        Ok(())
    } else {
        Err(format!(
            "image name {name:?} is not [A-Za-z0-9._-] words joined by / or + (at most 256 \
             characters)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn archive(s: &str) -> ArchiveReference {
        match ImageSource::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")) {
            ImageSource::Archive(a) => a,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn archive_forms() {
        let a = archive("oci-archive:/srv/img.tar");
        assert_eq!(a.transport, ArchiveTransport::OciArchive);
        assert_eq!(a.path, PathBuf::from("/srv/img.tar"));
        assert_eq!((a.selector, a.digest), (None, None));

        let a = archive("oci:/srv/layout:v1.0");
        assert_eq!(a.transport, ArchiveTransport::OciDir);
        assert_eq!(a.path, PathBuf::from("/srv/layout"));
        assert_eq!(a.selector.as_deref(), Some("v1.0"));

        let a = archive("docker-archive:/srv/saved.tar:127.0.0.1:5000/hello:latest");
        assert_eq!(a.transport, ArchiveTransport::DockerArchive);
        assert_eq!(a.path, PathBuf::from("/srv/saved.tar"));
        assert_eq!(a.selector.as_deref(), Some("127.0.0.1:5000/hello:latest"));

        let pinned = format!("oci-archive:/srv/a@b.tar@{D}");
        let a = archive(&pinned);
        assert_eq!(a.path, PathBuf::from("/srv/a@b.tar"));
        assert_eq!(a.digest.as_ref().map(Digest::as_str), Some(D));
        assert_eq!(a.to_string(), pinned);
        assert_eq!(a.pinned(a.digest.as_ref().unwrap()), pinned);
    }

    #[test]
    fn registry_references_are_not_archives() {
        for s in [
            "hello:latest",
            "127.0.0.1:5000/hello:latest",
            "localhost:5000/oci",
            "docker:latest",
            "tarball:1",
        ] {
            assert!(
                matches!(ImageSource::parse(s), Ok(ImageSource::Registry(_))),
                "{s}"
            );
        }
    }

    #[test]
    fn refusals_say_why() {
        let cases = [
            ("oci-archive:img.tar", "relative"),
            (
                "oci:./layout",
                "absolute path of the image layout directory",
            ),
            ("docker-archive:", "names no path"),
            ("dir:/srv/x", "the dir: transport"),
            ("docker://ghcr.io/x/y", "the docker: transport"),
            ("containers-storage:x", "containers-storage:"),
            ("oci:/srv/l:bad name", "character"),
            ("oci:/srv/l:bad*name", "not [A-Za-z0-9._-]"),
            ("oci:/srv/l@sha256:abc", "sha256"),
            ("docker-archive:/x.tar:Bad:tag", "REPO:TAG"),
        ];
        for (input, needle) in cases {
            let err = ImageSource::parse(input).expect_err(input);
            assert!(err.contains(needle), "{input:?}: {err:?} lacks {needle:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(input in "(oci|oci-archive|docker-archive|dir)?:?\\PC{0,60}") {
            let _ = ImageSource::parse(&input);
        }
    }
}
