//! Per-registry settings of the daemon: credentials read from a Docker `config.json`, and the
//! registries that may be spoken to in plain HTTP.
//!
//! The `config.json` is the one `docker login`, `podman login` and `skopeo login` write:
//!
//! ```json
//! {"auths": {"registry.example.com:5000": {"auth": "base64(user:pass)"},
//!            "https://index.docker.io/v1/": {"username": "u", "password": "p"}},
//!  "credsStore": "desktop", "credHelpers": {"123.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login"}}
//! ```
//!
//! Keys are `host[:port]`, optionally with a scheme and a path (`https://host/v1/`); the Docker
//! Hub aliases (`index.docker.io`, `registry-1.docker.io`, `registry.hub.docker.com`) all mean
//! `docker.io`. Credential helpers (`credsStore`, `credHelpers`) are programs; Wharf does not run
//! them (a daemon running arbitrary `docker-credential-*` binaries found on `$PATH` as root is a
//! risk nobody asked for), so each one is reported as a warning naming the helper.
//! A file that cannot be read or parsed is an error: a daemon that silently pulled anonymously
//! would fail later, far from the cause. Secrets never appear in errors, warnings or `Debug`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::RegistryAuth;
use crate::reference::{DEFAULT_REGISTRY, validate_registry};

/// Largest `config.json` read (real ones are a few kilobytes).
pub const MAX_REGISTRY_CONFIG_BYTES: u64 = 1 << 20;

/// Why a registry config file was refused. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum RegistryConfigError {
    #[error("cannot read the registry config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the registry config {path} is malformed: {reason} (fix it, or point --registry-config elsewhere)"
    )]
    Malformed { path: PathBuf, reason: String },
    #[error("invalid --insecure-registry {value:?}: {reason} (expected HOST[:PORT])")]
    InvalidInsecure { value: String, reason: String },
}

/// Credentials per registry (`host[:port]`, Docker Hub as `docker.io`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryCredentials {
    by_registry: BTreeMap<String, RegistryAuth>,
    source: Option<PathBuf>,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("registries", &self.by_registry.keys().collect::<Vec<_>>())
            .field("source", &self.source)
            .finish()
    }
}

/// What loading a config file found besides credentials: things it could not use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// One line each, for the log; no secrets.
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfigFile {
    #[serde(default)]
    auths: Option<BTreeMap<String, AuthEntry>>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: Option<BTreeMap<String, String>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "lowercase")]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// `message` with every quoted value (`"…"` and `` `…` ``) replaced by `…`: serde_json quotes
/// the values it did not expect (`invalid type: string "dXNlcjpwdw==", expected …`), and in
/// this file those are secrets.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quote = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                quote = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => quote = Some(c),
            None => out.push(c),
        }
    }
    if quote.is_some() {
        out.push('…');
    }
    out
}

impl RegistryCredentials {
    /// Which file to read, as Docker looks for it: `explicit` (`--registry-config`), else
    /// `$DOCKER_CONFIG/config.json` when `$DOCKER_CONFIG` is set, else
    /// `$HOME/.docker/config.json` (what `docker login` writes); none if that file does not
    /// exist.
    pub fn locate(
        explicit: Option<&Path>,
        docker_config_env: Option<&Path>,
        home: Option<&Path>,
    ) -> Option<PathBuf> {
        if let Some(path) = explicit {
            return Some(path.to_owned());
        }
        let candidate = match docker_config_env {
            Some(dir) => dir.join("config.json"),
            None => home?.join(".docker").join("config.json"),
        };
        candidate.exists().then_some(candidate)
    }

