//! `GET /v1/functions/{name}/instances` and `wharf ps` through the real daemon: an instance is
//! busy while it serves, idle or frozen after, with its requests and memory; a missing
//! function is a 404.

use std::time::{Duration, Instant};

use serde_json::json;
use wharf_test_support::daemon::WharfOptions;
use wharf_test_support::env::{TestEnv, skip_unless_root};
use wharf_test_support::patience;

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

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
        env.instances("ps").await.is_empty(),
        "nothing before a call"
    );

    let first = env.invoke("ps", json!({"name": "a"})).await;
    let id = first.header("x-wharf-instance-id").unwrap();
    // While a call runs, its instance is busy.
    let slow = env.invoke_in_background("ps", json!({"cmd": "sleep", "ms": 1500}));
    let deadline = Instant::now() + patience();
    loop {
        let list = env.instances("ps").await;
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
    assert_eq!(slow.await.unwrap().status, 200);

    // After it, idle and then frozen, with what it served.
    let deadline = Instant::now() + patience();
    let shown = loop {
        let list = env.instances("ps").await;
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

async fn metric(env: &TestEnv, series: &str) -> Option<f64> {
    let text = env.wharf.api("GET", "/metrics", None).await.text();
    sample(&text, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_s_own_max_instances_queue_and_idle_timeout_hold() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    // Through the CLI, as a user would set them.
    let out = env.wharf.cli(&[
        "deploy",
        "one",
        "--image",
        &env.image,
        "--max-instances",
        "1",
        "--no-freeze",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = env.wharf.api("GET", "/v1/functions/one", None).await.json();
    assert_eq!(shown["max_instances"], 1);

    // One instance at most: calls beyond it wait in the queue and are all served by it, in
    // turn; the queue holds 10 per instance, and a call beyond that is refused at once.
    let first = env.invoke("one", json!({"name": "warm"})).await;
    let instance = first.header("x-wharf-instance-id").unwrap();
    let calls: Vec<_> = (0..11)
        .map(|_| env.invoke_in_background("one", json!({"cmd": "sleep", "ms": 300})))
        .collect();
    let queued = r#"wharf_queued_requests{function="one"}"#;
    let deadline = Instant::now() + patience();
    while metric(&env, queued).await != Some(10.0) {
        assert!(Instant::now() < deadline, "the queue never held 10");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = env.invoke("one", json!({"name": "too many"})).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "ResourceExhausted");
    assert!(
        refused.text().contains("maximum of 1 instances"),
        "{}",
        refused.text()
    );
    for c in calls {
        assert_eq!(c.await.unwrap().status, 200, "a queued call was served");
    }
    let list = env.instances("one").await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0]["id"],
        instance.as_str(),
        "the one instance served them all"
    );
    assert_eq!(list[0]["requests"], 12);
    assert_eq!(metric(&env, queued).await, Some(0.0));
    assert_eq!(
        metric(&env, r#"wharf_throttles_total{function="one"}"#).await,
        Some(1.0)
    );

    // Idle timeout 0: the instance is stopped after its call; the next call starts a new one.
    env.deploy("zero", json!({"image": env.image, "idle_timeout_s": 0}))
        .await;
    assert_eq!(env.invoke("zero", json!({"name": "a"})).await.status, 200);
    let deadline = Instant::now() + patience();
    while !env.instances("zero").await.is_empty() {
        assert!(Instant::now() < deadline, "the instance was kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = env.invoke("zero", json!({"name": "c"})).await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.header("x-wharf-cold-start").as_deref(), Some("true"));

    let bad = env
        .put_function("bad", &json!({"image": env.image, "max_instances": 0}))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(
        bad.text().contains("max_instances: 0 is out of range"),
        "{}",
        bad.text()
    );
    env.finish();
}

/// One sample of the metrics text: the value of the line that starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_invocations_errors_throttles_and_instances() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    env.deploy(
        "m",
        json!({"image": env.image, "freeze_idle": false, "max_instances": 1}),
    )
    .await;
    assert_eq!(env.invoke("m", json!({"name": "a"})).await.status, 200);
    assert_eq!(env.invoke("m", json!({"name": "b"})).await.status, 200);
    let failed = env
        .invoke("m", json!({"cmd": "status", "status": 404}))
        .await;
    assert_eq!(failed.status, 404);

    let r = env.wharf.api("GET", "/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text();
    let get =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in {text}"));
    assert_eq!(
        get(r#"wharf_invocations_total{function="m",status="success"}"#),
        2.0
    );
    assert_eq!(
        get(r#"wharf_invocations_total{function="m",status="function_error"}"#),
        1.0
    );
    assert_eq!(
        get(r#"wharf_invocations_total{function="m",status="error"}"#),
        0.0
    );
    assert_eq!(get(r#"wharf_cold_starts_total{function="m"}"#), 1.0);
    assert_eq!(
        get(r#"wharf_invocation_duration_seconds_count{function="m"}"#),
        3.0
    );
    assert_eq!(
        get(r#"wharf_invocation_duration_seconds_bucket{function="m",le="+Inf"}"#),
        3.0
    );
    assert!(get(r#"wharf_invocation_duration_seconds_sum{function="m"}"#) > 0.0);
    assert_eq!(get(r#"wharf_instances{function="m",state="idle"}"#), 1.0);
    assert_eq!(get(r#"wharf_throttles_total{function="m"}"#), 0.0);
    assert!(text.contains("# TYPE wharf_invocation_duration_seconds histogram"));

    let anonymous = env
        .wharf
        .api_with_token("GET", "/metrics", None, None)
        .await;
    assert_eq!(
        anonymous.status, 401,
        "metrics need the token like the rest of the API"
    );
    env.finish();
}

/// The ids of `name`'s live (not stopping) instances, once there are `n` of them.
async fn wait_for_live(env: &TestEnv, name: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + patience();
    loop {
        let live: Vec<String> = env
            .instances(name)
            .await
            .iter()
            .filter(|i| i["state"] != "stopping")
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        if live.len() == n {
            return live;
        }
        assert!(Instant::now() < deadline, "never {n} instances: {live:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_instances_are_started_at_deploy_kept_when_idle_and_replaced_when_they_die() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    env.deploy(
        "reserved",
        json!({"image": env.image, "min_instances": 2, "idle_timeout_s": 1, "freeze_idle": false}),
    )
    .await;
    // Started by the deploy, before any call.
    let before = wait_for_live(&env, "reserved", 2).await;
    let first = env.invoke("reserved", json!({"name": "a"})).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        first.header("x-wharf-cold-start").as_deref(),
        Some("false"),
        "the reserve is warm"
    );

    // Idle far past idle_timeout_s: still there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(wait_for_live(&env, "reserved", 2).await.len(), 2);

    // One dies: it is replaced.
    let crash = env
        .invoke("reserved", json!({"cmd": "exit", "code": 3}))
        .await;
    assert_eq!(crash.status, 502, "{}", crash.text());
    let rid = crash.header("x-wharf-request-id").unwrap();
    let record = env
        .wharf
        .api(
            "GET",
            &format!("/v1/functions/reserved/invocations?request={rid}"),
            None,
        )
        .await
        .json();
    let dead = record["invocations"][0]["instance"]
        .as_str()
        .expect("the instance")
        .to_string();
    let deadline = Instant::now() + patience();
    let after = loop {
        let live = wait_for_live(&env, "reserved", 2).await;
        if !live.contains(&dead) {
            break live;
        }
        assert!(
            Instant::now() < deadline,
            "the dead instance was not replaced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        before.iter().any(|i| after.contains(i)),
        "the other one stayed"
    );

    let bad = env
        .put_function(
            "bad",
            &json!({"image": env.image, "min_instances": 5, "max_instances": 2}),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(
        bad.text().contains("min_instances: 5 is out of range"),
        "{}",
        bad.text()
    );
    env.finish();
}
