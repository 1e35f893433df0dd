//! `GET /v1/functions/{name}/instances` and `wharf ps` through the real daemon: an instance is
//! busy while it serves, idle or frozen after, with its requests and memory; a missing
//! function is a 404.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wharf_test_support::daemon::WharfOptions;
use wharf_test_support::env::{TestEnv, skip_unless_root};
use wharf_test_support::patience;

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

async fn instances(env: &TestEnv, name: &str) -> Vec<Value> {
    let r = env
        .wharf
        .api("GET", &format!("/v1/functions/{name}/instances"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_show_their_state_requests_and_memory() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    env.deploy(
        "ps",
        json!({"image": env.image, "memory_mb": 128, "freeze_idle": true}),
    )
    .await;
    assert!(
        instances(&env, "ps").await.is_empty(),
        "nothing before a call"
    );

    let first = env.invoke("ps", json!({"name": "a"})).await;
    let id = first.header("x-wharf-instance-id").unwrap();
    // While a call runs, its instance is busy.
    let slow = {
        let url = format!("{}/v1/functions/ps/invoke", env.wharf.url());
        let token = env.wharf.token().to_string();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .body(json!({"cmd": "sleep", "ms": 1500}).to_string())
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let deadline = Instant::now() + patience();
    loop {
        let list = instances(&env, "ps").await;
        if list
            .iter()
            .any(|i| i["id"] == id.as_str() && i["state"] == "busy")
        {
            assert!(list[0]["idle_ms"].is_null(), "{list:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never busy: {list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(slow.await.unwrap().unwrap(), 200);

    // After it, idle and then frozen, with what it served.
    let deadline = Instant::now() + patience();
    let shown = loop {
        let list = instances(&env, "ps").await;
        assert_eq!(list.len(), 1, "{list:?}");
        if list[0]["state"] == "frozen" {
            break list[0].clone();
        }
        assert!(Instant::now() < deadline, "never frozen: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["requests"], 2);
    assert_eq!(shown["memory_limit_mb"], 128);
    let now = shown["memory_now_mb"].as_u64().expect("memory now");
    let peak = shown["memory_peak_mb"].as_u64().expect("memory peak");
    assert!(now >= 1 && now <= peak && peak <= 128, "{shown}");
    assert!(shown["idle_ms"].as_u64().is_some(), "{shown}");

    let out = env.wharf.cli(&["ps"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains(&id) && table.contains("frozen"), "{table}");

    let missing = env
        .wharf
        .api("GET", "/v1/functions/ghost/instances", None)
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "FunctionNotFound");
    env.finish();
}
