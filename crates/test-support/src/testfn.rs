//! The test function (`wharf-testfn`, see `src/bin/testfn.rs`) packed as an image.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::oci::{BuiltImage, ImageBuilder, Pusher, binary_layer};

/// Where the image puts the test function.
pub const TESTFN_PATH: &str = "/testfn";

/// The `wharf-testfn` binary cargo built next to the running test (or `$WHARF_TESTFN`).
pub fn testfn_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("WHARF_TESTFN") {
        return Ok(PathBuf::from(p));
    }
    // Tests run from target/<profile>/deps/; binaries live in target/<profile>/.
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("wharf-testfn");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "wharf-testfn was not built next to {} (run the tests with `cargo nextest run \
         --workspace` or `cargo build -p wharf-test-support`), or set WHARF_TESTFN",
        exe.display()
    )
}

/// The test function as an image: the binary (stripped, so the layer stays small) and the
/// libraries it links, entrypoint `/testfn`, nothing else.
pub fn testfn_image(binary: &Path) -> anyhow::Result<BuiltImage> {
    let dir = tempfile::tempdir()?;
    let stripped = dir.path().join("testfn");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(binary)
        .status();
    let source = match status {
        Ok(s) if s.success() => stripped.as_path(),
        // Without binutils the image is just bigger.
        _ => binary,
    };
    ImageBuilder::new()
        .layer(binary_layer(source, TESTFN_PATH)?)
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
