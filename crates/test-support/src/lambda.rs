//! The lambda contract's test images, built as AWS documents Lambda container images:
//!
//! - Rust: `wharf-lambda-fn` (the `lambda-fn` crate, built on AWS's `lambda_runtime`) as
//!   `/var/task/bootstrap`, the image's entrypoint;
//! - Python: the host's `/usr/bin/python3` with its standard library, AWS's `awslambdaric` (from
//!   PyPI, through `scripts/lambda-python.sh`) and a handler module `app.py` in `/var/task`:
//!   `ENTRYPOINT ["/usr/bin/python3", "-m", "awslambdaric"]`, `CMD ["app.handler"]`, as in
//!   AWS's guide for images of other bases. `broken.handler` fails at import (an init error).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::oci::{
    BuiltImage, Entry, ImageBuilder, Layer, binary_layer, shared_libraries, tree_entries,
};
use crate::testfn::{built_binary, stripped};

/// The Python handler: `{"cmd": …}` events like the Rust function's.
pub const APP_PY: &str = r#"import os
import time


def handler(event, context):
    cmd = event.get("cmd") if isinstance(event, dict) else None
    if isinstance(event, dict) and "name" in event:
        return {"greeting": "Hello, %s!" % event["name"]}
    if cmd == "context":
        names = ("_HANDLER", "TZ", "PYTHONPATH")
        env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "LAMBDA_")) or k in names}
        return {
            "request_id": context.aws_request_id,
            "function_name": context.function_name,
            "function_version": context.function_version,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "invoked_function_arn": context.invoked_function_arn,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "env": env,
        }
    if cmd == "fail":
        raise ValueError(event.get("message", "told to fail"))
    if cmd == "print":
        print(event.get("text", ""), flush=True)
        return {"printed": True}
    if cmd == "sleep":
        time.sleep(event.get("ms", 100) / 1000)
        return {"slept_ms": event.get("ms", 100)}
    if cmd == "write":
        result = {}
        for path in ("/tmp/probe", "/var/task/probe"):
            try:
                with open(path, "w") as f:
                    f.write("x")
                result[path] = "ok"
            except OSError as e:
                result[path] = e.strerror
        return result
    return event
"#;

/// A module whose import fails: the runtime client reports an init error.
pub const BROKEN_PY: &str = "raise RuntimeError('broken on purpose at import')\n";

/// The Rust function's image.
pub fn rust_lambda_image() -> anyhow::Result<BuiltImage> {
    let binary = built_binary("wharf-lambda-fn", "WHARF_LAMBDA_FN", "wharf-lambda-fn")?;
    let dir = tempfile::tempdir()?;
    ImageBuilder::new()
        .layer(binary_layer(
            &stripped(&binary, dir.path()),
            "/var/task/bootstrap",
        )?)
        .entrypoint(["/var/task/bootstrap"])
        .working_dir("/var/task")
        .build()
}

/// `target/awslambdaric` made by `scripts/lambda-python.sh`; `Err` says why it could not be
/// (no python3, no PyPI), for the test's skip message.
pub fn awslambdaric() -> anyhow::Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lambda-python.sh");
    let out = Command::new(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Parts of the standard library a Lambda handler does not need (tests, IDEs, GUIs, bytecode).
fn stdlib_kept(rel: &Path) -> bool {
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let dropped = [
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "distutils",
        "unittest",
        "config-3.11-x86_64-linux-gnu",
    ];
    !rel.components().any(|c| c.as_os_str() == "__pycache__")
        && !first.is_some_and(|f| dropped.contains(&f.as_str()) || f.starts_with("config-"))
}

/// The Python function's image, with `awslambdaric` from `site` (see [`awslambdaric`]).
pub fn python_lambda_image(site: &Path) -> anyhow::Result<BuiltImage> {
    let python = std::fs::canonicalize("/usr/bin/python3").context("no /usr/bin/python3")?;
    let stdlib = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('stdlib'))",
        ])
        .output()
        .context("asking python3 for its standard library")?;
    let stdlib = PathBuf::from(String::from_utf8_lossy(&stdlib.stdout).trim());
    let mut entries = Vec::new();
    tree_entries(
        &stdlib,
        &stdlib.to_string_lossy(),
        &stdlib_kept,
        &mut entries,
    )?;
    tree_entries(
        site,
        "/var/runtime",
        &|rel| !rel.ends_with("__pycache__"),
        &mut entries,
    )?;
    // The libraries of the interpreter and of every extension module, at their host paths.
    let mut objects = vec![python.clone()];
    for e in walkdir(&stdlib)?.into_iter().chain(walkdir(site)?) {
        if e.extension().is_some_and(|x| x == "so") {
            objects.push(e);
        }
    }
    let mut libraries = BTreeSet::new();
    for o in &objects {
        libraries.extend(shared_libraries(o)?);
    }
    let mut dirs: BTreeSet<String> = ["usr", "usr/bin", "usr/lib"].map(String::from).into();
    for l in &libraries {
        let mut parent = Path::new(l).parent();
        while let Some(p) = parent.filter(|p| p != &Path::new("/")) {
            dirs.insert(p.to_string_lossy().trim_start_matches('/').to_string());
            parent = p.parent();
        }
    }
    let mut libs: Vec<Entry> = dirs.iter().map(|d| Entry::dir(d)).collect();
    for l in &libraries {
        let content = std::fs::read(l).with_context(|| format!("reading {l}"))?;
        libs.push(Entry::executable(l.trim_start_matches('/'), content));
    }
    let py = python.to_string_lossy().into_owned();
    libs.push(Entry::executable(
        py.trim_start_matches('/'),
        std::fs::read(&python)?,
    ));
    libs.push(Entry::symlink("usr/bin/python3", &py));
    let app = vec![
        Entry::dir("var"),
        Entry::dir("var/task"),
        Entry::file("var/task/app.py", APP_PY),
        Entry::file("var/task/broken.py", BROKEN_PY),
    ];
    ImageBuilder::new()
        .layer(Layer::new(libs))
        .layer(Layer::new(entries))
        .layer(Layer::new(app))
        .entrypoint(["/usr/bin/python3", "-m", "awslambdaric"])
        .cmd(["app.handler"])
        .env("PYTHONPATH=/var/runtime:/var/task")
        .env("PYTHONDONTWRITEBYTECODE=1")
        .working_dir("/var/task")
        .build()
}

fn walkdir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            out.extend(walkdir(&e.path())?);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    Ok(out)
}
