//! `wharf-example push REGISTRY/REPO:TAG [--testfn PATH]`: builds the example function image (the
//! test function, which answers `{"name":"x"}` with `Hello, x!`) and pushes it. Used by the
//! quickstart to have something to deploy.

use std::path::PathBuf;
use std::process::ExitCode;

use wharf_test_support::oci::Pusher;
use wharf_test_support::testfn::{testfn_binary, testfn_image};

fn usage() -> ExitCode {
    eprintln!("usage: wharf-example push REGISTRY/REPOSITORY:TAG [--testfn PATH]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (target, testfn) = match args.as_slice() {
        [cmd, target] if cmd == "push" => (target.clone(), None),
        [cmd, target, flag, path] if cmd == "push" && flag == "--testfn" => {
            (target.clone(), Some(PathBuf::from(path)))
        }
        _ => return usage(),
    };
    let Some((host, rest)) = target.split_once('/') else {
        return usage();
    };
    let (repo, tag) = rest.rsplit_once(':').unwrap_or((rest, "latest"));
    let run = async {
        let binary = match testfn {
            Some(p) => p,
            None => testfn_binary()?,
        };
        let image = testfn_image(&binary)?;
        Pusher::new(host).push_image(repo, tag, &image).await
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run) {
        Ok(digest) => {
            println!("pushed {host}/{repo}:{tag} ({digest})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