    /// Reads a Docker `config.json`.
    pub fn load(path: &Path) -> Result<(RegistryCredentials, LoadReport), RegistryConfigError> {
        use std::io::Read as _;
        let read_error = |source| RegistryConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(MAX_REGISTRY_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_REGISTRY_CONFIG_BYTES {
            return Err(RegistryConfigError::Malformed {
                path: path.to_owned(),
                reason: format!(
                    "it is larger than {MAX_REGISTRY_CONFIG_BYTES} bytes \
                     (MAX_REGISTRY_CONFIG_BYTES)"
                ),
            });
        }
        let mut loaded = RegistryCredentials::parse(&bytes).map_err(|reason| {
            RegistryConfigError::Malformed {
                path: path.to_owned(),
                reason,
            }
        })?;
        loaded.0.source = Some(path.to_owned());
        Ok(loaded)
    }

    /// Parses the contents of a `config.json`; the error is what is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<(RegistryCredentials, LoadReport), String> {
        let file: DockerConfigFile =
            serde_json::from_slice(bytes).map_err(|e| without_values(&e.to_string()))?;
        let mut report = LoadReport::default();
        if let Some(helper) = file.creds_store.as_deref().filter(|h| !h.is_empty()) {
            report.warnings.push(format!(
                "credsStore \"{helper}\" is not run (Wharf runs no credential helpers, here \
                 docker-credential-{helper}): registries whose credentials it holds are pulled \
                 anonymously unless the function sets registry_auth or auths has an entry"
            ));
        }
        for (registry, helper) in file.cred_helpers.unwrap_or_default() {
            report.warnings.push(format!(
                "credHelpers entry for {registry} (docker-credential-{helper}) is not run: \
                 put the credentials in auths or in the function's registry_auth"
            ));
        }
        let mut by_registry = BTreeMap::new();
        for (key, entry) in file.auths.unwrap_or_default() {
            let Some(registry) = normalise_key(&key) else {
                report.warnings.push(format!(
                    "auths entry {key:?} is not a registry host[:port]; ignored"
                ));
                continue;
            };
            let auth = match (&entry.auth, &entry.username, &entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    decode_auth(auth).map_err(|why| format!("auths entry {key:?}: {why}"))?
                }
                (_, Some(username), Some(password)) if !username.is_empty() => {
                    RegistryAuth::Basic {
                        username: username.clone(),
                        password: password.clone(),
                    }
                }
                _ => {
                    let what = if entry.identitytoken.is_some() {
                        "has an identitytoken, which Wharf does not support"
                    } else if entry.registrytoken.is_some() {
                        "has a registrytoken, which Wharf does not support"
                    } else {
                        "has no auth nor username and password (the credentials may be in a \
                         credential helper)"
                    };
                    report
                        .warnings
                        .push(format!("auths entry {key:?} {what}; ignored"));
                    continue;
                }
            };
            by_registry.insert(registry, auth);
        }
        Ok((
            RegistryCredentials {
                by_registry,
                source: None,
            },
            report,
        ))
    }

    /// Credentials for `registry` (`host[:port]` as in a parsed reference), if any.
    pub fn get(&self, registry: &str) -> Option<&RegistryAuth> {
        self.by_registry.get(&registry.to_ascii_lowercase())
    }

    /// The registries that have credentials (for the start-up log: names, never secrets).
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.by_registry.keys().map(String::as_str)
    }

    /// The file these came from.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }
}

/// How the daemon talks to registries: credentials per registry and the registries allowed in
/// plain HTTP besides loopback ones.
#[derive(Clone, Debug, Default)]
pub struct RegistrySettings {
    pub credentials: RegistryCredentials,
    /// `host[:port]`; a bare host covers every port of it.
    pub insecure: Vec<String>,
}

impl RegistrySettings {
    /// Checks and normalises an `--insecure-registry` value.
    pub fn parse_insecure(value: &str) -> Result<String, RegistryConfigError> {
        let invalid = |reason: String| RegistryConfigError::InvalidInsecure {
            value: value.to_owned(),
            reason,
        };
        if value.contains("://") || value.contains('/') {
            return Err(invalid(
                "give the host and port only, no scheme or path".into(),
            ));
        }
        validate_registry(value).map_err(invalid)?;
        Ok(canonical_registry(&value.to_ascii_lowercase()))
    }

