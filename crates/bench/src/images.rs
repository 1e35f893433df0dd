//! The benchmark's images, built by the program:
//!
//! - the test function (`wharf-testfn`, a small static-ish HTTP server that listens at once);
//! - a Node/Express function: the host's `node` and the libraries `ldd` lists, `express`
//!   installed with npm into the cache directory, and a small FC-style `app.js`;
//! - a 5-layer, ~200 MiB (uncompressed) image in a gzip and a zstd variant, for pulls. Its
//!   content is deterministic pseudo-random text and binary data (about 3x compressible, like
//!   real images); the blobs are cached, since compressing them takes a while.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use wharf_test_support::node::EXPRESS;
use wharf_test_support::oci::{
    BuiltImage, Entry, Layer, OCI_CONFIG, OCI_MANIFEST, Pusher, sha256_digest,
};

use crate::progress;

/// The Node function: FC's `POST /initialize` and `POST /invoke` (answers the body) on 9000.
const APP_JS: &str = r#"'use strict';
const express = require('express');
const app = express();
app.use(express.raw({ type: () => true, limit: '32mb' }));
app.post('/initialize', (req, res) => res.send('initialized'));
app.post('/invoke', (req, res) => res.send(req.body));
const port = Number(process.env.FC_SERVER_PORT || 9000);
app.listen(port, '0.0.0.0', () => console.log(`express listening on ${port}`));
// As pid 1, node would ignore SIGTERM without a handler, and every stop would take the grace.
process.on('SIGTERM', () => process.exit(0));
"#;

/// The Node/Express image, with `express` from (or installed into) `cache`.
pub fn node_image(cache: &Path) -> anyhow::Result<BuiltImage> {
    progress!(
        "building the Node/Express image ({EXPRESS}, cache {})",
        cache.display()
    );
    wharf_test_support::node::express_image(APP_JS, cache)
}

/// Sizes of the layers of the pull image, in MiB: a base, a runtime, dependencies, the app.
const BIG_LAYERS_MIB: [u64; 5] = [80, 50, 35, 20, 15];
/// Bump when the generator changes, so that old caches are not used.
const BIG_VERSION: u32 = 2;

/// One compressed form of a layer, as a file in the cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlobFile {
    pub file: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BigLayer {
    pub diff_id: String,
    pub tar_size: u64,
    pub gzip: BlobFile,
    pub zstd: BlobFile,
}

