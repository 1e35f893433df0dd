//! A real `wharf serve` for black-box tests: its own temporary data directory and cgroup parent,
//! an ephemeral loopback port, stopped (SIGTERM, then SIGKILL) on drop.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::patience;

/// How `wharf serve` is started.
#[derive(Clone, Debug)]
pub struct WharfOptions {
    /// `--idle-timeout` in seconds.
    pub idle_timeout_s: u64,
    /// `--stop-grace` in seconds.
    pub stop_grace_s: u64,
    /// `--runtime`: auto, crun or runc.
    pub runtime: String,
    /// More arguments for `wharf serve`.
    pub extra: Vec<String>,
}

impl Default for WharfOptions {
    fn default() -> Self {
        WharfOptions {
            idle_timeout_s: 300,
            stop_grace_s: 2,
            runtime: "auto".into(),
            extra: Vec::new(),
        }
    }
}

/// A running `wharf serve`.
pub struct Wharf {
    binary: PathBuf,
    options: WharfOptions,
    /// Holds the data directory and the daemon's log; removed on drop.
    root: tempfile::TempDir,
    data_dir: PathBuf,
    cgroup_parent: String,
    child: Option<Child>,
    url: String,
    token: String,
}

/// What an API call answered.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl ApiResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

impl Wharf {
    /// Starts `binary serve` with a fresh data directory.
    pub fn start(binary: &Path, options: WharfOptions) -> anyhow::Result<Wharf> {
        let root = tempfile::Builder::new().prefix("wharf-test-").tempdir()?;
        let data_dir = root.path().join("data");
        let suffix = root
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x")
            .trim_start_matches("wharf-test-")
            .to_ascii_lowercase();
        let mut w = Wharf {
            binary: binary.to_path_buf(),
            options,
            root,
            data_dir,
            cgroup_parent: format!("wharf-test-{suffix}"),
            child: None,
            url: String::new(),
            token: String::new(),
        };
        w.spawn()?;
        Ok(w)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let addr_file = self.data_dir.join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--cgroup-parent", &self.cgroup_parent])
            .args(["--runtime", &self.options.runtime])
            .args(["--idle-timeout", &self.options.idle_timeout_s.to_string()])
            .args(["--stop-grace", &self.options.stop_grace_s.to_string()])
            .args(&self.options.extra)
            .env("RUST_LOG", "info,wharf=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        let deadline = Instant::now() + patience();
        loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file)
                && text.ends_with('\n')
            {
                self.url = text.trim().to_string();
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "wharf serve exited ({status}) before listening; its log:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "wharf serve did not listen within {:?}; its log:\n{}",
                    patience(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.token = std::fs::read_to_string(self.data_dir.join("api.token"))?
            .trim()
            .to_string();
        self.child = Some(child);
        Ok(())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("wharf.log")
    }

    /// Everything the daemon has printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM and waits for it (SIGKILL after the patience).
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("wharf serve is not running");
        };
        signal(child.id(), libc_sigterm());
        let deadline = Instant::now() + patience();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait()?;
                bail!(
                    "wharf serve did not stop within {:?} of SIGTERM (killed: {status}); its \
                     log:\n{}",
                    patience(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would: its instances stay behind.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("wharf serve is not running");
        };
        child.kill()?;
        let status = child.wait()?;
        assert_eq!(status.signal(), Some(9), "{status}");
        Ok(())
    }

    /// Starts the daemon again on the same data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        self.spawn()
    }