    /// Whether `registry` may be spoken to in plain HTTP because it was listed as insecure.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let registry = registry.to_ascii_lowercase();
        let host = match registry.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') && port.parse::<u16>().is_ok() => host,
            _ => registry.as_str(),
        };
        self.insecure.iter().any(|i| *i == registry || *i == host)
    }

    /// The credentials a pull of `registry` uses: the function's own unless anonymous, else the
    /// config file's, else anonymous; and where they came from, for error messages.
    pub(crate) fn auth_for(&self, registry: &str, own: &RegistryAuth) -> (RegistryAuth, String) {
        if *own != RegistryAuth::Anonymous {
            return (own.clone(), "check registry_auth".into());
        }
        match (self.credentials.get(registry), self.credentials.source()) {
            (Some(auth), Some(file)) => (
                auth.clone(),
                format!(
                    "check the entry for {registry} in {}, or set registry_auth",
                    file.display()
                ),
            ),
            (Some(auth), None) => (auth.clone(), "check the registry config".into()),
            (None, _) => (RegistryAuth::Anonymous, "check registry_auth".into()),
        }
    }
}

/// `https://Index.Docker.io/v1/` → `docker.io`; `reg:5000` → `reg:5000`; `None` if it is no
/// `host[:port]`.
fn normalise_key(key: &str) -> Option<String> {
    let key = key.trim();
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    validate_registry(&host).ok()?;
    Some(canonical_registry(&host))
}

fn canonical_registry(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DEFAULT_REGISTRY.to_owned()
        }
        other => other.to_owned(),
    }
}

