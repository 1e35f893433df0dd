//! Image references: `[registry/]repository[:tag][@sha256:…]`, with Docker's defaults.
//!
//! Parsed here rather than by `oci-client` so that a malformed reference gets a message that says
//! what is wrong with it, and so that the rules that matter to us are explicit: which first
//! component is a registry (it has a `.` or a `:`, or is `localhost`), `docker.io` and its
//! `library/` prefix, `latest` as the default tag, and which registries are spoken to in plain
//! HTTP (loopback ones, and those the daemon lists as insecure: `RegistrySettings`).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use crate::digest::Digest;

/// The registry assumed when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag assumed when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository name the distribution spec allows (`registry/` excluded).
pub const MAX_REPOSITORY_LEN: usize = 255;
/// Longest tag the distribution spec allows.
pub const MAX_TAG_LEN: usize = 128;

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    /// `host[:port]`, e.g. `127.0.0.1:5000` or `docker.io`.
    pub registry: String,
    /// e.g. `library/alpine`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageReference {
    /// Parses a reference; the error is the reason it is malformed.
    pub fn parse(input: &str) -> Result<ImageReference, String> {
        if input.is_empty() {
            return Err("the reference is empty".into());
        }
        if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("it contains the character {c:?}"));
        }
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(Digest::parse(digest)?)),
            None => (input, None),
        };
        let last_slash = name_and_tag.rfind('/');
        let (name, tag) = match name_and_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => (
                &name_and_tag[..colon],
                Some(name_and_tag[colon + 1..].to_owned()),
            ),
            _ => (name_and_tag, None),
        };
        if let Some(tag) = &tag {
            validate_tag(tag)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if looks_like_registry(first) => {
                validate_registry(first)?;
                let registry = if first == "index.docker.io" {
                    DEFAULT_REGISTRY
                } else {
                    first
                };
                (registry.to_owned(), rest.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        validate_repository(&repository)?;
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag,
        };
        Ok(ImageReference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository@digest`.
    pub fn pinned(&self, digest: &Digest) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }

    /// Whether the registry is on this machine (127.0.0.0/8, ::1, localhost): spoken to in plain
    /// HTTP without being listed as insecure.
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(&self.registry)
    }

    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        match (&self.tag, &self.digest) {
            (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone(),
                digest.to_string(),
            ),
            (_, Some(digest)) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                digest.to_string(),
            ),
            (tag, None) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone().unwrap_or_else(|| DEFAULT_TAG.to_owned()),
            ),
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Docker's rule: the first component is a registry if it has a `.` or `:`, is `localhost`, or
/// has upper-case letters (repositories cannot).
fn looks_like_registry(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_uppercase())
}

pub(crate) fn validate_registry(registry: &str) -> Result<(), String> {
    let (host, port) = split_host_port(registry)
        .ok_or_else(|| format!("registry {registry:?} is not host[:port]"))?;
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => {
                return Err(format!(
                    "registry port {port:?} is not a number from 1 to 65535"
                ));
            }
        }
    }
    if host.starts_with('[') {
        return Ok(()); // checked by split_host_port
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.is_empty() || !host.split('.').all(valid_label) {
        return Err(format!(
            "registry host {host:?} is not a valid host name or address"
        ));
    }
    Ok(())
}

/// Splits `host[:port]` (with `[v6]` hosts); `None` if a bracket is unbalanced or the IPv6
/// address does not parse.
fn split_host_port(registry: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = registry.strip_prefix('[') {
        let end = rest.find(']')?;
        rest[..end].parse::<Ipv6Addr>().ok()?;
        let host = &registry[..end + 2];
        return match &registry[end + 2..] {
            "" => Some((host, None)),
            tail => Some((host, Some(tail.strip_prefix(':')?))),
        };
    }
    match registry.split_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((registry, None)),
    }
}

fn is_loopback_host(registry: &str) -> bool {
    let Some((host, _)) = split_host_port(registry) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn validate_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("the repository name is empty".into());
    }
    if repository.len() > MAX_REPOSITORY_LEN {
        return Err(format!(
            "the repository name is longer than {MAX_REPOSITORY_LEN} characters"
        ));
    }
    for component in repository.split('/') {
        validate_path_component(component).map_err(|why| {
            format!("repository component {component:?} {why} (allowed: a-z 0-9 . _ -)")
        })?;
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn validate_path_component(component: &str) -> Result<(), &'static str> {
    if component.is_empty() {
        return Err("is empty");
    }
    if component.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("has upper-case letters");
    }
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("must start and end with a letter or digit");
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err("has an invalid separator");
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag.chars().next().is_some_and(word)
        && tag.chars().all(|c| word(c) || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is not 1 to {MAX_TAG_LEN} of A-Z a-z 0-9 _ . - (not starting with . or -)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> ImageReference {
        ImageReference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn loopback_registry_with_port_and_tag() {
        let r = parse("127.0.0.1:5000/hello:latest");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "hello");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.digest, None);
        assert!(r.is_loopback_registry());
        assert_eq!(r.to_string(), "127.0.0.1:5000/hello:latest");
    }

    #[test]
    fn docker_hub_defaults() {
        let r = parse("alpine");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/alpine", Some("latest"))
        );
        let r = parse("someone/app:1.2");
        assert_eq!(r.repository, "someone/app");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        let r = parse("index.docker.io/library/busybox:1");
        assert_eq!(r.registry, "docker.io");
        assert!(!r.is_loopback_registry());
    }

    #[test]
    fn digest_references() {
        let r = parse(&format!("repo@{D}"));
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/repo");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().map(Digest::as_str), Some(D));
        assert_eq!(
            r.pinned(r.digest.as_ref().unwrap()),
            format!("docker.io/library/repo@{D}")
        );

        let r = parse(&format!("localhost:5000/a/b:v1@{D}"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.digest.is_some());
        assert!(r.is_loopback_registry());
    }

    #[test]
    fn loopback_detection() {
        assert!(parse("localhost/x").is_loopback_registry());
        assert!(parse("127.1.2.3:80/x").is_loopback_registry());
        assert!(parse("[::1]:5000/x").is_loopback_registry());
        assert!(!parse("[fe80::1]:5000/x").is_loopback_registry());
        assert!(!parse("10.0.0.1:5000/x").is_loopback_registry());
        assert!(!parse("ghcr.io/x/y").is_loopback_registry());
        assert!(!parse("localhost.evil.com/x").is_loopback_registry());
    }

    #[test]
    fn malformed_references_say_why() {
        let cases = [
            ("", "empty"),
            ("Hello", "upper-case"),
            ("a b", "character"),
            ("repo:", "tag"),
            ("repo:-x", "tag"),
            ("repo@sha256:abc", "sha256"),
            ("repo@md5:abc", "not supported"),
            ("127.0.0.1:99999/x", "port"),
            ("127.0.0.1:/x", "port"),
            ("reg.io/a//b", "empty"),
            ("reg.io/a/-b", "start and end"),
            ("reg.io/a..b", "separator"),
            ("[::1/x", "host[:port]"),
            ("ex ample.com/x", "character"),
            ("exa_mple.com/x", "host"),
        ];
        for (input, needle) in cases {
            let err = ImageReference::parse(input).expect_err(input);
            assert!(err.contains(needle), "{input:?}: {err:?} lacks {needle:?}");
        }
    }

    proptest! {
        #[test]
        fn valid_references_round_trip(
            host in "[a-z][a-z0-9]{0,8}(\\.[a-z][a-z0-9]{0,5}){1,2}",
            port in proptest::option::of(1u16..),
            repo in "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}(/[a-z0-9]{1,6}){0,2}",
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        ) {
            let registry = match port { Some(p) => format!("{host}:{p}"), None => host.clone() };
            let input = match &tag {
                Some(t) => format!("{registry}/{repo}:{t}"),
                None => format!("{registry}/{repo}"),
            };
            let r = ImageReference::parse(&input).unwrap();
            prop_assert_eq!(&r.registry, if registry == "index.docker.io" { "docker.io" } else { &registry });
            prop_assert_eq!(r.tag.as_deref(), Some(tag.as_deref().unwrap_or(DEFAULT_TAG)));
            let again = ImageReference::parse(&r.to_string()).unwrap();
            prop_assert_eq!(again, r);
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,80}") {
            let _ = ImageReference::parse(&input);
        }
    }
}
