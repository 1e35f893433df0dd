//! P8 and P9: pull + unpack of the 5-layer image, gzip and zstd.
//!
//! Wharf: a fresh `wharf serve` with a fresh data directory per sample (started outside the
//! timed window), then `PUT /v1/functions/…` timed from request to answer — the deploy fetches
//! the manifest, config and layers from the loopback registry, verifies and unpacks them.
//! Baseline: the same layer blobs, fetched from the registry into local files beforehand, then
//! `gzip -dc FILE | tar -x` (or `zstd -dc`) into a fresh directory, one layer after the other
//! (the reference pipeline), and — informational — all layers at once. Samples alternate. The
//! registry's files and the local blob files are in the page cache on both sides; destinations
//! are always new directories on the same file system as Wharf's data directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use sha2::{Digest as _, Sha256};

use crate::figures::Plan;
use crate::images::{BigImage, Variant};
use crate::progress;
use crate::report::{Bound, Figure, Unit};
use crate::setup::{Binaries, Daemon};
use crate::stats::median;

/// P8 (gzip) and P9 (zstd).
pub async fn p8_p9(
    bins: &Binaries,
    registry_host: &str,
    image: &BigImage,
    refs: [(&str, Variant); 2],
    plan: &Plan,
    which: &dyn Fn(&str) -> bool,
) -> Vec<Figure> {
    let mut out = Vec::new();
    for (reference, variant) in refs {
        let id = match variant {
            Variant::Gzip => "P8",
            Variant::Zstd => "P9",
        };
        if !which(id) {
            continue;
        }
        progress!(
            "{id}: pull + unpack, {} layers {}, {} samples per side",
            image.layers.len(),
            variant.name(),
            plan.pull_samples
        );
        match measure(
            bins,
            registry_host,
            image,
            reference,
            variant,
            plan.pull_samples,
        )
        .await
        {
            Ok(m) => out.extend(lines(id, variant, image, m)),
            Err(e) => out.push(Figure::error(
                &format!("{id}.pull"),
                id,
                &format!("pull + unpack, {}", variant.name()),
                &e,
            )),
        }
    }
    out
}

struct Measured {
    wharf: Vec<Duration>,
    sequential: Vec<Duration>,
    parallel: Vec<Duration>,
}

fn lines(id: &str, v: Variant, image: &BigImage, m: Measured) -> Vec<Figure> {
    let bytes = image.uncompressed_bytes() as f64;
    let rate = |d: &[Duration]| -> Option<f64> {
        let r: Vec<f64> = d.iter().map(|d| bytes / d.as_secs_f64() / 1e6).collect();
        median(&r)
    };
    let tool = match v {
        Variant::Gzip => "gzip -dc | tar -x",
        Variant::Zstd => "zstd -dc | tar -x",
    };
    let name = format!(
        "pull + unpack, {} layers {} ({} MiB)",
        image.layers.len(),
        v.name(),
        image.uncompressed_bytes() >> 20
    );
    let bounds: &[Bound] = match v {
        Variant::Gzip => &[Bound::RatioAtLeast(0.9)],
        Variant::Zstd => &[Bound::AtLeast(400.0)],
    };
    vec![
        Figure::new(&format!("{id}.pull"), id, &name, Unit::MBps)
            .wharf(rate(&m.wharf).unwrap_or(f64::NAN))
            .baseline(
                &format!("{tool} of the same blobs from local files, one layer after the other"),
                rate(&m.sequential),
            )
            .ratio()
            .bounds(bounds)
            .samples(m.wharf.len(), Some(m.sequential.len()))
            .note("MB/s of uncompressed layer data; fresh daemon and data directory per sample")
            .judged(0),
        Figure::new(
            &format!("{id}.pull.parallel"),
            id,
            &format!("{name} vs layers in parallel"),
            Unit::MBps,
        )
        .wharf(rate(&m.wharf).unwrap_or(f64::NAN))
        .baseline(&format!("{tool}, all layers at once"), rate(&m.parallel))
        .ratio()
        .samples(m.wharf.len(), Some(m.parallel.len()))
        .judged(0),
    ]
}