/// `base64(user:pass)` → Basic credentials. The error never quotes the value.
fn decode_auth(auth: &str) -> Result<RegistryAuth, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth.trim()))
        .map_err(|_| "\"auth\" is not base64 (expected base64 of user:password)".to_owned())?;
    let text = String::from_utf8(bytes)
        .map_err(|_| "\"auth\" does not decode to text (expected user:password)".to_owned())?;
    let (username, password) = text
        .split_once(':')
        .filter(|(user, _)| !user.is_empty())
        .ok_or_else(|| "\"auth\" does not decode to user:password".to_owned())?;
    Ok(RegistryAuth::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> RegistryAuth {
        RegistryAuth::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn reads_auth_and_username_password_entries_with_docker_hub_aliases() {
        // "dTpw" is base64("u:p"); "YWxpY2U6czNjcjp0" is base64("alice:s3cr:t").
        let (creds, report) = RegistryCredentials::parse(
            br#"{"auths":{
                "reg.example.com:5000":{"auth":"dTpw"},
                "https://index.docker.io/v1/":{"auth":"YWxpY2U6czNjcjp0"},
                "http://Other.Example.com/some/path":{"username":"bob","password":"pw"},
                "empty.example.com":{}
            },"HttpHeaders":{"X":"y"}}"#,
        )
        .unwrap();
        assert_eq!(creds.get("reg.example.com:5000"), Some(&basic("u", "p")));
        assert_eq!(creds.get("docker.io"), Some(&basic("alice", "s3cr:t")));
        assert_eq!(creds.get("other.example.com"), Some(&basic("bob", "pw")));
        assert_eq!(
            creds.get("reg.example.com"),
            None,
            "the port is part of the key"
        );
        assert_eq!(creds.get("empty.example.com"), None);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(report.warnings[0].contains("empty.example.com"));
    }

    #[test]
    fn credential_helpers_are_named_in_warnings_and_not_run() {
        let (creds, report) = RegistryCredentials::parse(
            br#"{"auths":{"ghcr.io":{}},"credsStore":"desktop",
                "credHelpers":{"123.dkr.ecr.eu-west-1.amazonaws.com":"ecr-login"}}"#,
        )
        .unwrap();
        assert_eq!(creds.registries().count(), 0);
        let all = report.warnings.join("\n");
        assert!(all.contains("docker-credential-desktop"), "{all}");
        assert!(
            all.contains("docker-credential-ecr-login")
                && all.contains("123.dkr.ecr.eu-west-1.amazonaws.com"),
            "{all}"
        );
    }

    #[test]
    fn malformed_files_say_what_is_wrong_and_never_show_secrets() {
        for (input, needle) in [
            (
                &br#"{"auths":{"r.io":{"auth":"!!!not-base64-s3cret"}}}"#[..],
                "not base64",
            ),
            (
                br#"{"auths":{"r.io":{"auth":"bm9jb2xvbg=="}}}"#,
                "user:password",
            ), // "nocolon"
            (br#"{"auths":["r.io"]}"#, "expected a map"),
            (br#"{"auths":{"r.io":{"auth":"dTpw"}}"#, "EOF"),
            // serde_json quotes the values it did not expect: they are left out.
            (
                br#"{"auths":{"r.io":"s3cret-as-a-string"}}"#,
                "invalid type",
            ),
            (
                br#"{"auths":{"r.io":{"username":"u","password":9876543210}}}"#,
                "invalid type",
            ),
        ] {
            let err = RegistryCredentials::parse(input).expect_err("refused");
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
            assert!(
                !err.contains("s3cret")
                    && !err.contains("bm9jb2xvbg")
                    && !err.contains("9876543210"),
                "{err}"
            );
        }
    }

    #[test]
    fn debug_shows_registries_not_secrets() {
        let (creds, _) =
            RegistryCredentials::parse(br#"{"auths":{"r.io":{"auth":"dTpzM2NyZXQ="}}}"#).unwrap();
        let shown = format!("{creds:?}");
        assert!(
            shown.contains("r.io") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn locate_prefers_the_flag_then_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("mine.json");
        assert_eq!(
            RegistryCredentials::locate(Some(&explicit), Some(dir.path()), None),
            Some(explicit)
        );
        assert_eq!(
            RegistryCredentials::locate(None, Some(dir.path()), None),
            None
        );
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert_eq!(
            RegistryCredentials::locate(None, Some(dir.path()), None),
            Some(dir.path().join("config.json"))
        );
        assert_eq!(RegistryCredentials::locate(None, None, None), None);
        // Without $DOCKER_CONFIG, the home directory's, as docker login writes it.
        let home = tempfile::tempdir().unwrap();
        assert_eq!(
            RegistryCredentials::locate(None, None, Some(home.path())),
            None
        );
        let docker = home.path().join(".docker");
        std::fs::create_dir(&docker).unwrap();
        std::fs::write(docker.join("config.json"), "{}").unwrap();
        assert_eq!(
            RegistryCredentials::locate(None, None, Some(home.path())),
            Some(docker.join("config.json"))
        );
        // $DOCKER_CONFIG set: only there, as Docker does.
        assert_eq!(
            RegistryCredentials::locate(None, Some(home.path()), Some(home.path())),
            None
        );
    }

    #[test]
    fn function_credentials_win_over_the_file() {
        let (mut credentials, _) =
            RegistryCredentials::parse(br#"{"auths":{"r.io":{"auth":"dTpw"}}}"#).unwrap();
        credentials.source = Some("/etc/wharf/config.json".into());
        let settings = RegistrySettings {
            credentials,
            insecure: vec![],
        };
        let own = basic("fn", "pw");
        assert_eq!(settings.auth_for("r.io", &own).0, own);
        let (auth, hint) = settings.auth_for("r.io", &RegistryAuth::Anonymous);
        assert_eq!(auth, basic("u", "p"));
        assert!(hint.contains("/etc/wharf/config.json"), "{hint}");
        assert_eq!(
            settings.auth_for("other.io", &RegistryAuth::Anonymous).0,
            RegistryAuth::Anonymous
        );
    }

    #[test]
    fn insecure_registries_match_host_and_port_or_any_port_of_a_host() {
        let settings = RegistrySettings {
            credentials: RegistryCredentials::default(),
            insecure: vec![
                RegistrySettings::parse_insecure("Reg.Lan:5000").unwrap(),
                RegistrySettings::parse_insecure("build.lan").unwrap(),
            ],
        };
        assert!(settings.is_insecure("reg.lan:5000"));
        assert!(!settings.is_insecure("reg.lan:5001"));
        assert!(!settings.is_insecure("reg.lan"));
        assert!(settings.is_insecure("build.lan"));
        assert!(settings.is_insecure("build.lan:8080"));
        assert!(!settings.is_insecure("ghcr.io"));
        for bad in ["http://reg.lan", "reg.lan/x", "reg.lan:99999", "re g"] {
            let err = RegistrySettings::parse_insecure(bad).unwrap_err();
            assert!(err.to_string().contains("HOST[:PORT]"), "{err}");
        }
    }
}
