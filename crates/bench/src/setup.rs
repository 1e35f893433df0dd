//! What every figure needs: the binaries, a loopback registry with the images pushed, and
//! `wharf serve` daemons with fresh data directories.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::json;
use wharf_test_support::daemon::{Wharf, WharfOptions};
use wharf_test_support::oci::{BuiltImage, Pusher};
use wharf_test_support::registry::Registry;

use crate::baseline::RuntimeKind;
use crate::http::Target;
use crate::images::{BigImage, Variant};
use crate::progress;

/// The release binaries the benchmark runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub wharf: PathBuf,
    pub testfn: PathBuf,
    /// More arguments for every `wharf serve` (`--serve-arg`).
    pub serve_args: Vec<String>,
}

impl Binaries {
    /// `$WHARF_BIN` / `$WHARF_TESTFN`, else next to this program (cargo puts them together).
    pub fn find() -> anyhow::Result<Binaries> {
        let here = std::env::current_exe()?;
        let dir = here.parent().context("the program's directory")?;
        let pick = |var: &str, name: &str| -> anyhow::Result<PathBuf> {
            let p = std::env::var_os(var).map_or_else(|| dir.join(name), PathBuf::from);
            ensure!(
                p.is_file(),
                "{} is missing: build it (scripts/bench.sh does) or set {var}",
                p.display()
            );
            Ok(p)
        };
        Ok(Binaries {
            wharf: pick("WHARF_BIN", "wharf")?,
            testfn: pick("WHARF_TESTFN", "wharf-testfn")?,
            serve_args: Vec::new(),
        })
    }
}

/// An image pushed to the registry.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub reference: String,
    pub image: BuiltImage,
}

/// The registry and what was pushed to it.
pub struct Images {
    pub registry: Registry,
    pub testfn: Option<Pushed>,
    /// `None` when not wanted; an error (no node or npm, say) is reported on its line.
    pub node: Option<Result<Pushed, String>>,
    /// The pull image and its references per variant.
    pub big: Option<(BigImage, String, String)>,
}

impl Images {
    pub async fn set_up(
        bins: &Binaries,
        cache: &Path,
        testfn: bool,
        node: bool,
        big: bool,
    ) -> anyhow::Result<Images> {
        let registry = Registry::start()?;
        progress!("registry on {}", registry.host());
        let pusher = Pusher::for_registry(&registry);
        let host = registry.host();
        let mut images = Images {
            registry,
            testfn: None,
            node: None,
            big: None,
        };
        if testfn {
            let image = wharf_test_support::testfn::testfn_image(&bins.testfn)?;
            pusher.push_image("bench/testfn", "latest", &image).await?;
            progress!(
                "pushed the test function ({} KiB compressed)",
                image
                    .layers
                    .iter()
                    .map(|l| l.blob.bytes.len())
                    .sum::<usize>()
                    / 1024
            );
            images.testfn = Some(Pushed {
                reference: format!("{host}/bench/testfn:latest"),
                image,
            });
        }
        if node {
            let pushed = async {
                let image = crate::images::node_image(cache)?;
                pusher.push_image("bench/node", "latest", &image).await?;
                progress!(
                    "pushed the Node/Express image ({} MiB compressed)",
                    image
                        .layers
                        .iter()
                        .map(|l| l.blob.bytes.len())
                        .sum::<usize>()
                        >> 20
                );
                anyhow::Ok(Pushed {
                    reference: format!("{host}/bench/node:latest"),
                    image,
                })
            }
            .await;
            if let Err(e) = &pushed {
                progress!("no Node/Express image: {e:#}");
            }
            images.node = Some(pushed.map_err(|e| format!("{e:#}")));
        }
        if big {
            let image = BigImage::load_or_generate(cache)?;
            image
                .push(&pusher, "bench/pull-gzip", Variant::Gzip)
                .await?;
            image
                .push(&pusher, "bench/pull-zstd", Variant::Zstd)
                .await?;
            progress!(
                "pushed the pull image: {} layers, {} MiB uncompressed, gzip {} MiB, zstd {} MiB",
                image.layers.len(),
                image.uncompressed_bytes() >> 20,
                image.compressed_bytes(Variant::Gzip) >> 20,
                image.compressed_bytes(Variant::Zstd) >> 20,
            );
            images.big = Some((
                image,
                format!("{host}/bench/pull-gzip:latest"),
                format!("{host}/bench/pull-zstd:latest"),
            ));
        }
        Ok(images)
    }
}

/// What the first daemon with `--runtime auto` said about its runtime, for the report.
pub static AUTO_RUNTIME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// What a daemon said about its OCI runtime at start-up.
#[derive(Clone, Debug)]
pub struct ChosenRuntime {
    pub kind: RuntimeKind,
    pub note: String,
}

/// A running `wharf serve`, stopped on drop, with a check of what it left behind.
pub struct Daemon {
    wharf: Option<Wharf>,
    pub addr: SocketAddr,
    pub runtime: ChosenRuntime,
    client: reqwest::Client,
}

