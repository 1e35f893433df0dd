//! The test function (`wharf-testfn`, see `src/bin/testfn.rs`) packed as an image.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::oci::{BuiltImage, ImageBuilder, Pusher, binary_layer};

/// Where the image puts the test function.
pub const TESTFN_PATH: &str = "/testfn";

/// The `wharf-testfn` binary cargo built next to the running test (or `$WHARF_TESTFN`).
pub fn testfn_binary() -> anyhow::Result<PathBuf> {
    built_binary("wharf-testfn", "WHARF_TESTFN", "wharf-test-support")
}

/// The binary `name` of the workspace that cargo built next to the running test (or `$var`).
pub fn built_binary(name: &str, var: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    // Tests run from target/<profile>/deps/; binaries live in target/<profile>/.
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} was not built next to {} (run the tests with `cargo nextest run --workspace` \
         or `cargo build -p {package}`), or set {var}",
        exe.display()
    )
}

/// A copy of `binary` without its symbols in `dir` (the image stays small), or `binary` itself
/// without binutils.
pub(crate) fn stripped(binary: &Path, dir: &Path) -> PathBuf {
    let out = dir.join(binary.file_name().unwrap_or_else(|| "binary".as_ref()));
    match Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .status()
    {
        Ok(s) if s.success() => out,
        _ => binary.to_path_buf(),
    }
}

/// The test function as an image: the binary (stripped, so the layer stays small) and the
/// libraries it links, entrypoint `/testfn`, nothing else.
pub fn testfn_image(binary: &Path) -> anyhow::Result<BuiltImage> {
    let dir = tempfile::tempdir()?;
    ImageBuilder::new()
        .layer(binary_layer(&stripped(binary, dir.path()), TESTFN_PATH)?)
        .entrypoint([TESTFN_PATH])
        .env("TESTFN_IMAGE=1")
        .build()
}

/// Builds the test function image and pushes it as `repo:tag` to the registry at `host`;
/// returns the manifest digest.
pub async fn push_testfn(host: &str, repo: &str, tag: &str) -> anyhow::Result<String> {
    let image = testfn_image(&testfn_binary()?)?;
    Pusher::new(host)
        .push_image(repo, tag, &image)
        .await
        .with_context(|| format!("pushing the test function to {host}/{repo}:{tag}"))
}
