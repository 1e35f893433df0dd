//! The Lambda-compatible Invoke API through the real daemon, driven by AWS's own client code:
//! botocore (tests/aws/invoke.py) and the AWS CLI, from the venv `scripts/pyenv.sh` makes.
//! Payload round trip, function errors, the log tail, `Event` and `DryRun`, ARNs and the
//! emulator path, Lambda's exceptions as botocore raises them, SigV4 with the API token, and a
//! timeout, a crash and an OOM kill as Lambda reports them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use wharf_test_support::daemon::WharfOptions;
use wharf_test_support::env::{TestEnv, skip_unless_root};

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");
const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aws/invoke.py");
const PYENV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pyenv.sh");

/// The venv with botocore and the AWS CLI, made (once) by the project's script; `None` after
/// printing why when it cannot be made (no python3 venv, PyPI unreachable).
fn pyvenv() -> Option<PathBuf> {
    let out = match Command::new("bash").arg(PYENV).output() {
        Ok(out) => out,
        Err(e) => {
            println!("skipped: cannot run {PYENV}: {e}");
            return None;
        }
    };
    if !out.status.success() {
        println!(
            "skipped: scripts/pyenv.sh could not make the botocore venv ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Runs `calls` (Invoke parameters) through botocore with these credentials; one result each.
fn botocore(venv: &Path, endpoint: &str, key: &str, secret: &str, calls: Value) -> Vec<Value> {
    let mut child = Command::new(venv.join("bin/python"))
        .args([DRIVER, endpoint, key, secret])
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the botocore driver");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(calls.to_string().as_bytes())
        .expect("write the calls");
    let out = child.wait_with_output().expect("the botocore driver");
    assert!(
        out.status.success(),
        "botocore driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Value = serde_json::from_slice(&out.stdout).expect("the driver prints JSON");
    results.as_array().cloned().expect("a list of results")
}

fn payload_json(result: &Value) -> Value {
    let text = result["Payload"].as_str().expect("a payload");
    serde_json::from_str(text).unwrap_or_else(|e| panic!("payload {text:?} is not JSON: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_invoke_api_answers_botocore_and_the_aws_cli_like_lambda() {
    if skip_unless_root() {
        return;
    }
    let Some(venv) = pyvenv() else { return };
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    env.deploy("hello", json!({"image": env.image})).await;
    env.deploy("slow", json!({"image": env.image, "timeout_s": 1}))
        .await;
    // The emulator's path, /2015-03-31/functions/function/invocations, is that of `function`.
    env.deploy("function", json!({"image": env.image})).await;
    let url = env.wharf.url().to_string();
    let token = env.wharf.token().to_string();
    // The function's own answer to an event it fails, as Wharf's API passes it through.
    let failing = json!({"cmd": "status", "status": 404});
    let own = env.invoke("hello", failing.clone()).await;
    assert_eq!(own.status, 404, "{}", own.text());
    let publish = env
        .wharf
        .api("POST", "/v1/functions/hello/versions", None)
        .await;
    assert_eq!(publish.status, 201, "{}", publish.text());

    let r = botocore(
        &venv,
        &url,
        &token,
        &token,
        json!([
            {"FunctionName": "hello", "Payload": {"name": "aws"}},
            {"FunctionName": "hello", "LogType": "Tail",
             "Payload": {"cmd": "print", "stdout": "printed by the function"}},
            {"FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:hello",
             "Qualifier": "$LATEST", "Payload": {"name": "arn"}},
            {"FunctionName": "function", "Payload": {"name": "emulator"}},
            {"FunctionName": "hello", "Payload": failing},
            {"FunctionName": "hello", "InvocationType": "DryRun"},
            {"FunctionName": "hello", "InvocationType": "Event", "Payload": {"name": "later"}},
            {"FunctionName": "nope", "Payload": {}},
            {"FunctionName": "hello", "Qualifier": "7", "Payload": {}},
            {"FunctionName": "hello", "Qualifier": "1", "Payload": {"name": "v1"}},
            {"FunctionName": "slow", "Payload": {"cmd": "sleep", "ms": 5000}},
            {"FunctionName": "hello", "InvocationType": "Sometimes"},
            {"FunctionName": "hello", "Payload": {"pad": "y".repeat(2 * 1024 * 1024)}},
            {"FunctionName": "hello", "InvocationType": "Event",
             "Payload": {"pad": "x".repeat(300 * 1024)}},
            {"FunctionName": "hello", "Payload": {"cmd": "exit", "code": 3}},
            {"FunctionName": "hello", "Payload": {"cmd": "alloc", "mb": 400}},
        ]),
    );
    let [
        hello,
        tail,
        arn,
        emulator,
        function_error,
        dry_run,
        event,
        unknown,
        version,
        published,
        timeout,
        bad_type,
        big,
        big_event,
        crash,
        oom,
    ] = r.as_slice()
    else {
        panic!("one result per call: {r:#?}");
    };

    // RequestResponse: the function's answer, as it gave it.
    assert_eq!(hello["StatusCode"], 200, "{hello}");
    assert_eq!(hello["Payload"], "Hello, aws!\n", "{hello}");
    assert_eq!(hello["FunctionError"], Value::Null, "{hello}");
    assert_eq!(hello["ExecutedVersion"], "$LATEST", "{hello}");
    assert_eq!(arn["Payload"], "Hello, arn!\n", "{arn}");
    assert_eq!(published["Payload"], "Hello, v1!\n", "{published}");
    assert_eq!(published["ExecutedVersion"], "1", "{published}");
    assert_eq!(emulator["Payload"], "Hello, emulator!\n", "{emulator}");

    // The log tail: that invocation's lines, START to REPORT, what it printed between.
    let id = tail["RequestId"].as_str().expect("a request id");
    let log = tail["LogResult"].as_str().expect("a LogResult");
    let lines: Vec<&str> = log.lines().collect();
    // The first line is the first that names the request (FC's own marker may precede START).
    assert!(
        lines
            .first()
            .is_some_and(|l| l.contains(&format!("RequestId: {id}"))),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("START RequestId: {id} Version: $LATEST"))),
        "{log}"
    );
    assert!(lines.contains(&"printed by the function"), "{log}");
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with(&format!("REPORT RequestId: {id}\tDuration: "))),
        "{log}"
    );
    assert_eq!(hello["LogResult"], Value::Null, "no tail unless asked");

    // A function error: still 200, flagged, the body as the function answered.
    assert_eq!(function_error["StatusCode"], 200, "{function_error}");
    assert_eq!(
        function_error["FunctionError"], "Unhandled",
        "{function_error}"
    );
    assert_eq!(function_error["Payload"], own.text(), "{function_error}");

    assert_eq!(dry_run["StatusCode"], 204, "{dry_run}");

    // Botocore raises Lambda's modelled exceptions, with Wharf's message.
    assert_eq!(
        unknown["error"]["exception"], "ResourceNotFoundException",
        "{unknown}"
    );
    assert_eq!(unknown["error"]["status"], 404, "{unknown}");
    assert!(
        unknown["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Function not found: nope")),
        "{unknown}"
    );
    assert_eq!(
        version["error"]["exception"], "ResourceNotFoundException",
        "{version}"
    );
    assert!(
        version["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("versions")),
        "{version}"
    );

    assert_eq!(
        bad_type["error"]["exception"], "InvalidParameterValueException",
        "{bad_type}"
    );
    assert!(
        bad_type["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("RequestResponse, Event, DryRun")),
        "{bad_type}"
    );
    // A signed body past the control plane's 1 MiB: the event limit applies (testfn echoes it).
    assert_eq!(big["StatusCode"], 200, "{}", big["error"]);
    assert_eq!(
        payload_json(big)["pad"].as_str().map(str::len),
        Some(2 * 1024 * 1024)
    );
    // Queued events are held in memory: Lambda's 256 KB limit.
    assert_eq!(
        big_event["error"]["exception"], "RequestTooLargeException",
        "{big_event}"
    );
    assert_eq!(big_event["error"]["status"], 413, "{big_event}");

    // A timeout, as Lambda reports it: 200, Unhandled, Sandbox.Timedout.
    assert_eq!(timeout["StatusCode"], 200, "{timeout}");
    assert_eq!(timeout["FunctionError"], "Unhandled", "{timeout}");
    let error = payload_json(timeout);
    assert_eq!(error["errorType"], "Sandbox.Timedout", "{error}");
    let timeout_id = timeout["RequestId"].as_str().expect("a request id");
    assert!(
        error["errorMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!(
                "RequestId: {timeout_id} Error: Task timed out after 1.00 seconds"
            ))),
        "{error}"
    );

    // A crash and an OOM kill of the instance, in Lambda's words (and the OOM in Wharf's).
    assert_eq!(crash["FunctionError"], "Unhandled", "{crash}");
    let error = payload_json(crash);
    assert_eq!(error["errorType"], "Runtime.ExitError", "{error}");
    assert!(
        error["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("Runtime exited with error: exit status 3")),
        "{error}"
    );
    assert_eq!(oom["FunctionError"], "Unhandled", "{oom}");
    let error = payload_json(oom);
    assert_eq!(error["errorType"], "Runtime.OutOfMemory", "{error}");
    assert!(
        error["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("its limit is 128 MB")),
        "{error}"
    );

    // Event: accepted at once, run in the background, recorded under the request id returned.
    assert_eq!(event["StatusCode"], 202, "{event}");
    assert_eq!(event["Payload"], "", "{event}");
    let event_id = event["RequestId"].as_str().expect("a request id");
    let path = format!("/v1/functions/hello/invocations?request={event_id}");
    let deadline = std::time::Instant::now() + wharf_test_support::patience();
    let record = loop {
        let r = env.wharf.api("GET", &path, None).await;
        if r.status == 200 {
            break r.json()["invocations"][0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no record of the Event invocation {event_id}: {}",
            r.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(record["request_id"], event_id, "{record}");

    // SigV4 is checked: the API token is both the access key id and the secret.
    let r = botocore(
        &venv,
        &url,
        &token,
        "not-the-token",
        json!([{"FunctionName": "hello"}]),
    );
    assert_eq!(r[0]["error"]["code"], "InvalidSignatureException", "{r:?}");
    assert_eq!(r[0]["error"]["status"], 403, "{r:?}");
    let r = botocore(
        &venv,
        &url,
        "AKIDEXAMPLE",
        &token,
        json!([{"FunctionName": "hello"}]),
    );
    assert_eq!(
        r[0]["error"]["code"], "UnrecognizedClientException",
        "{r:?}"
    );

    // The bearer token works too, and the ids are in both vocabularies.
    let resp = env
        .wharf
        .api(
            "POST",
            "/2015-03-31/functions/hello/invocations",
            Some(br#"{"name": "bearer"}"#.to_vec()),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "Hello, bearer!\n");
    let amzn = resp.header("x-amzn-requestid").expect("X-Amzn-RequestId");
    assert_eq!(resp.header("x-wharf-request-id"), Some(amzn));
    for (token, name) in [
        (Some("wrong"), "UnrecognizedClientException"),
        (None, "MissingAuthenticationTokenException"),
    ] {
        let resp = env
            .wharf
            .api_with_token(
                "POST",
                "/2015-03-31/functions/hello/invocations",
                None,
                token,
            )
            .await;
        assert_eq!(resp.status, 403, "{}", resp.text());
        assert_eq!(resp.header("x-amzn-errortype").as_deref(), Some(name));
        assert!(
            resp.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("api.token"))
        );
    }

    // The AWS CLI, as the README shows it.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out_file = dir.path().join("out.json");
    let out = Command::new(venv.join("bin/aws"))
        .args(["lambda", "invoke", "--endpoint-url", &url])
        .args([
            "--function-name",
            "hello",
            "--payload",
            r#"{"name": "cli"}"#,
        ])
        .arg(&out_file)
        .env("HOME", dir.path())
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_ACCESS_KEY_ID", &token)
        .env("AWS_SECRET_ACCESS_KEY", &token)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .expect("run aws");
    assert!(
        out.status.success(),
        "aws lambda invoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("aws prints JSON");
    assert_eq!(printed["StatusCode"], 200, "{printed}");
    assert_eq!(
        std::fs::read_to_string(&out_file).expect("out.json"),
        "Hello, cli!\n"
    );

    env.finish();
}