impl Daemon {
    /// `wharf serve --idle-timeout <idle> --runtime <runtime>` with a fresh data directory.
    pub fn start(
        bins: &Binaries,
        idle_timeout_s: u64,
        runtime_arg: &str,
    ) -> anyhow::Result<Daemon> {
        // Blocking calls on the runtime's one thread are fine here: nothing is being measured.
        let wharf = Wharf::start(
            &bins.wharf,
            WharfOptions {
                idle_timeout_s,
                stop_grace_s: 2,
                runtime: runtime_arg.into(),
                extra: bins.serve_args.clone(),
            },
        )?;
        let addr = wharf
            .url()
            .trim_start_matches("http://")
            .parse()
            .context("the daemon's address")?;
        let runtime = chosen_runtime(&wharf.log())?;
        if runtime_arg == "auto" {
            let _ = AUTO_RUNTIME.set(runtime.note.clone());
        }
        wharf_test_support::install_crypto_provider();
        let client = reqwest::Client::builder().no_proxy().build()?;
        Ok(Daemon {
            wharf: Some(wharf),
            addr,
            runtime,
            client,
        })
    }

    fn wharf(&self) -> &Wharf {
        self.wharf.as_ref().expect("running until dropped")
    }

    pub fn pid(&self) -> u32 {
        self.wharf().pid().expect("running")
    }

    pub fn cgroup_parent(&self) -> &str {
        self.wharf().cgroup_parent()
    }

    /// Whether an instance is gone completely: its cgroup, and its bundle directory
    /// (`instances/<id>/`), which a stop removes last, after unmounting the rootfs.
    pub fn instance_gone(&self, id: &str) -> bool {
        !crate::netns::instance_exists(self.cgroup_parent(), id)
            && !self.wharf().data_dir().join("instances").join(id).exists()
    }

    /// Whether no instance exists, or is being stopped.
    pub fn no_instances(&self) -> bool {
        crate::netns::instances(self.cgroup_parent()).is_empty()
            && std::fs::read_dir(self.wharf().data_dir().join("instances"))
                .map_or(true, |mut d| d.next().is_none())
    }

    pub fn target(&self, function: &str) -> Target {
        Target::Wharf {
            addr: self.addr,
            function: function.into(),
            token: self.wharf().token().into(),
        }
    }

    /// Deploys (creates) a function; returns how long the API call took (pull + unpack
    /// included).
    pub async fn deploy(
        &self,
        name: &str,
        image: &str,
        memory_mb: u64,
    ) -> anyhow::Result<Duration> {
        self.deploy_with(name, json!({"image": image, "memory_mb": memory_mb}))
            .await
    }

    /// Deploys (creates) a function with this configuration; returns how long the API call
    /// took.
    pub async fn deploy_with(
        &self,
        name: &str,
        config: serde_json::Value,
    ) -> anyhow::Result<Duration> {
        let image = config["image"].as_str().unwrap_or_default().to_owned();
        let t0 = Instant::now();
        let resp = self
            .client
            .put(format!("{}/v1/functions/{name}", self.wharf().url()))
            .bearer_auth(self.wharf().token())
            .json(&config)
            .send()
            .await?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let took = t0.elapsed();
        if !status.is_success() {
            bail!("deploying {name} ({image}) answered {status}: {body}");
        }
        Ok(took)
    }

    /// Deletes a function (and stops its instances).
    pub async fn delete(&self, name: &str) -> anyhow::Result<()> {
        let resp = self
            .client
            .delete(format!("{}/v1/functions/{name}", self.wharf().url()))
            .bearer_auth(self.wharf().token())
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "deleting {name} answered {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Stops the daemon and reports what it left on the host.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut wharf) = self.wharf.take() else {
            return Ok(());
        };
        let result = wharf.stop();
        let left = wharf.leftovers();
        if !left.is_empty() {
            eprintln!("wharf-bench: wharf serve left behind: {left:?}");
        }
        result.map(|_| ())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("wharf-bench: stopping wharf serve: {e:#}");
        }
    }
}

/// Parses `OCI runtime: <note> runtime=Crun …` from the daemon's log.
pub fn chosen_runtime(log: &str) -> anyhow::Result<ChosenRuntime> {
    let line = log
        .lines()
        .find(|l| l.contains("OCI runtime: "))
        .context("the daemon did not say which OCI runtime it chose")?;
    let rest = line.split("OCI runtime: ").nth(1).unwrap_or_default();
    let note = rest
        .split(" runtime=")
        .next()
        .unwrap_or(rest)
        .trim()
        .to_string();
    let kind = if rest.contains("runtime=Crun") {
        RuntimeKind::Crun
    } else if rest.contains("runtime=Runc") {
        RuntimeKind::Runc
    } else if note.starts_with("crun") {
        RuntimeKind::Crun
    } else {
        RuntimeKind::Runc
    };
    Ok(ChosenRuntime { kind, note })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_line_is_understood() {
        let log = "2026-11-22T02:18:44Z  INFO wharf_sandbox::sandbox: sandbox ready runtime=crun\n\
                   2026-11-22T02:18:44Z  INFO wharf::serve: OCI runtime: crun in a private mount \
                   namespace without /sys/fs/cgroup/unified (hybrid cgroups) runtime=Crun \
                   path=/usr/bin/crun version=1.8.1\n";
        let r = chosen_runtime(log).unwrap();
        assert_eq!(r.kind, RuntimeKind::Crun);
        assert_eq!(
            r.note,
            "crun in a private mount namespace without /sys/fs/cgroup/unified (hybrid cgroups)"
        );
        let r =
            chosen_runtime("x OCI runtime: runc (requested; hybrid cgroups) runtime=Runc").unwrap();
        assert_eq!(r.kind, RuntimeKind::Runc);
        assert!(chosen_runtime("nothing").is_err());
    }
}