/// The pull image: its layers in both compressions, cached under `dir`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BigImage {
    pub version: u32,
    pub layers: Vec<BigLayer>,
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Gzip,
    Zstd,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Gzip => "gzip",
            Variant::Zstd => "zstd",
        }
    }

    fn media_type(self) -> &'static str {
        match self {
            Variant::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Variant::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

impl BigImage {
    pub fn uncompressed_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.tar_size).sum()
    }

    pub fn compressed_bytes(&self, v: Variant) -> u64 {
        self.layers.iter().map(|l| self.blob(l, v).size).sum()
    }

    pub fn blob<'a>(&self, layer: &'a BigLayer, v: Variant) -> &'a BlobFile {
        match v {
            Variant::Gzip => &layer.gzip,
            Variant::Zstd => &layer.zstd,
        }
    }

    pub fn path(&self, blob: &BlobFile) -> PathBuf {
        self.dir.join(&blob.file)
    }

    /// Loads the cached image, or generates it.
    pub fn load_or_generate(cache: &Path) -> anyhow::Result<BigImage> {
        let dir = cache.join(format!("pull-image-v{BIG_VERSION}"));
        if let Ok(text) = std::fs::read_to_string(dir.join("image.json"))
            && let Ok(mut image) = serde_json::from_str::<BigImage>(&text)
        {
            image.dir = dir.clone();
            let complete = image.version == BIG_VERSION
                && image.layers.iter().all(|l| {
                    [&l.gzip, &l.zstd]
                        .iter()
                        .all(|b| std::fs::metadata(image.path(b)).is_ok_and(|m| m.len() == b.size))
                });
            if complete {
                return Ok(image);
            }
        }
        progress!(
            "generating the {}-layer pull image ({} MiB) into {} (once; it is cached)",
            BIG_LAYERS_MIB.len(),
            BIG_LAYERS_MIB.iter().sum::<u64>(),
            dir.display()
        );
        // Older generations of the image, and this one if incomplete, go.
        for old in std::fs::read_dir(cache)?.flatten() {
            if old
                .file_name()
                .to_string_lossy()
                .starts_with("pull-image-v")
            {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
        let tmp = cache.join(format!("pull-image-v{BIG_VERSION}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let layers = std::thread::scope(|s| {
            let handles: Vec<_> = BIG_LAYERS_MIB
                .iter()
                .enumerate()
                .map(|(i, &mib)| {
                    let tmp = &tmp;
                    s.spawn(move || generate_layer(tmp, i, mib << 20))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| bail!("a generator panicked")))
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        let image = BigImage {
            version: BIG_VERSION,
            layers,
            dir: dir.clone(),
        };
        std::fs::write(tmp.join("image.json"), serde_json::to_vec_pretty(&image)?)?;
        std::fs::rename(&tmp, &dir)?;
        Ok(image)
    }

    /// Pushes the variant as `repo:latest`; returns the manifest digest.
    pub async fn push(&self, pusher: &Pusher, repo: &str, v: Variant) -> anyhow::Result<String> {
        let mut descriptors = Vec::new();
        for layer in &self.layers {
            let blob = self.blob(layer, v);
            let bytes = tokio::fs::read(self.path(blob)).await?;
            let digest = pusher.push_blob(repo, &bytes).await?;
            ensure!(
                digest == blob.digest,
                "the cached blob {} changed",
                blob.file
            );
            descriptors.push(
                json!({"mediaType": v.media_type(), "digest": blob.digest, "size": blob.size}),
            );
        }
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": self.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()},
        }))?;
        pusher.push_blob(repo, &config).await?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(&config), "size": config.len()},
            "layers": descriptors,
        }))?;
        pusher
            .push_manifest(repo, "latest", OCI_MANIFEST, &manifest)
            .await
    }
}

/// Writes layer `index` (`bytes` of tar, about) compressed both ways into `dir`.
fn generate_layer(dir: &Path, index: usize, bytes: u64) -> anyhow::Result<BigLayer> {
    let tar = layer_tar(index as u64, bytes)?;
    let diff_id = sha256_digest(&tar);
    let gzip = {
        // Level 6, what `docker build` and BuildKit use.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar)?;
        gz.finish()?
    };
    let zstd = zstd::encode_all(&tar[..], 3)?;
    let write = |name: String, data: &[u8]| -> anyhow::Result<BlobFile> {
        std::fs::write(dir.join(&name), data)?;
        Ok(BlobFile {
            file: name,
            digest: format!("sha256:{}", hex::encode(Sha256::digest(data))),
            size: data.len() as u64,
        })
    };
    Ok(BigLayer {
        diff_id,
        tar_size: tar.len() as u64,
        gzip: write(format!("layer{index}.tar.gz"), &gzip)?,
        zstd: write(format!("layer{index}.tar.zst"), &zstd)?,
    })
}

/// splitmix64: small, fast, and the same forever (the content must not change with a crate).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// 0..n, small values much more likely (roughly Zipf-like, as words in text are).
    fn skewed(&mut self, n: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u * u * u) * n as f64) as u64
    }
}

/// A vocabulary of made-up words.
fn vocabulary(rng: &mut Rng) -> Vec<String> {
    const SYLLABLES: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ru", "sta", "tor", "vi", "en", "ex", "con", "fig", "ser", "ver",
        "pro", "cess", "han", "dle", "buf", "fer", "io", "net", "data", "_",
    ];
    (0..2048)
        .map(|_| {
            let n = 1 + rng.below(4);
            (0..n)
                .map(|_| SYLLABLES[rng.below(SYLLABLES.len() as u64) as usize])
                .collect()
        })
        .collect()
}

