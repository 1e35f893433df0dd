//! `wharf-lambda-fn`: a Lambda function written as AWS documents it for Rust — a handler run by
//! the `lambda_runtime` crate, which talks to the Runtime API at `$AWS_LAMBDA_RUNTIME_API`.
//! The tests pack it as an image (entrypoint: this binary) and steer it through its events:
//!
//! - `{"name": "x"}` → `{"greeting": "Hello, x!"}`
//! - `{"cmd": "context"}` → what the runtime told the handler: `request_id`, `deadline_ms`,
//!   `invoked_function_arn`, `xray_trace_id`, the function's name, memory and version, and
//!   the `AWS_*`, `LAMBDA_*`, `_HANDLER` and `TZ` variables
//! - `{"cmd": "fail", "message": "…"}` → the handler returns that error
//! - `{"cmd": "print", "text": "…"}` → prints it (stdout), answers `{"printed": true}`
//! - `{"cmd": "sleep", "ms": 100}` → answers after sleeping
//! - `{"cmd": "exit", "code": 3}` → the process exits without answering
//! - `{"cmd": "alloc", "mb": 200}` → allocates and touches that many MiB
//! - anything else → echoed back

use std::collections::BTreeMap;
use std::time::Duration;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, ctx) = event.into_parts();
    if let Some(name) = payload.get("name").and_then(Value::as_str) {
        return Ok(json!({"greeting": format!("Hello, {name}!")}));
    }
    match payload.get("cmd").and_then(Value::as_str) {
        Some("context") => {
            let env: BTreeMap<String, String> = std::env::vars()
                .filter(|(k, _)| {
                    k.starts_with("AWS_")
                        || k.starts_with("LAMBDA_")
                        || k == "_HANDLER"
                        || k == "TZ"
                })
                .collect();
            Ok(json!({
                "request_id": ctx.request_id,
                "deadline_ms": ctx.deadline,
                "invoked_function_arn": ctx.invoked_function_arn,
                "xray_trace_id": ctx.xray_trace_id,
                "function_name": ctx.env_config.function_name,
                "memory": ctx.env_config.memory,
                "version": ctx.env_config.version,
                "env": env,
            }))
        }
        Some("fail") => {
            let message = payload
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("told to fail");
            Err(message.into())
        }
        Some("print") => {
            println!(
                "{}",
                payload.get("text").and_then(Value::as_str).unwrap_or("")
            );
            Ok(json!({"printed": true}))
        }
        Some("sleep") => {
            let ms = payload.get("ms").and_then(Value::as_u64).unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({"slept_ms": ms}))
        }
        Some("exit") => {
            let code = payload.get("code").and_then(Value::as_i64).unwrap_or(3);
            std::process::exit(code as i32);
        }
        Some("alloc") => {
            let mb = payload.get("mb").and_then(Value::as_u64).unwrap_or(1) as usize;
            let mut held = Vec::with_capacity(mb);
            for _ in 0..mb {
                held.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
            Ok(json!({"allocated_mb": held.len()}))
        }
        _ => Ok(payload),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
