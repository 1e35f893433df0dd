//! End to end: a function deployed from an image archive (no registry at deploy or invoke time)
//! through the API of the real `wharf serve`, then invoked.

use std::process::Command;

use serde_json::json;
use wharf_test_support::daemon::{Wharf, WharfOptions};
use wharf_test_support::registry::Registry;
use wharf_test_support::testfn::push_testfn;

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_deployed_from_an_oci_archive_runs_without_the_registry() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (wharf serve mounts filesystems and creates cgroups)");
        return;
    }
    if Command::new("skopeo").arg("--version").output().is_err() {
        eprintln!("skipped: skopeo is not installed (scripts/setup.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let archive = dir.path().join("hello.tar");
    let digest = {
        // The registry only serves skopeo, and is gone before the deploy.
        let registry = Registry::start().expect("start the registry");
        let digest = push_testfn(&registry.host(), "hello", "latest")
            .await
            .expect("push the test function");
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg(format!("docker://{}/hello:latest", registry.host()))
            .arg(format!("oci-archive:{}", archive.display()))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        digest
    };
    let mut wharf = Wharf::start(WHARF.as_ref(), WharfOptions::default()).expect("start wharf");

    let image = format!("oci-archive:{}", archive.display());
    let body = json!({"image": image, "contract": "fc"}).to_string();
    let resp = wharf
        .api("PUT", "/v1/functions/hello", Some(body.into_bytes()))
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let f = resp.json();
    assert_eq!(f["image"], image.as_str());
    assert_eq!(f["image_digest"], digest.as_str());
    assert_eq!(f["image_pinned"], format!("{image}@{digest}"));

    let resp = wharf
        .api(
            "POST",
            "/v1/functions/hello/invoke",
            Some(br#"{"name":"archive"}"#.to_vec()),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "Hello, archive!\n");

    // With prepull off an archive is read at deploy all the same (it may be gone later): the
    // function is pinned to the same digest and runs.
    let body = json!({"image": image, "prepull": false}).to_string();
    let resp = wharf
        .api("PUT", "/v1/functions/lazy", Some(body.into_bytes()))
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(resp.json()["image_pinned"], format!("{image}@{digest}"));
    let resp = wharf
        .api(
            "POST",
            "/v1/functions/lazy/invoke",
            Some(br#"{"name":"lazy"}"#.to_vec()),
        )
        .await;
    assert_eq!(resp.text(), "Hello, lazy!\n");

    // A relative path is refused at deploy, naming the field's problem.
    let body = json!({"image": "oci-archive:hello.tar"}).to_string();
    let resp = wharf
        .api("PUT", "/v1/functions/rel", Some(body.into_bytes()))
        .await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("relative"), "{message}");

    wharf.stop().expect("stop wharf serve");
    let left = wharf.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}
