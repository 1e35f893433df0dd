//! The lambda contract through the real daemon, with AWS's own runtime clients: a Rust function
//! built on the `lambda_runtime` crate and a Python one run by `awslambdaric`. Wharf serves the
//! Runtime API inside each instance; the tests assert what the handlers were told (request id,
//! deadline, ARN, the Lambda variables, `_HANDLER`), results and errors, the read-only root,
//! init errors, crashes and timeouts, and the REPORT lines.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use wharf_test_support::daemon::WharfOptions;
use wharf_test_support::env::{TestEnv, skip_unless_root};
use wharf_test_support::lambda::{awslambdaric, python_lambda_image, rust_lambda_image};
use wharf_test_support::oci::{BuiltImage, Pusher};

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

async fn push(env: &TestEnv, repo: &str, image: &BuiltImage) -> String {
    let host = env.registry.host();
    Pusher::new(&host)
        .push_image(repo, "latest", image)
        .await
        .expect("push the image");
    format!("{host}/{repo}:latest")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lambda_runtime_function_runs_unchanged() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    let image = push(&env, "lambda-rust", &rust_lambda_image().unwrap()).await;
    env.deploy(
        "rusty",
        json!({"image": image, "contract": "lambda", "memory_mb": 256, "timeout_s": 2}),
    )
    .await;

    let hello = env.invoke("rusty", json!({"name": "crab"})).await;
    assert_eq!(hello.status, 200, "{}", hello.text());
    assert_eq!(hello.json(), json!({"greeting": "Hello, crab!"}));
    assert_eq!(hello.header("x-wharf-cold-start").as_deref(), Some("true"));

    let before = now_ms();
    let ctx = env.invoke("rusty", json!({"cmd": "context"})).await;
    assert_eq!(ctx.status, 200, "{}", ctx.text());
    assert_eq!(ctx.header("x-wharf-cold-start").as_deref(), Some("false"));
    let c = ctx.json();
    assert_eq!(
        c["request_id"].as_str(),
        ctx.header("x-wharf-request-id").as_deref()
    );
    let deadline = c["deadline_ms"].as_u64().expect("a deadline");
    assert!(
        deadline >= before + 1_000 && deadline <= now_ms() + 2_000,
        "the deadline is the timeout from now: {deadline} vs {before}"
    );
    assert!(
        c["invoked_function_arn"]
            .as_str()
            .unwrap()
            .ends_with(":function:rusty"),
        "{c}"
    );
    assert!(
        c["xray_trace_id"].as_str().unwrap().starts_with("Root=1-"),
        "{c}"
    );
    assert_eq!(c["function_name"], "rusty");
    assert_eq!(c["memory"], 256);
    assert_eq!(c["version"], "$LATEST");
    let e = &c["env"];
    assert_eq!(e["AWS_LAMBDA_RUNTIME_API"], "127.0.0.1:9001");
    assert_eq!(e["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
    assert_eq!(e["LAMBDA_TASK_ROOT"], "/var/task");
    assert_eq!(e["TZ"], ":UTC");
    assert!(e["AWS_REGION"].is_string() && e["AWS_REGION"] == e["AWS_DEFAULT_REGION"]);

    // A handler error: Lambda's 200 with the error body, marked as a function error.
    let failed = env
        .invoke(
            "rusty",
            json!({"cmd": "fail", "message": "no thumbnails today"}),
        )
        .await;
    assert_eq!(failed.status, 200, "{}", failed.text());
    let error = failed.json();
    assert_eq!(error["errorMessage"], "no thumbnails today", "{error}");
    assert!(error["errorType"].is_string(), "{error}");
    let marked = failed.header("x-wharf-function-error").expect("marked");
    assert!(marked.starts_with("Unhandled"), "{marked}");

    // The same through the Lambda Invoke API, as an AWS SDK would call it.
    let sdk = env
        .wharf
        .api(
            "POST",
            "/2015-03-31/functions/rusty/invocations",
            Some(
                json!({"cmd": "fail", "message": "via the SDK"})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(sdk.status, 200, "{}", sdk.text());
    assert_eq!(
        sdk.header("x-amz-function-error").as_deref(),
        Some("Unhandled")
    );
    assert_eq!(sdk.json()["errorMessage"], "via the SDK");
    let ok = env
        .wharf
        .api(
            "POST",
            "/2015-03-31/functions/function/invocations",
            Some(json!({"name": "emulator"}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(
        ok.status,
        404,
        "the emulator path names the function `function`: {}",
        ok.text()
    );

    // A timeout: 504, and the next call gets a new instance.
    let slow = env
        .invoke("rusty", json!({"cmd": "sleep", "ms": 5000}))
        .await;
    assert_eq!(slow.status, 504, "{}", slow.text());
    assert_eq!(slow.json()["error"]["code"], "FunctionTimeout");
    let after = env.invoke("rusty", json!({"name": "again"})).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(after.header("x-wharf-cold-start").as_deref(), Some("true"));

    // A crash during the call: the caller learns it, with the exit status.
    let crash = env.invoke("rusty", json!({"cmd": "exit", "code": 3})).await;
    assert_eq!(crash.status, 502, "{}", crash.text());
    assert_eq!(crash.json()["error"]["code"], "FunctionCrashed");
    assert!(crash.text().contains("exit"), "{}", crash.text());

    let lines = env.log_lines("rusty").await;
    let rid = hello.header("x-wharf-request-id").unwrap();
    let report = lines
        .iter()
        .find(|l| l.starts_with(&format!("system: REPORT RequestId: {rid}\t")))
        .unwrap_or_else(|| panic!("no REPORT in {lines:#?}"));
    assert!(report.contains("\tMemory Size: 256 MB\t"), "{report}");
    assert!(report.contains("\tInit Duration: "), "{report}");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awslambdaric_function_runs_unchanged() {
    if skip_unless_root() {
        return;
    }
    let site = match awslambdaric() {
        Ok(site) => site,
        Err(e) => {
            println!("skipped: awslambdaric is not available: {e:#}");
            return;
        }
    };
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    let image = push(&env, "lambda-python", &python_lambda_image(&site).unwrap()).await;
    env.deploy(
        "snake",
        json!({"image": image, "contract": "lambda", "timeout_s": 5}),
    )
    .await;

    let ctx = env.invoke("snake", json!({"cmd": "context"})).await;
    assert_eq!(ctx.status, 200, "{}", ctx.text());
    let c = ctx.json();
    assert_eq!(
        c["request_id"].as_str(),
        ctx.header("x-wharf-request-id").as_deref()
    );
    assert_eq!(c["function_name"], "snake");
    assert_eq!(c["function_version"], "$LATEST");
    assert_eq!(c["memory_limit_in_mb"], "128");
    let remaining = c["remaining_ms"].as_i64().unwrap();
    assert!((1..=5_000).contains(&remaining), "{c}");
    assert_eq!(c["env"]["_HANDLER"], "app.handler", "the image's CMD");
    assert_eq!(c["env"]["AWS_LAMBDA_FUNCTION_NAME"], "snake");

    let greet = env.invoke("snake", json!({"name": "py"})).await;
    assert_eq!(greet.json(), json!({"greeting": "Hello, py!"}));

    let failed = env
        .invoke("snake", json!({"cmd": "fail", "message": "bad input"}))
        .await;
    assert_eq!(failed.status, 200, "{}", failed.text());
    let error = failed.json();
    assert_eq!(error["errorType"], "ValueError", "{error}");
    assert_eq!(error["errorMessage"], "bad input", "{error}");
    assert!(error["stackTrace"].is_array(), "{error}");
    assert_eq!(
        failed.header("x-wharf-function-error").as_deref(),
        Some("Unhandled: ValueError")
    );

    // Lambda's files: the root is read-only, /tmp is writable.
    let w = env.invoke_json("snake", json!({"cmd": "write"})).await;
    assert_eq!(w["/tmp/probe"], "ok", "{w}");
    assert_eq!(w["/var/task/probe"], "Read-only file system", "{w}");

    // What the handler prints is in the log, between START and END.
    let printed = env
        .invoke("snake", json!({"cmd": "print", "text": "from python"}))
        .await;
    let rid = printed.header("x-wharf-request-id").unwrap();
    let out = env.wharf.cli(&["logs", "snake", "--request", &rid]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("from python"), "{text}");
    assert!(text.contains(&format!("REPORT RequestId: {rid}")), "{text}");

    // A handler that cannot be imported: awslambdaric reports an init error, the caller gets it.
    env.deploy(
        "broken",
        json!({"image": image, "contract": "lambda", "args": ["broken.handler"]}),
    )
    .await;
    let broken = env.invoke("broken", json!({})).await;
    assert_eq!(broken.status, 502, "{}", broken.text());
    let e: Value = broken.json();
    assert_eq!(e["error"]["code"], "FunctionInitializationFailed", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("broken on purpose"), "{message}");
    env.finish();
}