/// Text like source code and configuration: lines of words drawn with a skew, and now and then
/// a line seen before (code repeats itself).
fn text(rng: &mut Rng, words: &[String], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 256);
    let mut lines: Vec<(usize, usize)> = Vec::new();
    while out.len() < len {
        if lines.len() > 16 && rng.below(3) == 0 {
            let (start, end) =
                lines[lines.len() - 1 - rng.below(lines.len().min(256) as u64) as usize];
            out.extend_from_within(start..end);
            continue;
        }
        let start = out.len();
        let indent = rng.below(4) as usize * 4;
        out.extend(std::iter::repeat_n(b' ', indent));
        let n = 3 + rng.below(10);
        for i in 0..n {
            if i > 0 {
                out.push(if rng.below(8) == 0 { b'.' } else { b' ' });
            }
            out.extend_from_slice(words[rng.skewed(words.len() as u64) as usize].as_bytes());
            if rng.below(16) == 0 {
                out.extend_from_slice(format!("{}", rng.below(100_000)).as_bytes());
            }
        }
        out.extend_from_slice(if rng.below(3) == 0 { b";\n" } else { b"\n" });
        lines.push((start, out.len()));
    }
    out.truncate(len);
    out
}

/// Bytes like machine code: frequent opcodes and zeros among random bytes, and sequences seen
/// before.
fn code(rng: &mut Rng, len: usize) -> Vec<u8> {
    const COMMON: [u8; 16] = [
        0x48, 0x89, 0x8b, 0xe8, 0x0f, 0xff, 0x83, 0xc3, 0x45, 0x85, 0x74, 0x75, 0x41, 0x4c, 0xc7,
        0x24,
    ];
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let r = rng.next();
        match r % 12 {
            0..=4 => out.push(COMMON[((r >> 8) % 16) as usize]),
            5..=6 => out.push(0),
            7 => out.extend_from_slice(&[0; 8]),
            8 if out.len() > 4096 && (r >> 40).is_multiple_of(4) => {
                let n = 8 + ((r >> 8) % 56) as usize;
                let back = 64 + ((r >> 16) % 4000) as usize;
                let start = out.len() - back;
                out.extend_from_within(start..start + n);
            }
            _ => out.push((r >> 24) as u8),
        }
    }
    out.truncate(len);
    out
}

/// Already-compressed data (images, archives): incompressible.
fn random(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The tar of layer `index`: directories of files, 1 KiB to 2 MiB, until `bytes`.
fn layer_tar(index: u64, bytes: u64) -> anyhow::Result<Vec<u8>> {
    let mut rng = Rng(0x5eed_0000 + index);
    let words = vocabulary(&mut rng);
    let mut entries = vec![Entry::dir(&format!("layer{index}"))];
    let mut total = 0u64;
    let mut file = 0u64;
    while total < bytes {
        if file.is_multiple_of(64) {
            entries.push(Entry::dir(&format!("layer{index}/d{}", file / 64)));
        }
        // Log-uniform between 1 KiB and 2 MiB.
        let exp = 10.0 + (rng.below(1000) as f64 / 1000.0) * 11.0;
        let len = (2f64.powf(exp) as u64).min(bytes - total).max(1) as usize;
        let (content, ext) = match rng.below(100) {
            0..=59 => (text(&mut rng, &words, len), "txt"),
            60..=95 => (code(&mut rng, len), "so"),
            _ => (random(&mut rng, len), "bin"),
        };
        let path = format!("layer{index}/d{}/f{file}.{ext}", file / 64);
        entries.push(Entry::file(&path, content));
        total += len as u64;
        file += 1;
    }
    Layer::new(entries).tar()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip_ratio(data: &[u8]) -> f64 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).unwrap();
        data.len() as f64 / gz.finish().unwrap().len() as f64
    }

    #[test]
    fn the_generator_is_deterministic_and_compresses_like_real_files() {
        let one = layer_tar(7, 2 << 20).unwrap();
        let two = layer_tar(7, 2 << 20).unwrap();
        assert_eq!(sha256_digest(&one), sha256_digest(&two));
        // Text like source code (4-5x), machine code (2-3x), random data (1x): with the mix of
        // files, the whole image is about 3x.
        let mut rng = Rng(1);
        let words = vocabulary(&mut rng);
        let text = gzip_ratio(&text(&mut rng, &words, 1 << 20));
        assert!((4.0..5.5).contains(&text), "text {text:.2}");
        let code = gzip_ratio(&code(&mut rng, 1 << 20));
        assert!((2.2..3.0).contains(&code), "code {code:.2}");
        let random = gzip_ratio(&random(&mut rng, 1 << 20));
        assert!(random < 1.01, "random {random:.2}");
    }
}
