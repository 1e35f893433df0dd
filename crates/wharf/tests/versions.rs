//! Versions and aliases through the real daemon: a published version keeps the configuration it
//! was published with while the function changes, every way of naming a qualifier reaches it
//! (`NAME:Q`, `?qualifier=`, `x-fc-qualifier`, Lambda's `Qualifier` and ARN), the function sees
//! its version in the contract's headers, an alias splits traffic by its weight, a version in use
//! cannot be deleted, and all of it survives a restart.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use wharf_test_support::daemon::{ApiResponse, WharfOptions};
use wharf_test_support::env::{TestEnv, skip_unless_root};

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

async fn api(env: &TestEnv, method: &str, path: &str, body: Option<Value>) -> ApiResponse {
    env.wharf
        .api(method, path, body.map(|b| b.to_string().into_bytes()))
        .await
}

/// Invokes `target` (`NAME[:Q]`) with `{"cmd": "state"}`; returns the `V` its instance has in
/// its environment and the version Wharf says served it.
async fn v_of(env: &TestEnv, target: &str) -> (String, String) {
    let r = env.invoke(target, json!({"cmd": "state"})).await;
    assert_eq!(r.status, 200, "{target}: {}", r.text());
    (
        r.json()["env"]["V"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        r.header("x-wharf-version").unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_keep_their_configuration_and_every_qualifier_form_reaches_them() {
    if skip_unless_root() {
        return;
    }
    let mut env = TestEnv::start(WHARF, WharfOptions::default()).await;
    let body = |v: &str| json!({"image": env.image, "env": {"V": v}, "freeze_idle": false});
    env.deploy("svc", body("one")).await;

    let first = api(
        &env,
        "POST",
        "/v1/functions/svc/versions",
        Some(json!({"description": "first"})),
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(first.json()["version"], 1);
    assert_eq!(first.json()["description"], "first");
    assert_eq!(first.json()["config"]["env"]["V"], "one");
    // Nothing changed since: the same version, not a copy.
    let again = api(&env, "POST", "/v1/functions/svc/versions", None).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["version"], 1);

    env.deploy("svc", body("two")).await;
    let second = api(&env, "POST", "/v1/functions/svc/versions", None).await;
    assert_eq!(second.status, 201, "{}", second.text());
    assert_eq!(second.json()["version"], 2);
    env.deploy("svc", body("three")).await;

    // Each version runs what it was published with; the function runs its latest.
    assert_eq!(v_of(&env, "svc").await, ("three".into(), "LATEST".into()));
    assert_eq!(v_of(&env, "svc:1").await, ("one".into(), "1".into()));
    assert_eq!(v_of(&env, "svc:2").await, ("two".into(), "2".into()));
    assert_eq!(v_of(&env, "svc:LATEST").await.0, "three");
    let by_query = env
        .wharf
        .api(
            "POST",
            "/v1/functions/svc/invoke?qualifier=1",
            Some(br#"{"cmd":"state"}"#.to_vec()),
        )
        .await;
    assert_eq!(by_query.json()["env"]["V"], "one", "{}", by_query.text());
    let by_header = env
        .wharf
        .api_with_headers(
            "POST",
            "/v1/functions/svc/invoke",
            &[("x-fc-qualifier", "2")],
            Some(br#"{"cmd":"headers"}"#.to_vec()),
        )
        .await;
    assert_eq!(by_header.status, 200, "{}", by_header.text());
    let seen = by_header.json();
    assert_eq!(seen["x-fc-version-id"], "2", "{seen}");
    assert_eq!(seen["x-fc-qualifier"], "2", "{seen}");
    let latest_headers = env.invoke_json("svc", json!({"cmd": "headers"})).await;
    assert_eq!(latest_headers["x-fc-version-id"], "LATEST");

    // The instances of every version are the function's.
    let versions: Vec<Value> = env
        .instances("svc")
        .await
        .iter()
        .map(|i| i["version"].clone())
        .collect();
    for v in [json!(1), json!(2), Value::Null] {
        assert!(versions.contains(&v), "{v} missing from {versions:?}");
    }

    // What is not there says so, and where to look.
    let missing = env.invoke("svc:9", json!({})).await;
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert_eq!(missing.json()["error"]["code"], "VersionNotFound");
    assert!(
        missing.text().contains("GET /v1/functions/svc/versions"),
        "{}",
        missing.text()
    );
    let no_alias = env.invoke("svc:prod", json!({})).await;
    assert_eq!(no_alias.status, 404);
    assert_eq!(no_alias.json()["error"]["code"], "AliasNotFound");
    assert_eq!(env.invoke("svc:0", json!({})).await.status, 400);
    let both = env
        .wharf
        .api(
            "POST",
            "/v1/functions/svc:1/invoke?qualifier=2",
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(both.status, 400, "{}", both.text());
    assert_eq!(
        env.invoke("ghost:1", json!({})).await.json()["error"]["code"],
        "FunctionNotFound"
    );

    // The Lambda Invoke API: by ARN suffix and by ?Qualifier=.
    let lambda = env
        .wharf
        .api(
            "POST",
            "/2015-03-31/functions/arn:aws:lambda:local:wharf:function:svc:1/invocations",
            Some(br#"{"cmd":"state"}"#.to_vec()),
        )
        .await;
    assert_eq!(lambda.status, 200, "{}", lambda.text());
    assert_eq!(
        lambda.header("x-amz-executed-version").as_deref(),
        Some("1")
    );
    assert_eq!(lambda.json()["env"]["V"], "one");
    let lambda = env
        .wharf
        .api(
            "POST",
            "/2015-03-31/functions/svc/invocations?Qualifier=9",
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(lambda.status, 404, "{}", lambda.text());
    assert_eq!(
        lambda.header("x-amzn-errortype").as_deref(),
        Some("ResourceNotFoundException")
    );

    // Versions survive a restart, and the numbers go on.
    env.wharf.restart().expect("restart");
    assert_eq!(v_of(&env, "svc:1").await.0, "one");
    let listed = api(&env, "GET", "/v1/functions/svc/versions", None)
        .await
        .json();
    let numbers: Vec<&Value> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["version"])
        .collect();
    assert_eq!(numbers, [&json!(1), &json!(2)]);
    let deleted = api(&env, "DELETE", "/v1/functions/svc/versions/2", None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(env.invoke("svc:2", json!({})).await.status, 404);
    let third = api(&env, "POST", "/v1/functions/svc/versions", None).await;
    assert_eq!(third.json()["version"], 3, "a number is never given twice");

    // Deleting the function deletes its versions, and stops their instances.
    let ids: Vec<String> = env
        .instances("svc")
        .await
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!ids.is_empty());
    assert_eq!(
        api(&env, "DELETE", "/v1/functions/svc", None).await.status,
        204
    );
    assert_eq!(
        api(&env, "GET", "/v1/functions/svc/versions", None)
            .await
            .status,
        404
    );
    for id in ids {
        assert!(!env.cgroup_dir("pids", &id).exists(), "{id} still runs");
    }
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_split_traffic_by_weight_and_hold_their_versions() {
    if skip_unless_root() {
        return;
    }
    let mut env = TestEnv::start(WHARF, WharfOptions::default()).await;
    let body = |v: &str| json!({"image": env.image, "env": {"V": v}, "freeze_idle": false, "mode": "http"});
    for v in ["one", "two"] {
        env.deploy("web", body(v)).await;
        let r = api(&env, "POST", "/v1/functions/web/versions", None).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let bad = api(
        &env,
        "PUT",
        "/v1/functions/web/aliases/prod",
        Some(json!({"version": 7})),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("has no version 7"), "{}", bad.text());
    let prod = json!({"version": 1, "additional_version_weights": {"2": 0.3}});
    let created = api(
        &env,
        "PUT",
        "/v1/functions/web/aliases/prod",
        Some(prod.clone()),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["additional_version_weights"]["2"], 0.3);
    assert_eq!(
        api(&env, "PUT", "/v1/functions/web/aliases/prod", Some(prod))
            .await
            .status,
        200
    );

    // Through the HTTP trigger, the alias in the path; 300 calls, about 30 % to version 2.
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..300 {
        let r = env
            .wharf
            .api("GET", "/v1/functions/web:prod/http/hi", None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = r.json();
        assert_eq!(seen["path"], "/hi");
        let version = r.header("x-wharf-version").unwrap();
        // FC's function is told the alias it was called by, and the version that serves it.
        assert_eq!(seen["headers"]["x-fc-qualifier"], "prod", "{seen}");
        assert_eq!(
            seen["headers"]["x-fc-version-id"],
            version.as_str(),
            "{seen}"
        );
        *served.entry(version).or_default() += 1;
    }
    let twos = served.get("2").copied().unwrap_or(0) as f64 / 300.0;
    println!("alias prod served {served:?}");
    assert!(
        (0.2..=0.4).contains(&twos),
        "version 2 got {twos} of the calls: {served:?}"
    );
    assert_eq!(served.keys().cloned().collect::<Vec<_>>(), ["1", "2"]);

    // The trigger takes x-fc-qualifier too, and the function does not see it.
    let r = env
        .wharf
        .api_with_headers(
            "GET",
            "/v1/functions/web/http/x",
            &[("x-fc-qualifier", "2")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-wharf-version").as_deref(), Some("2"));
    assert_eq!(r.json()["headers"]["x-fc-version-id"], "2");

    // A version an alias uses stays.
    let refused = api(&env, "DELETE", "/v1/functions/web/versions/2", None).await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(refused.text().contains("prod"), "{}", refused.text());

    // Repointed, the alias sends everything to version 2 from the next call; after a restart too.
    // (with the CLI, which shows what it did)
    let cli = |args: &[&str]| {
        let out = env.wharf.cli(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let listed = cli(&["alias", "ls", "web"]);
    assert!(listed.contains("1 (70%), 2 (30%)"), "{listed}");
    let moved = cli(&["alias", "set", "web", "prod", "2"]);
    assert!(moved.contains("web:prod → 2"), "{moved}");
    let versions = cli(&["version", "ls", "web"]);
    assert_eq!(
        versions.lines().count(),
        3,
        "a header and two versions: {versions}"
    );
    env.wharf.restart().expect("restart");
    let aliases = api(&env, "GET", "/v1/functions/web/aliases", None)
        .await
        .json();
    assert_eq!(aliases["aliases"][0]["name"], "prod");
    assert_eq!(aliases["aliases"][0]["version"], 2);
    for _ in 0..10 {
        let r = env
            .wharf
            .api("GET", "/v1/functions/web:prod/http/", None)
            .await;
        assert_eq!(
            r.header("x-wharf-version").as_deref(),
            Some("2"),
            "{}",
            r.text()
        );
    }
    assert_eq!(
        api(&env, "DELETE", "/v1/functions/web/versions/1", None)
            .await
            .status,
        204
    );
    assert_eq!(
        api(&env, "DELETE", "/v1/functions/web/aliases/prod", None)
            .await
            .status,
        204
    );
    assert_eq!(
        api(&env, "GET", "/v1/functions/web/aliases/prod", None)
            .await
            .status,
        404
    );
    assert_eq!(
        api(&env, "DELETE", "/v1/functions/web/versions/2", None)
            .await
            .status,
        204
    );
    env.finish();
}
