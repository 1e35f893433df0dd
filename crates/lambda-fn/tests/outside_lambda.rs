//! The function outside Lambda: `lambda_runtime` refuses to start without the environment the
//! Runtime API's host gives it. (This integration test is also what makes `cargo nextest run
//! --workspace` build the binary that the lambda contract's daemon tests pack as an image.)

use std::process::Command;

#[test]
fn without_the_lambda_environment_the_function_refuses_to_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf-lambda-fn"))
        .env_clear()
        .output()
        .expect("run wharf-lambda-fn");
    assert!(!out.status.success(), "it started outside Lambda: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("AWS_LAMBDA_"),
        "stderr does not name the missing variable: {stderr}"
    );
}
