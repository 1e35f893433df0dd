//! Manifests, indexes and image configs, OCI and Docker v2 alike, parsed leniently.
//!
//! Only the fields the store needs are read; unknown fields are ignored and missing optional ones
//! default, because real registries and build tools disagree on the details (Docker writes `null`
//! for an empty `Cmd`, some tools omit `mediaType`). The raw bytes are kept as blobs regardless.

use serde::{Deserialize, Deserializer};

use crate::ImageConfig;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What we send in `Accept` when asking for a manifest: both OCI and Docker v2 forms.
pub const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
];

/// Whether a layer media type is non-distributable (Docker: foreign): its blob may live only
/// at the descriptor's `urls`, not at the registry.
pub fn is_non_distributable(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression a layer media type implies; `None` if it is not a layer type we unpack.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Where else the blob may be fetched (non-distributable and foreign layers).
    #[serde(default, deserialize_with = "null_as_default")]
    pub urls: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The envelope every manifest kind shares, enough to tell them apart.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    config: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// A manifest document of either kind.
#[derive(Debug)]
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

/// Parses manifest bytes; the error is the reason (for a `Malformed`/`Unsupported` error).
pub fn parse_document(bytes: &[u8]) -> Result<Document, ParseError> {
    let envelope: Envelope =
        serde_json::from_slice(bytes).map_err(|e| ParseError::Malformed(e.to_string()))?;
    match envelope.media_type.as_deref() {
        Some(DOCKER_MANIFEST_V1 | DOCKER_MANIFEST_V1_SIGNED) => {
            return Err(ParseError::Unsupported(
                "it uses the Docker schema 1 manifest format, which is deprecated (push it again \
                 with a current docker, buildah or skopeo)"
                    .into(),
            ));
        }
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => return parse_index(bytes),
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => return parse_manifest(bytes),
        Some(other) if envelope.manifests.is_none() && envelope.config.is_none() => {
            return Err(ParseError::Unsupported(format!(
                "its manifest has media type {other:?}, which is not an image"
            )));
        }
        _ => {}
    }
    if envelope.schema_version == Some(1) {
        return Err(ParseError::Unsupported(
            "it uses the Docker schema 1 manifest format, which is deprecated (push it again with \
             a current docker, buildah or skopeo)"
                .into(),
        ));
    }
    if envelope.manifests.is_some() {
        parse_index(bytes)
    } else if envelope.config.is_some() {
        parse_manifest(bytes)
    } else {
        Err(ParseError::Malformed(
            "it is neither a manifest (no config) nor an index (no manifests)".into(),
        ))
    }
}

fn parse_index(bytes: &[u8]) -> Result<Document, ParseError> {
    serde_json::from_slice(bytes)
        .map(Document::Index)
        .map_err(|e| ParseError::Malformed(e.to_string()))
}

fn parse_manifest(bytes: &[u8]) -> Result<Document, ParseError> {
    serde_json::from_slice(bytes)
        .map(Document::Manifest)
        .map_err(|e| ParseError::Malformed(e.to_string()))
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Malformed(String),
    Unsupported(String),
}

/// The parts of an image config (`application/vnd.oci.image.config.v1+json`) the store reads.
///
/// Parsed by hand from a JSON value rather than derived, because configs in the wild are not
/// all conformant: `"Env": null`, `"Cmd": "string"`, numbers where strings belong, missing
/// objects. What Wharf only passes on (entrypoint, cmd, env, working dir, user, platform) is
/// taken when it has a usable shape and otherwise left empty; only `rootfs.diff_ids`, which the
/// layers are verified against, must be right. The raw JSON stays in the blob store as it came.
#[derive(Debug, Default)]
pub struct ConfigFile {
    pub architecture: String,
    pub os: String,
    pub config: RunConfig,
    pub rootfs: RootFs,
}

#[derive(Debug, Default)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

#[derive(Debug, Default)]
pub struct RootFs {
    /// `None` when the config has none (an error if the manifest has layers).
    pub diff_ids: Option<Vec<String>>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A string, or empty when the value is missing, null or not a string.
fn lenient_string(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// A list of strings: `["a","b"]`; `"a b"` (one string) becomes `["a b"]`; null, missing or
/// another shape is empty; non-string items are dropped.
fn lenient_strings(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(s)) if !s.is_empty() => vec![s.clone()],
        _ => Vec::new(),
    }
}

impl ConfigFile {
    /// Parses a config; the error is the reason it cannot be used.
    pub fn parse(bytes: &[u8]) -> Result<ConfigFile, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let top = value
            .as_object()
            .ok_or("it is not a JSON object".to_owned())?;
        let run = top.get("config").and_then(|c| c.as_object());
        let field = |name: &str| run.and_then(|r| r.get(name));
        let diff_ids = match top.get("rootfs").and_then(|r| r.get("diff_ids")) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        item.as_str().map(str::to_owned).ok_or_else(|| {
                            format!(
                                "rootfs.diff_ids[{i}] is not a string (it is {})",
                                json_kind(item)
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(other) => {
                return Err(format!(
                    "rootfs.diff_ids is not a list of digests (it is {})",
                    json_kind(other)
                ));
            }
        };
        Ok(ConfigFile {
            architecture: lenient_string(top.get("architecture")),
            os: lenient_string(top.get("os")),
            config: RunConfig {
                entrypoint: lenient_strings(field("Entrypoint")),
                cmd: lenient_strings(field("Cmd")),
                env: lenient_strings(field("Env")),
                working_dir: lenient_string(field("WorkingDir")),
                user: lenient_string(field("User")),
            },
            rootfs: RootFs { diff_ids },
        })
    }

    pub fn image_config(&self) -> ImageConfig {
        let c = &self.config;
        ImageConfig {
            entrypoint: c.entrypoint.clone(),
            cmd: c.cmd.clone(),
            env: c.env.clone(),
            working_dir: Some(c.working_dir.clone()).filter(|s| !s.is_empty()),
            user: Some(c.user.clone()).filter(|s| !s.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_index_from_manifest_with_or_without_media_type() {
        let index = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:ab","size":3}]}"#;
        assert!(matches!(parse_document(index), Ok(Document::Index(_))));
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"x","digest":"sha256:ab","size":3},"layers":[]}"#;
        assert!(matches!(
            parse_document(manifest),
            Ok(Document::Manifest(_))
        ));
    }

    #[test]
    fn refuses_schema1_and_artifacts() {
        let v1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert!(
            matches!(parse_document(v1), Err(ParseError::Unsupported(m)) if m.contains("schema 1"))
        );
        let odd = br#"{"schemaVersion":2,"mediaType":"application/x-thing"}"#;
        assert!(matches!(
            parse_document(odd),
            Err(ParseError::Unsupported(_))
        ));
        assert!(matches!(
            parse_document(b"[1,2]"),
            Err(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn config_is_parsed_leniently() {
        let raw = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":null,
            "Cmd":["/bin/sh"],"Env":["A=1"],"WorkingDir":"","User":"1003:1003","Labels":{"x":"y"}},
            "rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"history":[{"created_by":"x"}]}"#;
        let c = ConfigFile::parse(raw).unwrap();
        assert_eq!(
            c.image_config(),
            ImageConfig {
                entrypoint: vec![],
                cmd: vec!["/bin/sh".into()],
                env: vec!["A=1".into()],
                working_dir: None,
                user: Some("1003:1003".into()),
            }
        );
        assert_eq!(c.rootfs.diff_ids, Some(vec!["sha256:aa".to_string()]));
        let bare = ConfigFile::parse(br#"{"config":null}"#).unwrap();
        assert_eq!(bare.image_config(), ImageConfig::default());
        assert_eq!(bare.rootfs.diff_ids, None);
    }

    #[test]
    fn config_that_is_not_conformant_is_taken_for_what_it_has() {
        let raw = br#"{"architecture":"amd64","os":"linux","config":{"Env":null,
            "Cmd":"/serve --port 9000","Entrypoint":{"odd":1},"User":1003,"WorkingDir":null,
            "Healthcheck":{"Test":["NONE"]},"X-Unknown":[1,2]},
            "rootfs":{"diff_ids":["sha256:aa"]},"history":"not a list"}"#;
        let c = ConfigFile::parse(raw).unwrap();
        assert_eq!(
            c.image_config(),
            ImageConfig {
                entrypoint: vec![],
                cmd: vec!["/serve --port 9000".into()],
                env: vec![],
                working_dir: None,
                user: Some("1003".into()),
            }
        );
        let no_config = ConfigFile::parse(br#"{"rootfs":{"diff_ids":[]},"config":"x"}"#).unwrap();
        assert_eq!(no_config.image_config(), ImageConfig::default());
        assert_eq!(no_config.rootfs.diff_ids, Some(vec![]));
    }

    #[test]
    fn config_fails_only_on_what_wharf_needs() {
        for (raw, needle) in [
            (
                &br#"{"rootfs":{"diff_ids":"sha256:aa"}}"#[..],
                "rootfs.diff_ids is not a list",
            ),
            (
                br#"{"rootfs":{"diff_ids":["sha256:aa",7]}}"#,
                "rootfs.diff_ids[1]",
            ),
            (br#"[1]"#, "not a JSON object"),
            (br#"{"#, "EOF"),
        ] {
            let err = ConfigFile::parse(raw).unwrap_err();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::None)
        );
        assert_eq!(layer_compression("application/vnd.in-toto+json"), None);
    }
}
