//! A real OCI registry on loopback for tests: Debian's `docker-registry` (CNCF distribution 2.8)
//! with file-system storage in a temporary directory, optionally behind htpasswd basic auth.
//! Killed and reaped on drop.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where Debian's package puts the registry binary.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// How long the registry may take to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts with a fresh port, in case another process took the one we picked.
const START_ATTEMPTS: usize = 3;

/// A running registry; see the module docs.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    credentials: Option<(String, String)>,
}

impl Registry {
    /// Starts an anonymous registry.
    pub fn start() -> anyhow::Result<Registry> {
        Registry::start_inner(None)
    }

    /// Starts a registry that requires these basic-auth credentials for everything.
    pub fn start_with_basic_auth(user: &str, pass: &str) -> anyhow::Result<Registry> {
        Registry::start_inner(Some((user.to_owned(), pass.to_owned())))
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The credentials the registry requires, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The file in the registry's storage that holds blob `digest` (`sha256:…`), for tests that
    /// tamper with what the registry serves.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// What the registry logged so far (for failure messages).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn start_inner(credentials: Option<(String, String)>) -> anyhow::Result<Registry> {
        if !Path::new(REGISTRY_BINARY).exists() {
            bail!(
                "{REGISTRY_BINARY} is missing: run scripts/setup.sh (it installs Debian's \
                 docker-registry package)"
            );
        }
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Registry::try_start(credentials.clone()) {
                Ok(registry) => return Ok(registry),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    fn try_start(credentials: Option<(String, String)>) -> anyhow::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("wharf-registry-")
            .tempdir()
            .context("creating the registry's directory")?;
        let addr = free_loopback_port()?;
        let auth = match &credentials {
            Some((user, pass)) => {
                let hash = bcrypt::hash(pass, 5).context("hashing the test password")?;
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n"))
                    .context("writing htpasswd")?;
                format!(
                    "auth:\n  htpasswd:\n    realm: wharf-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n\
             {auth}",
            data = dir.path().join("data").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).context("writing the registry config")?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {REGISTRY_BINARY}"))?;
        let mut registry = Registry {
            child,
            addr,
            dir,
            credentials,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = registry.child.try_wait()? {
                bail!(
                    "the registry exited at start ({status}); its log:\n{}",
                    registry.logs()
                );
            }
            // 200 when anonymous, 401 when it wants credentials: either way it is serving.
            if let Ok(status) = get_status(addr, "/v2/")
                && (status == 200 || status == 401)
            {
                return Ok(registry);
            }
            if Instant::now() > deadline {
                bail!(
                    "the registry did not answer on {addr} within {START_TIMEOUT:?}; its log:\n{}",
                    registry.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// The status code of a plain `GET path` (HTTP/1.0, no dependencies on an async runtime).
fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 16];
    stream.read_exact(&mut head[..12])?;
    let line = std::str::from_utf8(&head[..12])?;
    line.get(9..12)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("unexpected response {line:?}"))
}
