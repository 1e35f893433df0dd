//! Deploys that show their pull (`Accept: application/x-ndjson`, `wharf deploy`'s progress
//! lines) and deploys that leave the pull to the first invocation (`"prepull": false`), against
//! a real registry, the real `wharf` binary and a real OCI runtime.

use std::path::Path;

use serde_json::{Value, json};
use wharf_test_support::daemon::{Wharf, WharfOptions};
use wharf_test_support::registry::Registry;
use wharf_test_support::testfn::push_testfn;

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

fn needs_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return false;
    }
    eprintln!("skipped: needs root (wharf serve mounts filesystems and creates cgroups)");
    true
}

/// A registry with the test function pushed as `hello:latest`, a daemon, the image and its
/// digest.
async fn env() -> (Registry, Wharf, String, String) {
    let registry = Registry::start().expect("start the registry");
    let digest = push_testfn(&registry.host(), "hello", "latest")
        .await
        .expect("push the test function");
    let wharf = Wharf::start(WHARF.as_ref(), WharfOptions::default()).expect("start wharf serve");
    let image = format!("{}/hello:latest", registry.host());
    (registry, wharf, image, digest)
}

fn finish(mut wharf: Wharf) {
    wharf.stop().expect("stop wharf serve");
    let left = wharf.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// `PUT /v1/functions/{name}` with `Accept: application/x-ndjson`: the content type and the
/// JSON lines.
async fn deploy_streamed(w: &Wharf, name: &str, body: Value) -> (String, Vec<Value>) {
    wharf_test_support::install_crypto_provider();
    let resp = reqwest::Client::new()
        .put(format!("{}/v1/functions/{name}", w.url()))
        .bearer_auth(w.token())
        .header("accept", "application/x-ndjson")
        .body(body.to_string())
        .send()
        .await
        .expect("deploy");
    assert_eq!(resp.status(), 200, "a streamed deploy answers 200");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.expect("read the stream");
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    (content_type, lines)
}

fn layer_dirs(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("layers"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_deploy_reports_its_pull_and_ends_with_the_function() {
    if needs_root() {
        return;
    }
    let (_registry, w, image, digest) = env().await;

    let (content_type, lines) = deploy_streamed(&w, "hello", json!({ "image": image })).await;
    assert_eq!(content_type, "application/x-ndjson");
    let (last, events) = lines.split_last().expect("at least the result");
    assert_eq!(last["status"], 201, "{last}");
    assert_eq!(last["function"]["image_digest"], digest.as_str());
    assert_eq!(last["function"]["prepull"], true);
    assert_eq!(events[0]["event"], "layers", "{events:?}");
    let layers = events[0]["layers"].as_array().expect("layers").clone();
    assert!(!layers.is_empty());
    for layer in &layers {
        let of_layer: Vec<&Value> = events
            .iter()
            .filter(|e| e["layer"] == layer["digest"])
            .collect();
        let kinds: Vec<&str> = of_layer
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(kinds.first(), Some(&"downloading"), "{kinds:?}");
        assert_eq!(&kinds[kinds.len() - 2..], ["unpacking", "layer_done"]);
        let last_download = of_layer
            .iter()
            .rfind(|e| e["event"] == "downloading")
            .unwrap();
        assert_eq!(last_download["downloaded"], layer["size"]);
        assert_eq!(last_download["total"], layer["size"]);
    }

    // Deployed again: every layer is already there, and the result says "updated".
    let (_, lines) = deploy_streamed(&w, "hello", json!({ "image": image })).await;
    let (last, events) = lines.split_last().unwrap();
    assert_eq!(last["status"], 200, "{last}");
    assert_eq!(last["function"]["revision"], 2);
    assert!(
        events[1..].iter().all(|e| e["event"] == "layer_present"),
        "{events:?}"
    );
    assert_eq!(events.len(), 1 + layers.len());

    // A failed pull ends the stream with the usual error body.
    let missing = image.replace("hello:latest", "absent:latest");
    let (_, lines) = deploy_streamed(&w, "other", json!({ "image": missing })).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 400);
    assert_eq!(lines[0]["error"]["code"], "ImageNotFound");
    assert!(
        lines[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("absent"),
        "{}",
        lines[0]
    );
    assert_eq!(
        w.api("GET", "/v1/functions/other", None).await.status,
        404,
        "a failed deploy stores nothing"
    );
    // Invalid requests are refused before anything streams.
    let resp = w
        .api(
            "PUT",
            "/v1/functions/bad",
            Some(
                json!({ "image": image, "prepull": "no" })
                    .to_string()
                    .into(),
            ),
        )
        .await;
    assert_eq!(resp.status, 400, "{}", resp.text());

    // The CLI shows the same progress as plain lines when stderr is not a terminal.
    let out = w.cli(&["deploy", "cli", "--image", &image]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&digest),
        "{out:?}"
    );
    assert!(stderr.contains("pulling"), "{stderr}");
    assert!(stderr.contains("already present"), "{stderr}");
    finish(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_prepull_the_first_invocation_pulls_the_image() {
    if needs_root() {
        return;
    }
    let (registry, w, image, digest) = env().await;

    let resp = w
        .api(
            "PUT",
            "/v1/functions/lazy",
            Some(
                json!({ "image": image, "prepull": false })
                    .to_string()
                    .into(),
            ),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let f = resp.json();
    assert_eq!(f["prepull"], false);
    assert_eq!(f["image_digest"], digest.as_str(), "still pinned by digest");
    assert_eq!(
        f["image_pinned"],
        format!("{}/hello@{digest}", registry.host())
    );
    assert_eq!(layer_dirs(w.data_dir()), 0, "nothing was pulled at deploy");
    let got = w.api("GET", "/v1/functions/lazy", None).await.json();
    assert_eq!(got["prepull"], false);

    let resp = w
        .api(
            "POST",
            "/v1/functions/lazy/invoke",
            Some(json!({ "name": "lazy" }).to_string().into()),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "Hello, lazy!\n");
    assert_eq!(resp.header("x-wharf-cold-start").as_deref(), Some("true"));
    let init: f64 = resp
        .header("x-wharf-init-duration-ms")
        .expect("x-wharf-init-duration-ms on the cold start")
        .parse()
        .unwrap();
    assert!(init > 0.0, "{init}");
    assert!(layer_dirs(w.data_dir()) > 0, "the cold start pulled");
    assert!(
        w.log().contains("pulling the image for a cold start"),
        "the cold start says it pulls: {}",
        w.log()
    );

    // A reference that does not resolve is refused at deploy, prepull or not.
    let missing = image.replace("hello:latest", "absent:latest");
    let resp = w
        .api(
            "PUT",
            "/v1/functions/nope",
            Some(
                json!({ "image": missing, "prepull": false })
                    .to_string()
                    .into(),
            ),
        )
        .await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "ImageNotFound");

    // The CLI's --no-prepull.
    let out = w.cli(&["deploy", "lazy2", "--image", &image, "--no-prepull"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        w.api("GET", "/v1/functions/lazy2", None).await.json()["prepull"],
        false
    );
    finish(w);
}