    /// Runs `wharf <args>` against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .args(["--url", &self.url])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .env_remove("WHARF_TOKEN")
            .env_remove("WHARF_URL")
            .stdin(Stdio::null())
            .output()
            .expect("run the wharf CLI")
    }

    /// One API call with the token.
    pub async fn api(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> ApiResponse {
        self.api_with_token(method, path, body, Some(&self.token))
            .await
    }

    /// One API call with the given token (or none).
    pub async fn api_with_token(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> ApiResponse {
        self.request(method, path, &[], body, token).await
    }

    /// One API call with the token and these headers.
    pub async fn api_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> ApiResponse {
        self.request(method, path, headers, body, Some(&self.token))
            .await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> ApiResponse {
        crate::install_crypto_provider();
        let client = reqwest::Client::new();
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut req = client.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("API call {path} failed: {e}; daemon log:\n{}", self.log()));
        ApiResponse {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.expect("read the answer").to_vec(),
        }
    }

    /// What the daemon (or a crash of it) left on the host: mounts under the data directory,
    /// cgroups of its parent, processes in those cgroups or naming the data directory.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = leftovers(&self.data_dir, &self.cgroup_parent);
        if let Some(bridge) = self.bridge_name() {
            found.extend(bridge_leftovers(&bridge));
        }
        found
    }

    /// The `--bridge-name` this daemon was given, if any (tests that use bridge mode give
    /// their own, so that parallel daemons do not share one).
    pub fn bridge_name(&self) -> Option<String> {
        let extra = &self.options.extra;
        extra
            .iter()
            .position(|a| a == "--bridge-name")
            .and_then(|i| extra.get(i + 1).cloned())
    }
}

impl Drop for Wharf {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.stop()
        {
            eprintln!("stopping wharf serve: {e:#}");
        }
    }
}

fn libc_sigterm() -> i32 {
    15
}

fn signal(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// The bridge interface `name`, veths enslaved to it, and its nftables table `inet wharf-<name>`,
/// if any is still there.
pub fn bridge_leftovers(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let dir = Path::new("/sys/class/net").join(name);
    if dir.exists() {
        found.push(format!("bridge: {name}"));
        if let Ok(ports) = std::fs::read_dir(dir.join("brif")) {
            for port in ports.flatten() {
                found.push(format!(
                    "veth on {name}: {}",
                    port.file_name().to_string_lossy()
                ));
            }
        }
    }
    let table = format!("wharf-{name}");
    let listed = Command::new("nft")
        .args(["list", "table", "inet", &table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if listed.is_ok_and(|s| s.success()) {
        found.push(format!("nftables table: inet {table}"));
    }
    found
}

/// Mounts under `data_dir`, cgroup directories named `cgroup_parent` in any hierarchy, and
/// processes in those cgroups or whose command line names `data_dir`.
pub fn leftovers(data_dir: &Path, cgroup_parent: &str) -> Vec<String> {
    let mut found = Vec::new();
    let dir = data_dir.to_string_lossy().into_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        if line.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)) {
            found.push(format!("mount: {line}"));
        }
    }
    // cgroup v2 (`/sys/fs/cgroup/<parent>`), v1 and hybrid (`/sys/fs/cgroup/<hierarchy>/<parent>`).
    let mut places = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        places.extend(hierarchies.flatten().map(|h| h.path()));
    }
    for place in places {
        let p = place.join(cgroup_parent);
        if p.exists() {
            found.push(format!("cgroup: {}", p.display()));
        }
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let name = p.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            // A container's root is not visible from here (it is in another mount namespace),
            // but its cgroups are.
            let cgroups = std::fs::read_to_string(p.path().join("cgroup")).unwrap_or_default();
            let in_instance = cgroups.contains(&format!("/{cgroup_parent}/"));
            let cmdline = std::fs::read(p.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            if in_instance || (cmdline.contains(&dir) && !cmdline.is_empty()) {
                let status = std::fs::read_to_string(p.path().join("status")).unwrap_or_default();
                let field = |name: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::trim)
                        .unwrap_or("?")
                        .to_owned()
                };
                // An instance's init orphaned by a killed daemon and killed by the next one's
                // recovery is the host init's to reap, which may take its time: a zombie holds
                // no resource (its cgroup is already removed) and is not Wharf's to reap.
                if field("State:").starts_with('Z') && field("PPid:") == "1" {
                    continue;
                }
                found.push(format!(
                    "process {pid}: {} ({}, state {}, parent {}) in {}",
                    cmdline.trim(),
                    field("Name:"),
                    field("State:"),
                    field("PPid:"),
                    cgroups
                        .lines()
                        .find(|l| l.contains(cgroup_parent))
                        .unwrap_or("")
                ));
            }
        }
    }
    found
}
