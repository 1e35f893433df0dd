//! HTTP triggers through the real daemon: a plain `http` function (Knative's `$PORT` and `K_*`)
//! and an FC HTTP function get the caller's request passed through with the forwarding headers;
//! FC's rules for callers give clear 400s; an event function behind the trigger gets the
//! API-gateway event and its answer becomes the response, binary bodies included, and a
//! malformed answer is a 502 that says what is wrong.

use serde_json::{Value, json};
use wharf_test_support::daemon::{ApiResponse, WharfOptions};
use wharf_test_support::env::{TestEnv, skip_unless_root};

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

async fn call(
    env: &TestEnv,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> ApiResponse {
    env.wharf
        .api_with_headers(method, path, headers, Some(body.to_vec()))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_functions_get_the_request_passed_through() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    let web = env
        .deploy("web", json!({"image": env.image, "contract": "http"}))
        .await;
    assert_eq!(web["mode"], "http", "an http function is an HTTP function");
    assert_eq!(web["port"], 8080);

    let r = call(
        &env,
        "PATCH",
        "/v1/functions/web/http/a/b?x=1&status=201",
        &[("x-custom", "yes"), ("content-type", "text/plain")],
        b"the body",
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-testfn-path").as_deref(), Some("/a/b"));
    let rid = r.header("x-wharf-request-id").expect("a request id");
    assert!(r.header("x-wharf-instance-id").is_some());
    let seen = r.json();
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["path"], "/a/b");
    assert_eq!(seen["query"], "x=1&status=201");
    assert_eq!(seen["body"], "the body");
    let h = &seen["headers"];
    assert_eq!(h["x-custom"], "yes");
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    let forwarded = h["forwarded"].as_str().expect("a Forwarded header");
    assert!(
        forwarded.starts_with("for=127.0.0.1;proto=http;host=127.0.0.1:"),
        "{forwarded}"
    );
    assert!(
        h.get("authorization").is_none(),
        "Wharf's token stays out: {h}"
    );
    assert_eq!(
        seen["env"],
        json!({"PORT": "8080", "K_SERVICE": "web", "K_REVISION": format!("web-{:05}", web["revision"].as_u64().unwrap()), "K_CONFIGURATION": "web"})
    );

    // The trigger's root is the function's `/`; a 404 of the function is its answer.
    let root = call(&env, "GET", "/v1/functions/web/http", &[], b"").await;
    assert_eq!(root.status, 200, "{}", root.text());
    assert_eq!(root.json()["path"], "/");
    let missing = call(
        &env,
        "GET",
        "/v1/functions/web/http/nope?status=404",
        &[],
        b"",
    )
    .await;
    assert_eq!(missing.status, 404);
    assert!(missing.header("x-wharf-function-error").is_none());

    // Every passed-through call is an invocation like any other.
    let lines = env.log_lines("web").await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("system: REPORT RequestId: {rid}\t"))),
        "{lines:#?}"
    );
    let unknown = call(&env, "GET", "/v1/functions/ghost/http/x", &[], b"").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "FunctionNotFound");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fc_http_functions_get_fc_headers_and_callers_follow_fc_s_rules() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    env.deploy("fchttp", json!({"image": env.image, "mode": "http"}))
        .await;
    let r = call(
        &env,
        "POST",
        "/v1/functions/fchttp/http/users/7?q=a%20b",
        &[],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["path"], "/users/7");
    assert_eq!(seen["query"], "q=a%20b");
    let h = &seen["headers"];
    assert_eq!(h["x-fc-control-path"], "/http-invoke");
    assert_eq!(h["x-fc-function-name"], "fchttp");
    assert_eq!(
        h["x-fc-request-id"].as_str(),
        r.header("x-wharf-request-id").as_deref()
    );

    let forged = call(
        &env,
        "GET",
        "/v1/functions/fchttp/http/",
        &[("x-fc-request-id", "mine")],
        b"",
    )
    .await;
    assert_eq!(forged.status, 400, "{}", forged.text());
    assert_eq!(forged.json()["error"]["code"], "InvalidArgument");
    // FC's own error fields, for clients written for FC.
    assert_eq!(forged.json()["errorCode"], "InvalidArgument");
    assert!(forged.json()["errorMessage"].is_string());
    assert!(
        forged.text().contains("x-fc-request-id"),
        "{}",
        forged.text()
    );
    let long = format!("/v1/functions/fchttp/http/?q={}", "a".repeat(5000));
    let too_long = call(&env, "GET", &long, &[], b"").await;
    assert_eq!(too_long.status, 400, "{}", too_long.text());
    assert!(
        too_long.text().contains("limit of 4096"),
        "{}",
        too_long.text()
    );

    // An SCF web function: the same pass-through, with SCF's headers.
    env.deploy(
        "scfweb",
        json!({"image": env.image, "contract": "scf", "mode": "http"}),
    )
    .await;
    let web = call(
        &env,
        "DELETE",
        "/v1/functions/scfweb/http/items/3",
        &[],
        b"",
    )
    .await;
    assert_eq!(web.status, 200, "{}", web.text());
    let seen = web.json();
    assert_eq!(seen["method"], "DELETE");
    assert_eq!(seen["path"], "/items/3");
    assert_eq!(seen["headers"]["x-scf-name"], "scfweb");
    assert_eq!(
        seen["headers"]["x-scf-request-id"].as_str(),
        web.header("x-wharf-request-id").as_deref()
    );

    // The invoke endpoint of an HTTP function sends the event as `POST /`.
    let event = env.invoke("fchttp", json!({"k": 1})).await;
    assert_eq!(event.status, 200, "{}", event.text());
    assert_eq!(event.json()["path"], "/");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_functions_behind_a_trigger_get_the_api_gateway_event() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    env.deploy("gw", json!({"image": env.image, "contract": "functiongraph", "port": 8000, "env": {"TESTFN_PORT": "8000"}}))
        .await;
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let r = call(
        &env,
        "PUT",
        "/v1/functions/gw/http/files/a%20b?status=202&tag=x%26y",
        &[("content-type", "application/octet-stream")],
        &binary,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        r.body, binary,
        "the binary body went there and back in base64"
    );
    assert_eq!(r.header("x-apigw-method").as_deref(), Some("PUT"));
    assert_eq!(r.header("x-apigw-path").as_deref(), Some("/files/a b"));
    let query: Value = serde_json::from_str(&r.header("x-apigw-query").unwrap()).unwrap();
    assert_eq!(query, json!({"status": "202", "tag": "x&y"}));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert!(r.header("x-wharf-request-id").is_some());

    let bad = call(&env, "GET", "/v1/functions/gw/http/?malformed=1", &[], b"").await;
    assert_eq!(bad.status, 502, "{}", bad.text());
    let e = bad.json();
    assert_eq!(e["error"]["code"], "InvalidFunctionResponse");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("statusCode must be an integer"),
        "{message}"
    );
    env.finish();
}
