//! Node/Express function images: the host's `node` with the libraries `ldd` lists, `express`
//! installed with npm into a cache directory (once), and the function's `app.js`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

use crate::oci::{BuiltImage, Compression, Entry, ImageBuilder, Layer, binary_layer, tree_entries};

/// The Express version the images install.
pub const EXPRESS: &str = "express@4.21.2";

/// Where tests keep their npm cache: `<repo>/target/node-cache`.
pub fn test_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/node-cache")
}

/// An image running `app_js` (as `/app/app.js`) with Node and Express, `express` from (or
/// installed into) `cache`. `Err` when there is no `node` or npm cannot install Express.
pub fn express_image(app_js: &str, cache: &Path) -> anyhow::Result<BuiltImage> {
    let node = which("node").context("node is not installed")?;
    let app_dir = cache.join("node-express");
    let marker = app_dir.join("node_modules/express/package.json");
    std::fs::create_dir_all(&app_dir)?;
    // Tests may build at the same time: one installs, the others wait.
    let lock = std::fs::File::create(cache.join("node-express.lock"))?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an fd we own; it has no memory effects.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    if !marker.exists() {
        std::fs::write(app_dir.join("package.json"), "{\"private\": true}\n")?;
        let out = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--omit=dev",
                "--loglevel=error",
                EXPRESS,
            ])
            .current_dir(&app_dir)
            .output()
            .context("running npm")?;
        ensure!(
            out.status.success() && marker.exists(),
            "npm install {EXPRESS} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(lock);
    let mut entries = vec![
        Entry::dir("app"),
        Entry::file("app/app.js", app_js),
        Entry::file(
            "app/package.json",
            std::fs::read(app_dir.join("package.json"))?,
        ),
    ];
    tree_entries(
        &app_dir.join("node_modules"),
        "app/node_modules",
        &|_| true,
        &mut entries,
    )?;
    ImageBuilder::new()
        .layer(binary_layer(&node, "/usr/bin/node")?.compression(Compression::Zstd))
        .layer(Layer::new(entries))
        .entrypoint(["/usr/bin/node", "/app/app.js"])
        .working_dir("/app")
        .env("NODE_ENV=production")
        .build()
}

/// `program` on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}
