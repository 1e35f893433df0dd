//! Job images (FC's and SCF's no-server mode) through the real daemon: each event starts an
//! instance with the event in the contract's variable, the exit code is the result, a job past
//! its timeout is killed, and an event too large for a variable is refused before anything runs.

use serde_json::json;
use wharf_test_support::daemon::WharfOptions;
use wharf_test_support::env::{TestEnv, skip_unless_root};

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_once_per_event_and_its_exit_code_is_the_result() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    let job = json!({"mode": "job", "env": {"TESTFN_MODE": "job"}, "timeout_s": 1});
    let mut fc = job.clone();
    fc["image"] = json!(env.image);
    let shown = env.deploy("fcjob", fc).await;
    assert_eq!(shown["mode"], "job");

    let ok = env.invoke("fcjob", json!({"exit": 0, "n": 1})).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let v = ok.json();
    assert_eq!(v["exitCode"], 0);
    let output = v["output"].as_str().unwrap();
    assert!(
        output.contains(r#"job event from FC_CUSTOM_CONTAINER_EVENT: {"exit":0,"n":1}"#),
        "{output}"
    );
    assert_eq!(ok.header("x-wharf-cold-start").as_deref(), Some("true"));
    let again = env.invoke("fcjob", json!({"exit": 0})).await;
    assert_ne!(
        again.header("x-wharf-instance-id"),
        ok.header("x-wharf-instance-id"),
        "every event gets its own instance"
    );

    let failed = env.invoke("fcjob", json!({"exit": 3})).await;
    assert_eq!(failed.status, 500, "{}", failed.text());
    assert_eq!(failed.json()["exitCode"], 3);
    assert_eq!(
        failed.header("x-wharf-function-error").as_deref(),
        Some("the job exited with code 3")
    );

    let slow = env.invoke("fcjob", json!({"sleep_ms": 5000})).await;
    assert_eq!(slow.status, 504, "{}", slow.text());
    assert_eq!(slow.json()["error"]["code"], "FunctionTimeout");

    let big = json!({"pad": "x".repeat(130 * 1024)});
    let refused = env.invoke("fcjob", big).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "InvalidArgument");
    assert!(
        refused.text().contains("FC_CUSTOM_CONTAINER_EVENT"),
        "{}",
        refused.text()
    );

    // Each run is an invocation with its record and REPORT.
    let recs = env
        .wharf
        .api("GET", "/v1/functions/fcjob/invocations", None)
        .await
        .json();
    let statuses: Vec<&str> = recs["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["error", "error", "function_error", "success", "success"]
    );
    let lines = env.log_lines("fcjob").await;
    let rid = ok.header("x-wharf-request-id").unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("system: REPORT RequestId: {rid}\t"))),
        "{lines:#?}"
    );

    // SCF's variable, for an SCF job.
    let mut scf = job;
    scf["image"] = json!(env.image);
    scf["contract"] = json!("scf");
    env.deploy("scfjob", scf).await;
    let r = env.invoke("scfjob", json!({"k": "v"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["output"]
            .as_str()
            .unwrap()
            .contains(r#"from SCF_CUSTOM_CONTAINER_EVENT: {"k":"v"}"#),
        "{}",
        r.text()
    );
    env.finish();
}
