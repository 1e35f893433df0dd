//! Who a function runs as and what it may write, through the real daemon, per contract: the
//! contract's default user (FunctionGraph's 1003:1003) or the function's uid/gid, root refused
//! where the contract forbids it, SCF's read-only root with a writable `/tmp`, a full writable
//! layer giving ENOSPC inside while Wharf and the instance carry on, and host directories
//! mounted read-only and read-write.

use serde_json::{Value, json};
use wharf_test_support::daemon::WharfOptions;
use wharf_test_support::env::{TestEnv, skip_unless_root};

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

fn state_of(v: &Value) -> (String, String, String) {
    (
        v["uid"].as_str().unwrap_or_default().to_owned(),
        v["gid"].as_str().unwrap_or_default().to_owned(),
        v["groups"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_contract_runs_functions_as_its_user() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;

    // fc: root unless the image says otherwise (the test image sets no USER).
    env.deploy("fc-default", json!({"image": env.image})).await;
    let s = env.invoke_json("fc-default", json!({"cmd": "state"})).await;
    assert_eq!(state_of(&s), ("0".into(), "0".into(), "".into()), "{s}");
    assert_eq!(s["env"]["HOME"], "/", "no passwd entry: HOME is /: {s}");

    // The function's uid/gid win; no supplementary groups.
    env.deploy(
        "fc-user",
        json!({"image": env.image, "uid": 4242, "gid": 4343}),
    )
    .await;
    let s = env.invoke_json("fc-user", json!({"cmd": "state"})).await;
    assert_eq!(
        state_of(&s),
        ("4242".into(), "4343".into(), "".into()),
        "{s}"
    );

    // FunctionGraph: 1003:1003 by default, its headers, /init before the first /invoke.
    let fg = json!({
        "image": env.image,
        "contract": "functiongraph",
        "env": {"TESTFN_PORT": "8000"},
        "initializer": {"timeout_s": 5},
    });
    let shown = env.deploy("fg", fg.clone()).await;
    assert_eq!(shown["port"], 8000, "{shown}");
    let s = env.invoke_json("fg", json!({"cmd": "state"})).await;
    assert_eq!(
        state_of(&s),
        ("1003".into(), "1003".into(), "".into()),
        "{s}"
    );
    assert_eq!(s["initialize_calls"], 1, "{s}");
    assert_eq!(s["invokes_before_initialize"], 0, "{s}");
    let h = env.invoke_json("fg", json!({"cmd": "headers"})).await;
    for (k, want) in [
        ("x-cff-func-name", "fg"),
        ("x-cff-memory", "128"),
        ("x-cff-timeout", "60"),
        ("x-cff-func-version", "latest"),
    ] {
        assert_eq!(h[k], want, "{k}: {h}");
    }
    assert!(
        h["x-cff-request-id"]
            .as_str()
            .is_some_and(|v| v.len() == 36),
        "{h}"
    );

    // Root is refused for FunctionGraph, with a message that says what to do; nothing changes.
    for field in ["uid", "gid"] {
        let mut body = fg.clone();
        body[field] = json!(0);
        let resp = env.put_function("fg", &body).await;
        assert_eq!(resp.status, 400, "{}", resp.text());
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.starts_with(&format!("{field}: 0 (root) is not allowed")),
            "{message}"
        );
        assert!(message.contains("1003:1003"), "{message}");
    }
    let s = env.invoke_json("fg", json!({"cmd": "state"})).await;
    assert_eq!(s["uid"], "1003", "the refused deploys changed nothing: {s}");
    // A hook the contract does not have is refused too.
    let mut body = fg.clone();
    body["pre_freeze"] = json!({"timeout_s": 1});
    let resp = env.put_function("fg", &body).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(
        resp.text()
            .contains("contract functiongraph has no pre_freeze hook"),
        "{}",
        resp.text()
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scf_has_a_read_only_root_and_a_writable_tmp() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    let shown = env
        .deploy("scf", json!({"image": env.image, "contract": "scf"}))
        .await;
    assert_eq!(shown["read_only_rootfs"], true, "{shown}");
    assert_eq!(shown["port"], 9000, "{shown}");

    let w = env
        .invoke_json("scf", json!({"cmd": "write", "path": "/x", "text": "no"}))
        .await;
    assert_eq!(w["ok"], false, "{w}");
    assert!(
        w["error"]
            .as_str()
            .is_some_and(|e| e.contains("Read-only file system")),
        "{w}"
    );
    let w = env
        .invoke_json(
            "scf",
            json!({"cmd": "write", "path": "/tmp/ok", "text": "yes"}),
        )
        .await;
    assert_eq!(w["ok"], true, "{w}");
    let r = env
        .invoke_json("scf", json!({"cmd": "read", "path": "/tmp/ok"}))
        .await;
    assert_eq!(r["content"], "yes", "{r}");

    // SCF's environment and headers.
    let s = env.invoke_json("scf", json!({"cmd": "state"})).await;
    for (k, want) in [
        ("TENCENTCLOUD_RUNENV", "SCF"),
        ("SCF_FUNCTIONNAME", "scf"),
        ("SCF_FUNCTIONVERSION", "$LATEST"),
        ("USER_CODE_ROOT", "/var/user/"),
    ] {
        assert_eq!(s["env"][k], want, "{k}: {s}");
    }
    let h = env.invoke_json("scf", json!({"cmd": "headers"})).await;
    assert_eq!(h["x-scf-name"], "scf", "{h}");
    assert_eq!(h["x-scf-memory"], "128", "{h}");
    assert!(h["x-scf-request-id"].is_string(), "{h}");

    // An fc function may ask for a read-only root too; an scf one for a writable one.
    env.deploy(
        "fc-ro",
        json!({"image": env.image, "read_only_rootfs": true}),
    )
    .await;
    let w = env
        .invoke_json(
            "fc-ro",
            json!({"cmd": "write", "path": "/etc/x", "text": "no"}),
        )
        .await;
    assert_eq!(w["ok"], false, "{w}");
    env.deploy(
        "scf-rw",
        json!({"image": env.image, "contract": "scf", "read_only_rootfs": false}),
    )
    .await;
    let w = env
        .invoke_json(
            "scf-rw",
            json!({"cmd": "write", "path": "/x", "text": "ok"}),
        )
        .await;
    assert_eq!(w["ok"], true, "{w}");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writable_layer_is_enospc_inside_and_harms_nothing() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    let shown = env
        .deploy(
            "disk",
            json!({"image": env.image, "memory_mb": 128, "disk_mb": 16}),
        )
        .await;
    assert_eq!(shown["disk_mb"], 16, "{shown}");
    let first = env.invoke("disk", json!({"cmd": "state"})).await;
    let instance = first.header("x-wharf-instance-id").unwrap();

    let w = env
        .invoke_json(
            "disk",
            json!({"cmd": "write", "path": "/tmp/big", "mb": 64}),
        )
        .await;
    assert_eq!(w["ok"], false, "{w}");
    assert!(
        w["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left on device")),
        "{w}"
    );
    let written = w["written_mb"].as_u64().unwrap();
    assert!((10..=16).contains(&written), "{w}");

    // The same instance goes on serving; freeing the space makes writes work again.
    let again = env.invoke("disk", json!({"name": "still here"})).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        again.header("x-wharf-instance-id").as_deref(),
        Some(&*instance)
    );
    let rm = env
        .invoke_json("disk", json!({"cmd": "remove", "path": "/tmp/big"}))
        .await;
    assert_eq!(rm["ok"], true, "{rm}");
    let w = env
        .invoke_json(
            "disk",
            json!({"cmd": "write", "path": "/tmp/small", "mb": 4}),
        )
        .await;
    assert_eq!(w["ok"], true, "{w}");

    // Without disk_mb: 512 MB, at most half of the memory.
    let shown = env
        .deploy("small", json!({"image": env.image, "memory_mb": 128}))
        .await;
    assert_eq!(shown["disk_mb"], 64, "{shown}");
    let shown = env
        .deploy("large", json!({"image": env.image, "memory_mb": 4096}))
        .await;
    assert_eq!(shown["disk_mb"], 512, "{shown}");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_directories_are_mounted_read_only_and_read_write() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    let host = tempfile::tempdir().unwrap();
    let data = host.path().join("data");
    let out = host.path().join("out");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(data.join("model.txt"), "weights\n").unwrap();
    // The function runs as 4242: the read-write directory must be its to write.
    std::os::unix::fs::chown(&out, Some(4242), Some(4242)).unwrap();

    env.deploy(
        "mounts",
        json!({
            "image": env.image,
            "uid": 4242,
            "mounts": [
                {"source": data, "target": "/mnt/data", "read_only": true},
                {"source": out, "target": "/mnt/out"},
            ],
        }),
    )
    .await;
    let r = env
        .invoke_json(
            "mounts",
            json!({"cmd": "read", "path": "/mnt/data/model.txt"}),
        )
        .await;
    assert_eq!(r["content"], "weights\n", "{r}");
    let w = env
        .invoke_json(
            "mounts",
            json!({"cmd": "write", "path": "/mnt/data/model.txt", "text": "overwritten"}),
        )
        .await;
    assert_eq!(w["ok"], false, "{w}");
    assert!(
        w["error"]
            .as_str()
            .is_some_and(|e| e.contains("Read-only file system")),
        "{w}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("model.txt")).unwrap(),
        "weights\n"
    );
    let w = env
        .invoke_json(
            "mounts",
            json!({"cmd": "write", "path": "/mnt/out/result.txt", "text": "done"}),
        )
        .await;
    assert_eq!(w["ok"], true, "{w}");
    assert_eq!(
        std::fs::read_to_string(out.join("result.txt")).unwrap(),
        "done"
    );

    // Refused before anything is stored: each error names the mount.
    for (mounts, want) in [
        (json!([{"source": "relative", "target": "/x"}]), "mounts[0]"),
        (json!([{"source": data, "target": "/proc/x"}]), "mounts[0]"),
        (
            json!([{"source": "/nonexistent-wharf-test", "target": "/x"}]),
            "mounts[0].source",
        ),
        (
            json!([{"source": data, "target": "/a"}, {"source": out, "target": "/a"}]),
            "mounts",
        ),
    ] {
        let resp = env
            .put_function("bad-mounts", &json!({"image": env.image, "mounts": mounts}))
            .await;
        assert_eq!(resp.status, 400, "{mounts}: {}", resp.text());
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.starts_with(want), "{mounts}: {message}");
    }
    let gone = env.wharf.api("GET", "/v1/functions/bad-mounts", None).await;
    assert_eq!(gone.status, 404);
    env.finish();
}
