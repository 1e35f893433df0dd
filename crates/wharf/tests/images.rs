//! Black-box tests of the image cache: `wharf image ls` and `wharf image prune` (what functions
//! and running instances use is kept), a daemon killed in the middle of a pull and restarted
//! on the same data directory, and two deploys of one image at once (one download). A real
//! registry on loopback, with a counting and throttling front (`wharf_test_support::front`)
//! where a test needs to see or slow the downloads; the real `wharf` binary and OCI runtime.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use wharf_test_support::assert_eventually;
use wharf_test_support::daemon::{ApiResponse, Wharf, WharfOptions};
use wharf_test_support::front::RegistryFront;
use wharf_test_support::oci::{
    BuiltImage, Compression, Entry, ImageBuilder, Layer, Pusher, binary_layer, sha256_digest,
};
use wharf_test_support::registry::Registry;
use wharf_test_support::testfn::{TESTFN_PATH, testfn_binary};

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

fn needs_root() -> bool {
    // reqwest clients of the tests need rustls' provider.
    wharf_test_support::install_crypto_provider();
    if rustix::process::geteuid().is_root() {
        return false;
    }
    eprintln!("skipped: needs root (wharf serve mounts filesystems and creates cgroups)");
    true
}

/// The test function image with `extra` layers on top (the test function's layer is the same
/// bytes in every image built here, so images share it).
fn testfn_with(extra: Vec<Layer>) -> BuiltImage {
    let binary = testfn_binary().expect("the test function binary");
    let dir = tempfile::tempdir().unwrap();
    let stripped = dir.path().join("testfn");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&binary)
        .status()
        .is_ok_and(|s| s.success());
    let source = if ok { stripped.as_path() } else { &binary };
    let mut b = ImageBuilder::new()
        .layer(binary_layer(source, TESTFN_PATH).expect("the test function's layer"))
        .entrypoint([TESTFN_PATH])
        .env("TESTFN_IMAGE=1");
    for layer in extra {
        b = b.layer(layer);
    }
    b.build().expect("build the image")
}

/// `n` bytes nobody can compress (xorshift), so that a layer's size is its download.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

async fn deploy(w: &Wharf, name: &str, image: &str) -> ApiResponse {
    w.api(
        "PUT",
        &format!("/v1/functions/{name}"),
        Some(json!({ "image": image }).to_string().into_bytes()),
    )
    .await
}

async fn invoke(w: &Wharf, name: &str, event: Value) -> ApiResponse {
    w.api(
        "POST",
        &format!("/v1/functions/{name}/invoke"),
        Some(event.to_string().into_bytes()),
    )
    .await
}

/// `PUT /v1/functions/{name}` in a task of its own: its status and body.
fn deploy_in_background(
    w: &Wharf,
    name: &str,
    image: &str,
) -> tokio::task::JoinHandle<(u16, String)> {
    let url = format!("{}/v1/functions/{name}", w.url());
    let (token, body) = (w.token().to_string(), json!({ "image": image }).to_string());
    tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .put(url)
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .expect("the deploy");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    })
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// The image of `GET /v1/images` pinned by `pinned`.
async fn listed(w: &Wharf, pinned: &str) -> Option<Value> {
    let list = w.api("GET", "/v1/images", None).await;
    assert_eq!(list.status, 200, "{}", list.text());
    list.json()["images"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["pinned"] == pinned)
        .cloned()
}