async fn measure(
    bins: &Binaries,
    registry_host: &str,
    image: &BigImage,
    reference: &str,
    variant: Variant,
    samples: usize,
) -> anyhow::Result<Measured> {
    let scratch = tempfile::Builder::new()
        .prefix("wharf-bench-pull-")
        .tempdir()?;
    let repo = format!("bench/pull-{}", variant.name());
    let blobs = fetch_blobs(registry_host, &repo, image, variant, scratch.path()).await?;
    let mut m = Measured {
        wharf: Vec::new(),
        sequential: Vec::new(),
        parallel: Vec::new(),
    };
    for i in 0..samples {
        let mut daemon = Daemon::start(bins, 300, "auto")?;
        let took = daemon.deploy("pull", reference, 128).await?;
        daemon.stop()?;
        drop(daemon);
        m.wharf.push(took);

        m.sequential
            .push(unpack(&blobs, variant, scratch.path(), false)?);
        m.parallel
            .push(unpack(&blobs, variant, scratch.path(), true)?);
        progress!(
            "  {}: sample {}/{samples}: wharf {:.2} s, sequential {:.2} s, parallel {:.2} s",
            variant.name(),
            i + 1,
            took.as_secs_f64(),
            m.sequential[i].as_secs_f64(),
            m.parallel[i].as_secs_f64()
        );
    }
    Ok(m)
}

/// The variant's layer blobs, downloaded from the registry into `dir` and verified.
async fn fetch_blobs(
    host: &str,
    repo: &str,
    image: &BigImage,
    v: Variant,
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    wharf_test_support::install_crypto_provider();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut files = Vec::new();
    for (i, layer) in image.layers.iter().enumerate() {
        let blob = image.blob(layer, v);
        let url = format!("http://{host}/v2/{repo}/blobs/{}", blob.digest);
        let resp = client.get(&url).send().await?.error_for_status()?;
        let bytes = resp.bytes().await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        ensure!(digest == blob.digest, "{url} served {digest}");
        let path = dir.join(format!("layer{i}.{}", v.name()));
        std::fs::write(&path, &bytes)?;
        files.push(path);
    }
    Ok(files)
}

/// Blocking: decompress and untar every blob into a fresh directory each; returns the time.
/// The directories are removed afterwards, untimed.
fn unpack(
    blobs: &[PathBuf],
    v: Variant,
    scratch: &Path,
    parallel: bool,
) -> anyhow::Result<Duration> {
    let dest = tempfile::Builder::new()
        .prefix("unpack-")
        .tempdir_in(scratch)?;
    let dirs: Vec<PathBuf> = (0..blobs.len())
        .map(|i| dest.path().join(format!("l{i}")))
        .collect();
    for d in &dirs {
        std::fs::create_dir(d)?;
    }
    let t0 = Instant::now();
    if parallel {
        let pipelines: Vec<_> = blobs
            .iter()
            .zip(&dirs)
            .map(|(b, d)| start_pipeline(b, v, d))
            .collect::<anyhow::Result<_>>()?;
        for p in pipelines {
            p.wait()?;
        }
    } else {
        for (b, d) in blobs.iter().zip(&dirs) {
            start_pipeline(b, v, d)?.wait()?;
        }
    }
    let took = t0.elapsed();
    drop(dest);
    Ok(took)
}

struct Pipeline {
    decompress: std::process::Child,
    tar: std::process::Child,
}

fn start_pipeline(blob: &Path, v: Variant, into: &Path) -> anyhow::Result<Pipeline> {
    let tool = match v {
        Variant::Gzip => "gzip",
        Variant::Zstd => "zstd",
    };
    let mut decompress = Command::new(tool);
    decompress.arg("-dc");
    if v == Variant::Zstd {
        decompress.arg("-q");
    }
    let mut decompress = decompress
        .arg(blob)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool}"))?;
    let out = decompress
        .stdout
        .take()
        .context("the decompressor's stdout")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .stdin(out)
        .spawn()
        .context("running tar")?;
    Ok(Pipeline { decompress, tar })
}

impl Pipeline {
    fn wait(mut self) -> anyhow::Result<()> {
        let t = self.tar.wait()?;
        let d = self.decompress.wait()?;
        ensure!(
            t.success() && d.success(),
            "pipeline failed: decompress {d}, tar {t}"
        );
        Ok(())
    }
}
