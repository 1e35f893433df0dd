//! What Wharf writes about every invocation, through the real daemon: the `START`/`END`/`REPORT`
//! lines (and FC's own markers) in the function's log in the right order around what the
//! function printed, the invocation records of `GET /v1/functions/{name}/invocations` for
//! successes, function errors and timeouts, and `wharf logs --follow` and `--request`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use wharf_test_support::daemon::WharfOptions;
use wharf_test_support::env::{TestEnv, skip_unless_root};

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

/// The `\t`-separated `Name: value` fields of a REPORT line after its request id.
fn report_fields(line: &str) -> Vec<(String, String)> {
    line.split('\t')
        .skip(1)
        .filter_map(|f| f.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `"12.34 ms"` → 12.34.
fn millis(v: &str) -> f64 {
    v.strip_suffix(" ms")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a duration in ms: {v:?}"))
}

async fn records(env: &TestEnv, name: &str) -> Vec<Value> {
    let r = env
        .wharf
        .api("GET", &format!("/v1/functions/{name}/invocations"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["invocations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invocation_is_logged_and_recorded_like_lambda_and_fc_do() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    env.deploy(
        "rec",
        json!({"image": env.image, "memory_mb": 128, "initializer": {"timeout_s": 5}}),
    )
    .await;

    let cold = env
        .invoke(
            "rec",
            json!({"cmd": "print", "stdout": "hello from the function"}),
        )
        .await;
    assert_eq!(cold.status, 200, "{}", cold.text());
    let cold_id = cold.header("x-wharf-request-id").expect("a request id");
    let warm = env.invoke("rec", json!({"name": "again"})).await;
    assert_eq!(warm.status, 200, "{}", warm.text());
    let warm_id = warm.header("x-wharf-request-id").expect("a request id");

    // The cold call's lines, in order: FC's initialize markers, START, FC's invoke start, what
    // the function printed, FC's invoke end, END, REPORT.
    let lines = env.log_lines("rec").await;
    let position = |wanted: &str| {
        lines
            .iter()
            .position(|l| l == wanted || l.starts_with(&format!("{wanted}\t")))
            .unwrap_or_else(|| panic!("no line {wanted:?} in {lines:#?}"))
    };
    let order = [
        format!("system: FC Initialize Start RequestId: {cold_id}"),
        format!("system: FC Initialize End RequestId: {cold_id}"),
        format!("system: START RequestId: {cold_id} Version: $LATEST"),
        format!("system: FC Invoke Start RequestId: {cold_id}"),
        "stdout: hello from the function".to_string(),
        format!("system: FC Invoke End RequestId: {cold_id}"),
        format!("system: END RequestId: {cold_id}"),
        format!("system: REPORT RequestId: {cold_id}"),
    ];
    let at: Vec<usize> = order.iter().map(|l| position(l)).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "{order:#?} at {at:?} in {lines:#?}"
    );

    // REPORT: plausible numbers; Init Duration only on the cold start.
    let report_of = |id: &str| {
        let prefix = format!("system: REPORT RequestId: {id}\t");
        let line = lines
            .iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no REPORT for {id} in {lines:#?}"));
        report_fields(line)
    };
    let cold_report = report_of(&cold_id);
    let duration = millis(field(&cold_report, "Duration").expect("Duration"));
    let billed = millis(field(&cold_report, "Billed Duration").expect("Billed Duration"));
    assert!(duration > 0.0 && duration < 5_000.0, "{cold_report:?}");
    assert!(
        billed >= duration && billed < duration + 1.0 + 1e-9,
        "{cold_report:?}"
    );
    assert_eq!(billed.fract(), 0.0, "billed in whole ms: {cold_report:?}");
    assert_eq!(field(&cold_report, "Memory Size"), Some("128 MB"));
    let used: u64 = field(&cold_report, "Max Memory Used")
        .and_then(|v| v.strip_suffix(" MB"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Max Memory Used: {cold_report:?}"));
    assert!((1..=128).contains(&used), "{cold_report:?}");
    let init = millis(field(&cold_report, "Init Duration").expect("Init Duration on a cold start"));
    assert!(init > 0.0, "{cold_report:?}");
    let warm_report = report_of(&warm_id);
    assert_eq!(
        field(&warm_report, "Init Duration"),
        None,
        "{warm_report:?}"
    );
    // The warm call ran no initializer.
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(&format!("FC Initialize Start RequestId: {warm_id}")))
    );

    // The records: newest first, with what the headers said.
    let recs = records(&env, "rec").await;
    assert_eq!(recs.len(), 2, "{recs:#?}");
    let (w, c) = (&recs[0], &recs[1]);
    assert_eq!(w["request_id"], warm_id.as_str());
    assert_eq!(c["request_id"], cold_id.as_str());
    assert_eq!(c["cold_start"], true);
    assert_eq!(w["cold_start"], false);
    assert_eq!(
        c["instance"],
        cold.header("x-wharf-instance-id").unwrap().as_str()
    );
    assert_eq!(
        w["instance"], c["instance"],
        "the warm call reused the instance"
    );
    for r in [w, c] {
        assert_eq!(r["function"], "rec");
        assert_eq!(r["status"], "success");
        assert_eq!(r["http_status"], 200);
        assert_eq!(r["memory_limit_mb"], 128);
        assert_eq!(r["version"], "LATEST");
        assert!(r["duration_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["billed_duration_ms"].as_u64().unwrap() >= 1, "{r}");
        assert!(r["max_memory_used_mb"].as_u64().unwrap() >= 1, "{r}");
    }
    assert!(c["init_duration_ms"].as_f64().unwrap() > 0.0);
    assert!(w["init_duration_ms"].is_null());

    // One record by request id; an unknown id is a clear 404.
    let one = env
        .wharf
        .api(
            "GET",
            &format!("/v1/functions/rec/invocations?request={cold_id}"),
            None,
        )
        .await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["invocations"][0]["request_id"], cold_id.as_str());
    let none = env
        .wharf
        .api("GET", "/v1/functions/rec/invocations?request=nope", None)
        .await;
    assert_eq!(none.status, 404, "{}", none.text());
    assert_eq!(none.json()["error"]["code"], "InvocationNotFound");

    // The CLI's table shows them.
    let out = env.wharf.cli(&["invocations", "rec"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains(&cold_id) && table.contains("cold"),
        "{table}"
    );

    // `wharf logs --request`: that invocation's lines only, from its first marker to REPORT.
    let out = env.wharf.cli(&["logs", "rec", "--request", &cold_id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let messages: Vec<&str> = text.lines().collect();
    assert!(
        messages[0].ends_with(&format!("FC Initialize Start RequestId: {cold_id}")),
        "{text}"
    );
    assert!(
        messages
            .last()
            .unwrap()
            .contains(&format!("REPORT RequestId: {cold_id}\t")),
        "{text}"
    );
    assert!(text.contains("hello from the function"), "{text}");
    assert!(!text.contains(&warm_id), "{text}");
    let missing = env.wharf.cli(&["logs", "rec", "--request", "nope"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no lines of request nope"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_recorded_with_their_code_and_a_timeout_replaces_the_instance() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    env.deploy("slow", json!({"image": env.image, "timeout_s": 1}))
        .await;
    let first = env.invoke("slow", json!({"name": "x"})).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let stuck = first.header("x-wharf-instance-id").unwrap();

    // A function error: the function's status, recorded as such.
    let failed = env
        .invoke("slow", json!({"cmd": "status", "status": 404}))
        .await;
    assert_eq!(failed.status, 404, "{}", failed.text());

    // A timeout: never a 200; recorded with its code; REPORT says so; a new instance next.
    let timed_out = env
        .invoke("slow", json!({"cmd": "sleep", "ms": 3000}))
        .await;
    assert_eq!(timed_out.status, 504, "{}", timed_out.text());
    assert_eq!(timed_out.json()["error"]["code"], "FunctionTimeout");
    let timeout_id = timed_out.header("x-wharf-request-id").unwrap();
    let after = env.invoke("slow", json!({"name": "y"})).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_ne!(after.header("x-wharf-instance-id").unwrap(), stuck);
    assert_eq!(after.header("x-wharf-cold-start").as_deref(), Some("true"));

    let recs = records(&env, "slow").await;
    assert_eq!(recs.len(), 4, "{recs:#?}");
    let timeout = &recs[1];
    assert_eq!(timeout["request_id"], timeout_id.as_str());
    assert_eq!(timeout["status"], "error");
    assert_eq!(timeout["error_code"], "FunctionTimeout");
    assert_eq!(timeout["instance"], stuck.as_str());
    let took = timeout["duration_ms"].as_f64().unwrap();
    assert!((1000.0..3000.0).contains(&took), "{timeout}");
    let function_error = &recs[2];
    assert_eq!(function_error["status"], "function_error");
    assert_eq!(function_error["http_status"], 404);
    assert!(function_error["error"].as_str().unwrap().contains("404"));

    let lines = env.log_lines("slow").await;
    let report = lines
        .iter()
        .find(|l| l.starts_with(&format!("system: REPORT RequestId: {timeout_id}\t")))
        .unwrap_or_else(|| panic!("no REPORT for the timeout in {lines:#?}"));
    assert!(
        report.ends_with("\tStatus: timeout\tError Type: FunctionTimeout"),
        "{report}"
    );
    assert!(lines.contains(&format!("system: END RequestId: {timeout_id}")));
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wharf_logs_follow_prints_new_lines_as_they_come() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    env.deploy("tail", json!({"image": env.image})).await;
    let mut follow = Command::new(WHARF)
        .args(["--url", env.wharf.url(), "--token", env.wharf.token()])
        .args(["logs", "tail", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run wharf logs --follow");
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let r = env
        .invoke("tail", json!({"cmd": "print", "stdout": "followed line"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("x-wharf-request-id").unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !seen
        .iter()
        .any(|l: &String| l.contains(&format!("REPORT RequestId: {id}")))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no REPORT line followed within 20 s: {seen:#?}"),
        }
    }
    assert!(
        seen.iter().any(|l| l.ends_with("stdout followed line")),
        "{seen:#?}"
    );

    // Deleting the function ends the stream, and the command.
    let del = env.wharf.api("DELETE", "/v1/functions/tail", None).await;
    assert_eq!(del.status, 204, "{}", del.text());
    let t0 = std::time::Instant::now();
    loop {
        if follow.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = follow.kill();
            panic!("wharf logs --follow did not end after the function was deleted");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    env.finish();
}