fn finish(mut w: Wharf) {
    w.stop().expect("stop wharf serve");
    let left = w.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_ls_and_prune_keep_what_functions_and_running_instances_use() {
    if needs_root() {
        return;
    }
    let registry = Registry::start().expect("start the registry");
    let pusher = Pusher::for_registry(&registry);
    let plain = testfn_with(vec![]);
    let extra = testfn_with(vec![Layer::new(vec![Entry::file(
        "extra.txt",
        noise(256 * 1024),
    )])]);
    pusher.push_image("fn", "plain", &plain).await.unwrap();
    pusher.push_image("fn", "extra", &extra).await.unwrap();
    let host = registry.host();
    let plain_pinned = format!("{host}/fn@{}", plain.digest());
    let extra_pinned = format!("{host}/fn@{}", extra.digest());
    let w = Wharf::start(WHARF.as_ref(), WharfOptions::default()).expect("start wharf serve");
    let data = w.data_dir().to_path_buf();

    let r = deploy(&w, "f", &format!("{host}/fn:plain")).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = deploy(&w, "g", &format!("{host}/fn:extra")).await;
    assert_eq!(r.status, 201, "{}", r.text());

    // Both images, their layers, their users, a size that counts the 256 KiB of the extra layer.
    let p = listed(&w, &plain_pinned).await.expect("the plain image");
    let e = listed(&w, &extra_pinned).await.expect("the extra image");
    assert_eq!(
        (p["layers"].as_u64(), e["layers"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(p["functions"], json!(["f"]));
    assert_eq!(e["functions"], json!(["g"]));
    assert_eq!(p["digest"], plain.digest());
    assert_eq!(
        (p["complete"].as_bool(), e["complete"].as_bool()),
        (Some(true), Some(true))
    );
    let (ps, es) = (
        p["size_bytes"].as_u64().unwrap(),
        e["size_bytes"].as_u64().unwrap(),
    );
    assert!(es >= ps + 2 * 256 * 1024, "plain {ps}, extra {es}");
    let ls = w.cli(&["image", "ls"]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    let table = stdout(&ls);
    assert!(table.starts_with("REPOSITORY"), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&extra.digest()[..19]))
        .unwrap_or_else(|| panic!("no row for the extra image:\n{table}"));
    assert!(
        row.contains(&format!("{host}/fn")) && row.ends_with(" g"),
        "{row}"
    );
    let ls = w.cli(&["image", "ls", "--json"]);
    let v: Value = serde_json::from_slice(&ls.stdout).expect("--json prints JSON");
    assert_eq!(v["images"].as_array().map(Vec::len), Some(2));

    // g runs a long request on the extra image, then moves to the plain image: no function uses
    // the extra image any more, but a running instance does.
    let slow = {
        let (url, token) = (w.url().to_string(), w.token().to_string());
        tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(format!("{url}/v1/functions/g/invoke"))
                .bearer_auth(token)
                .body(json!({"cmd": "sleep", "ms": 8000}).to_string())
                .send()
                .await
                .expect("the slow invocation");
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        })
    };
    assert_eventually!(
        listed(&w, &extra_pinned).await.unwrap()["in_use"] == 1,
        "the slow invocation's instance holds the extra image"
    );
    let r = deploy(&w, "g", &format!("{host}/fn:plain")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let pruned = w.api("POST", "/v1/images/prune", None).await;
    assert_eq!(pruned.status, 200, "{}", pruned.text());
    let report = pruned.json();
    assert_eq!(report["images_removed"], json!([]), "{report}");
    assert_eq!(report["layers_removed"], 0, "{report}");
    assert_eq!(entries(&data.join("layers")).len(), 2);
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200, "the instance lost its layers under it: {body}");

    // Once that instance is gone, the extra image and its own layer go; the shared one stays.
    assert_eventually!(
        listed(&w, &extra_pinned).await.unwrap()["in_use"] == 0,
        "the old revision's instance stops after its request"
    );
    let extra_layer = &extra.layers[1];
    let report = w.api("POST", "/v1/images/prune", None).await.json();
    assert_eq!(report["images_removed"], json!([extra_pinned]), "{report}");
    assert_eq!(report["layers_removed"], 1, "{report}");
    // Its manifest, its config and the extra layer's blob.
    assert_eq!(report["blobs_removed"], 3, "{report}");
    assert!(
        report["bytes_freed"].as_u64().unwrap() >= 2 * 256 * 1024,
        "{report}"
    );
    assert!(!data.join("layers").join(hex(&extra_layer.diff_id)).exists());
    assert!(
        !data
            .join("blobs/sha256")
            .join(hex(&extra_layer.blob.digest))
            .exists()
    );
    assert!(listed(&w, &extra_pinned).await.is_none());
    let p = listed(&w, &plain_pinned)
        .await
        .expect("the plain image stays");
    assert_eq!(p["functions"], json!(["f", "g"]));
    assert_eq!(p["complete"], true);
    for name in ["f", "g"] {
        let r = invoke(&w, name, json!({"name": name})).await;
        assert_eq!(r.text(), format!("Hello, {name}!\n"));
    }

    // Without functions, the CLI's prune empties the store.
    for name in ["f", "g"] {
        let out = w.cli(&["rm", name]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = w.cli(&["image", "prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains(&format!("removed image {plain_pinned}"))
            && said.contains("removed 1 images, 3 blobs and 1 unpacked layers; freed"),
        "{said}"
    );
    assert_eq!(entries(&data.join("layers")), Vec::<String>::new());
    assert_eq!(entries(&data.join("blobs/sha256")), Vec::<String>::new());
    assert_eq!(entries(&data.join("tmp")), Vec::<String>::new());
    let ls = w.cli(&["image", "ls"]);
    assert_eq!(stdout(&ls).lines().count(), 1, "{}", stdout(&ls));
    finish(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_pull_leaves_nothing_a_later_pull_takes_for_whole() {
    if needs_root() {
        return;
    }
    const BIG: usize = 24 << 20;
    let registry = Registry::start().expect("start the registry");
    let content = noise(BIG);
    let big_layer =
        Layer::new(vec![Entry::file("big.bin", content.clone())]).compression(Compression::None);
    let image = testfn_with(vec![big_layer]);
    let big = image.layers[1].clone();
    Pusher::for_registry(&registry)
        .push_image("big", "latest", &image)
        .await
        .unwrap();
    let front = RegistryFront::start(&registry.host()).unwrap();
    // About 12 s for the big layer: the kill lands in its middle.
    front.set_rate(Some(2 << 20));
    let reference = format!("{}/big:latest", front.host());
    let mut w = Wharf::start(WHARF.as_ref(), WharfOptions::default()).expect("start wharf serve");
    let data = w.data_dir().to_path_buf();

    let deploying = {
        let (url, token, reference) = (
            w.url().to_string(),
            w.token().to_string(),
            reference.clone(),
        );
        tokio::spawn(async move {
            reqwest::Client::new()
                .put(format!("{url}/v1/functions/big"))
                .bearer_auth(token)
                .body(json!({ "image": reference }).to_string())
                .send()
                .await
        })
    };
    assert_eventually!(
        front.blob_bytes_sent(&big.blob.digest) >= 4 << 20,
        "the big layer's download is under way"
    );
    w.kill().expect("kill -9 wharf serve");
    let answer = deploying.await.unwrap();
    assert!(
        answer.is_err(),
        "the deploy finished before the kill: {answer:?}"
    );
    assert!(
        front.blob_bytes_sent(&big.blob.digest) < BIG as u64,
        "the kill came after the download"
    );
    // What the killed pull left: a partial download in tmp/, nothing under a final name.
    let partial = entries(&data.join("tmp"));
    assert!(
        partial
            .iter()
            .any(|n| n.starts_with("blob-") && n.ends_with(".partial")),
        "{partial:?}"
    );
    assert!(
        !data
            .join("blobs/sha256")
            .join(hex(&big.blob.digest))
            .exists()
    );
    assert!(!data.join("layers").join(hex(&big.diff_id)).exists());
    assert!(!data.join("blobs/sha256").join(hex(image.digest())).exists());

    // The restarted daemon clears tmp/ before anything else, and the deploy pulls again.
    front.set_rate(None);
    w.restart().expect("restart wharf serve");
    assert_eq!(entries(&data.join("tmp")), Vec::<String>::new());
    let r = deploy(&w, "big", &reference).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["image_digest"], image.digest());
    assert_eq!(front.blob_gets(&big.blob.digest), 2);
    let r = invoke(&w, "big", json!({"name": "again"})).await;
    assert_eq!(r.text(), "Hello, again!\n");
    let unpacked = std::fs::read(data.join("layers").join(hex(&big.diff_id)).join("big.bin"))
        .expect("the big layer is unpacked");
    assert_eq!(unpacked.len(), BIG);
    assert_eq!(sha256_digest(&unpacked), sha256_digest(&content));
    let pinned = format!("{}/big@{}", front.host(), image.digest());
    let listed = listed(&w, &pinned).await.expect("the image is listed");
    assert_eq!(listed["complete"], true);
    assert!(listed["size_bytes"].as_u64().unwrap() >= 2 * BIG as u64);
    assert_eq!(entries(&data.join("tmp")), Vec::<String>::new());
    finish(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_deploys_of_one_image_download_each_blob_once() {
    if needs_root() {
        return;
    }
    let registry = Registry::start().expect("start the registry");
    let image = testfn_with(vec![Layer::new(vec![Entry::file(
        "data.bin",
        noise(2 << 20),
    )])]);
    Pusher::for_registry(&registry)
        .push_image("shared", "latest", &image)
        .await
        .unwrap();
    let front = RegistryFront::start(&registry.host()).unwrap();
    // About 4 s for the data layer: the second deploy starts while the first downloads.
    front.set_rate(Some(512 << 10));
    let reference = format!("{}/shared:latest", front.host());
    let w = Wharf::start(WHARF.as_ref(), WharfOptions::default()).expect("start wharf serve");
    let data_layer = &image.layers[1].blob;

    let one = deploy_in_background(&w, "one", &reference);
    assert_eventually!(
        front.blob_bytes_sent(&data_layer.digest) > 0,
        "the first deploy downloads"
    );
    let two = deploy_in_background(&w, "two", &reference);
    assert_eventually!(front.manifest_gets() == 2, "the second deploy pulls");
    assert!(
        front.blob_bytes_sent(&data_layer.digest) < data_layer.bytes.len() as u64,
        "the first download ended before the second pull began"
    );
    let (one, two) = (one.await.unwrap(), two.await.unwrap());
    assert_eq!(one.0, 201, "{}", one.1);
    assert_eq!(two.0, 201, "{}", two.1);
    let pinned = |body: &str| serde_json::from_str::<Value>(body).unwrap()["image_pinned"].clone();
    assert_eq!(pinned(&one.1), pinned(&two.1));
    let blobs = image
        .layers
        .iter()
        .map(|l| l.blob.digest.clone())
        .chain([image.config.digest.clone()]);
    for digest in blobs {
        assert_eq!(front.blob_gets(&digest), 1, "{digest}: {:#?}", front.seen());
    }
    for name in ["one", "two"] {
        let r = invoke(&w, name, json!({"name": name})).await;
        assert_eq!(r.text(), format!("Hello, {name}!\n"));
    }
    let out = w.cli(&["image", "ls"]);
    assert!(stdout(&out).contains("one,two"), "{}", stdout(&out));
    finish(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_pull_holds_up_no_other_function() {
    if needs_root() {
        return;
    }
    let registry = Registry::start().expect("start the registry");
    let small = testfn_with(vec![]);
    let big = testfn_with(vec![Layer::new(vec![Entry::file(
        "data.bin",
        noise(8 << 20),
    )])]);
    let pusher = Pusher::for_registry(&registry);
    pusher.push_image("small", "latest", &small).await.unwrap();
    pusher.push_image("big", "latest", &big).await.unwrap();
    let front = RegistryFront::start(&registry.host()).unwrap();
    // The big image's data layer takes about 16 s at this rate: the pull is surely running
    // for the whole of the checks below.
    front.set_rate(Some(512 << 10));
    let w = Wharf::start(WHARF.as_ref(), WharfOptions::default()).expect("start wharf serve");
    let r = deploy(&w, "warm", &format!("{}/small:latest", registry.host())).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(invoke(&w, "warm", json!({"name": "a"})).await.status, 200);

    let data_layer = &big.layers[1].blob;
    let slow = deploy_in_background(&w, "slow", &format!("{}/big:latest", front.host()));
    assert_eventually!(
        front.blob_bytes_sent(&data_layer.digest) > 0,
        "the slow deploy downloads"
    );
    // Warm calls, a new cold start of another function and the control plane all answer while
    // the pull goes on.
    let t0 = std::time::Instant::now();
    for i in 0..20 {
        let r = invoke(&w, "warm", json!({"name": format!("n{i}")})).await;
        assert_eq!(r.text(), format!("Hello, n{i}!\n"));
    }
    let r = deploy(&w, "other", &format!("{}/small:latest", registry.host())).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = invoke(&w, "other", json!({"name": "cold"})).await;
    assert_eq!(r.text(), "Hello, cold!\n");
    assert_eq!(r.header("x-wharf-cold-start").as_deref(), Some("true"));
    assert_eq!(w.api("GET", "/v1/functions", None).await.status, 200);
    assert!(
        front.blob_bytes_sent(&data_layer.digest) < data_layer.bytes.len() as u64,
        "the pull was still running during the checks ({:?} in)",
        t0.elapsed()
    );
    front.set_rate(None);
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        invoke(&w, "slow", json!({"name": "big"})).await.text(),
        "Hello, big!\n"
    );
    finish(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_cold_start_pull_stops_the_daemon_at_once() {
    if needs_root() {
        return;
    }
    let registry = Registry::start().expect("start the registry");
    let big = testfn_with(vec![Layer::new(vec![Entry::file(
        "data.bin",
        noise(16 << 20),
    )])]);
    Pusher::for_registry(&registry)
        .push_image("big", "latest", &big)
        .await
        .unwrap();
    let front = RegistryFront::start(&registry.host()).unwrap();
    // The data layer would take about a minute: the pull is surely running at the SIGTERM.
    front.set_rate(Some(256 << 10));
    let mut w = Wharf::start(WHARF.as_ref(), WharfOptions::default()).expect("start wharf serve");
    let body = json!({"image": format!("{}/big:latest", front.host()), "prepull": false});
    let r = w
        .api(
            "PUT",
            "/v1/functions/lazy",
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    let url = format!("{}/v1/functions/lazy/invoke", w.url());
    let token = w.token().to_string();
    let call = tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .body(r#"{"name":"x"}"#)
            .send()
            .await;
        match resp {
            Ok(resp) => Some((
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )),
            // The daemon closed the connection as it stopped.
            Err(_) => None,
        }
    });
    let data_layer = &big.layers[1].blob;
    assert_eventually!(
        front.blob_bytes_sent(&data_layer.digest) > 0,
        "the cold start pulls"
    );
    let t0 = std::time::Instant::now();
    let status = w
        .stop()
        .expect("wharf serve stops on SIGTERM during the pull");
    assert!(status.success(), "{status}");
    assert!(
        front.blob_bytes_sent(&data_layer.digest) < data_layer.bytes.len() as u64,
        "the pull had finished before the daemon stopped ({:?})",
        t0.elapsed()
    );
    if let Some((status, body)) = call.await.unwrap() {
        assert_eq!(status, 503, "{body}");
    }
    let left = w.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}
