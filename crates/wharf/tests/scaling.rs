//! Scaling behaviour users of other platforms complain about, through the real daemon: one
//! function's slow cold start never holds up another function's warm calls, and a redeploy
//! under load fails no request.

use std::time::Duration;

use serde_json::json;
use wharf_test_support::daemon::WharfOptions;
use wharf_test_support::env::{TestEnv, skip_unless_root};

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_cold_start_does_not_hold_up_another_function_s_warm_calls() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    env.deploy(
        "slowstart",
        json!({"image": env.image, "env": {"TESTFN_START_DELAY_MS": "3000"}}),
    )
    .await;
    env.deploy("warm", json!({"image": env.image, "freeze_idle": false}))
        .await;
    assert_eq!(env.invoke("warm", json!({"name": "w"})).await.status, 200);

    let slow = env.invoke_in_background("slowstart", json!({"name": "s"}));
    // Give the slow cold start time to be under way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        let r = env.invoke("warm", json!({"name": i})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-wharf-cold-start").as_deref(), Some("false"));
    }
    // All of B's calls were answered while A's cold start was still waiting for its server.
    assert!(
        !slow.is_finished(),
        "the slow start ended first: the warm calls were held up"
    );
    assert_eq!(slow.await.unwrap(), 200);
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_under_load_fails_no_request() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    let body = |v: &str| json!({"image": env.image, "env": {"V": v}, "freeze_idle": false});
    env.deploy("live", body("1")).await;
    // Four callers, each calling in a loop, across two redeploys.
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{}/v1/functions/live/invoke", env.wharf.url());
            let token = env.wharf.token().to_string();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut statuses = Vec::new();
                for _ in 0..30 {
                    let s = client
                        .post(&url)
                        .bearer_auth(&token)
                        .body(json!({"cmd": "sleep", "ms": 50}).to_string())
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    statuses.push(s);
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.deploy("live", body("2")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.deploy("live", body("3")).await;
    for c in callers {
        let statuses = c.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    // New calls run on the last configuration.
    let state = env.invoke_json("live", json!({"cmd": "state"})).await;
    assert_eq!(state["env"]["V"], "3");
    env.finish();
}
