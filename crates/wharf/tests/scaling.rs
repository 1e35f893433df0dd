//! Scaling behaviour users of other platforms complain about, through the real daemon: parallel
//! callers start as many instances as `concurrency` implies and no more, a queued call is served
//! by whichever instance frees first, one function's slow cold start never holds up another
//! function's warm calls, and a redeploy under load fails no request.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use wharf_test_support::daemon::{ApiResponse, WharfOptions};
use wharf_test_support::env::{TestEnv, skip_unless_root};
use wharf_test_support::patience;

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
    assert_eq!(slow.await.unwrap().status, 200);
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

/// `n` calls of `name` at once, each sleeping `ms` in the function; every one must succeed.
/// Returns how many calls each instance served, and how many were cold starts.
async fn wave(env: &TestEnv, name: &str, n: usize, ms: u64) -> (BTreeMap<String, usize>, usize) {
    let calls: Vec<_> = (0..n)
        .map(|_| env.invoke_in_background(name, json!({"cmd": "sleep", "ms": ms})))
        .collect();
    let mut served = BTreeMap::new();
    let mut cold = 0;
    for c in calls {
        let r: ApiResponse = c.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        *served
            .entry(r.header("x-wharf-instance-id").unwrap())
            .or_insert(0) += 1;
        if r.header("x-wharf-cold-start").as_deref() == Some("true") {
            cold += 1;
        }
    }
    (served, cold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_callers_start_the_instances_concurrency_implies_and_no_more() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    let f = |concurrency: u32| json!({"image": env.image, "freeze_idle": false, "concurrency": concurrency});
    assert_eq!(env.deploy("one", f(1)).await["concurrency"], 1);
    assert_eq!(env.deploy("four", f(4)).await["concurrency"], 4);

    // One request per instance: five at once start five instances, each serving one.
    let (served, cold) = wave(&env, "one", 5, 800).await;
    assert_eq!(served.len(), 5, "{served:?}");
    assert!(served.values().all(|n| *n == 1), "{served:?}");
    assert_eq!(cold, 5);
    // Again: the same five serve, warm.
    let (again, cold) = wave(&env, "one", 5, 800).await;
    assert_eq!(
        again.keys().collect::<Vec<_>>(),
        served.keys().collect::<Vec<_>>()
    );
    assert_eq!(cold, 0);
    assert_eq!(env.instances("one").await.len(), 5);

    // Four at once per instance: eight calls start two instances, four on each, one cold
    // start each (the first request of an instance reports its Init Duration).
    let calls: Vec<_> = (0..8)
        .map(|_| env.invoke_in_background("four", json!({"cmd": "sleep", "ms": 1500})))
        .collect();
    let deadline = Instant::now() + patience();
    loop {
        let list = env.instances("four").await;
        if list.len() == 2 && list.iter().all(|i| i["in_flight"] == 4) {
            assert!(list.iter().all(|i| i["state"] == "busy"), "{list:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never four in flight on two instances: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut served = BTreeMap::new();
    let mut cold = 0;
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        *served
            .entry(r.header("x-wharf-instance-id").unwrap())
            .or_insert(0) += 1;
        cold += usize::from(r.header("x-wharf-cold-start").as_deref() == Some("true"));
    }
    assert_eq!(
        served.values().copied().collect::<Vec<_>>(),
        [4, 4],
        "{served:?}"
    );
    assert_eq!(cold, 2);
    let (again, cold) = wave(&env, "four", 8, 500).await;
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(cold, 0);
    assert_eq!(env.instances("four").await.len(), 2);

    // Settings a function cannot have.
    for (body, says) in [
        (
            json!({"image": env.image, "concurrency": 0}),
            "concurrency: 0 is out of range",
        ),
        (
            json!({"image": env.image, "concurrency": 1001}),
            "concurrency: 1001 is out of range",
        ),
        (
            json!({"image": env.image, "mode": "job", "concurrency": 2}),
            "concurrency does not apply to jobs",
        ),
        (
            json!({"image": env.image, "contract": "lambda", "concurrency": 2}),
            "one event at a time",
        ),
    ] {
        let r = env.put_function("bad", &body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_is_served_by_whichever_instance_frees_first() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    // Each new instance takes 3 s to listen.
    env.deploy(
        "slow",
        json!({"image": env.image, "freeze_idle": false, "env": {"TESTFN_START_DELAY_MS": "3000"}}),
    )
    .await;
    let first = env.invoke("slow", json!({"name": "a"})).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let warm = first.header("x-wharf-instance-id").unwrap();

    // The only instance is busy for 300 ms; a call now finds no free slot, queues, and a new
    // instance starts for it. The busy one frees long before the new one listens: it serves.
    let busy = env.invoke_in_background("slow", json!({"cmd": "sleep", "ms": 300}));
    let deadline = Instant::now() + patience();
    while env.instances("slow").await[0]["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the first call never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queued = env.invoke("slow", json!({"name": "b"})).await;
    assert_eq!(queued.status, 200, "{}", queued.text());
    assert_eq!(
        queued.header("x-wharf-instance-id").as_deref(),
        Some(warm.as_str())
    );
    assert_eq!(
        queued.header("x-wharf-cold-start").as_deref(),
        Some("false")
    );
    assert_eq!(busy.await.unwrap().status, 200);
    // The instance started for the queue is not wasted: it becomes idle, ready for the next.
    let deadline = Instant::now() + patience();
    loop {
        let list = env.instances("slow").await;
        if list.len() == 2 && list.iter().all(|i| i["state"] == "idle") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the started instance never became idle: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.finish();
}
