//! What is written about every invocation: the `START`, `END` and `REPORT` lines in the
//! function's log (Lambda's words, for every contract, beside the vendor's own markers), and the
//! invocation record (`GET /v1/functions/{name}/invocations`).
//!
//! Lambda's rules, followed for every contract: Duration is the function's time (event sent →
//! answer read); Billed Duration is it rounded up to the next millisecond (at least 1 ms); Init
//! Duration appears on a cold start; Max Memory Used is the instance's memory peak since it
//! started, in MB (1 MB = 2^20 bytes) rounded up.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// How an invocation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvocationStatus {
    /// The function answered and reported success.
    Success,
    /// The function answered and reported a failure (its status and body went to the caller).
    FunctionError,
    /// Wharf could not get an answer: see `error_code` (FunctionTimeout, FunctionOutOfMemory,
    /// FunctionNotStarted, ResourceExhausted, …).
    Error,
}

/// One invocation, as kept for `GET /v1/functions/{name}/invocations`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub request_id: String,
    pub function: String,
    /// The function version that served (`LATEST` until versions exist).
    pub version: String,
    /// The function's revision (increases with every update).
    pub revision: u64,
    /// The instance that served; `None` when none was reached (throttled, start failed).
    pub instance: Option<String>,
    pub cold_start: bool,
    /// When the invocation began, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// On a cold start: the instance's start, until its server listened.
    pub init_duration_ms: Option<f64>,
    /// The function's time: event sent → answer read (or → the failure).
    pub duration_ms: f64,
    pub billed_duration_ms: u64,
    pub memory_limit_mb: u32,
    /// The instance's memory peak so far, MB rounded up; `None` without a memory controller.
    pub max_memory_used_mb: Option<u64>,
    pub status: InvocationStatus,
    /// The function's HTTP status, when it answered.
    pub http_status: Option<u16>,
    /// Wharf's error code (`InvokeError::code`), or the function error's reason's contract.
    pub error_code: Option<String>,
    /// What went wrong, in words: Wharf's error message, or the function error's reason.
    pub error: Option<String>,
}

/// Lambda's billing: the duration rounded up to the next whole millisecond, at least 1.
pub fn billed_ms(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(1_000_000) as u64).max(1)
}

/// Bytes to MB (2^20) rounded up, as Lambda reports memory.
pub fn mb_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(1024 * 1024)
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// How the START line names a version: Lambda writes `$LATEST`.
fn version_word(version: &str) -> &str {
    if version == "LATEST" {
        "$LATEST"
    } else {
        version
    }
}

pub(crate) fn start_line(request_id: &str, version: &str) -> String {
    format!(
        "START RequestId: {request_id} Version: {}",
        version_word(version)
    )
}

pub(crate) fn end_line(request_id: &str) -> String {
    format!("END RequestId: {request_id}")
}

/// `REPORT RequestId: … Duration: … ms …`, tab-separated as Lambda writes it; a failed call
/// ends with `Status: …` (and `Error Type: …`), as Lambda's do.
pub fn report_line(r: &InvocationRecord) -> String {
    let mut line = format!(
        "REPORT RequestId: {}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB",
        r.request_id, r.duration_ms, r.billed_duration_ms, r.memory_limit_mb
    );
    if let Some(used) = r.max_memory_used_mb {
        line.push_str(&format!("\tMax Memory Used: {used} MB"));
    }
    if let Some(init) = r.init_duration_ms {
        line.push_str(&format!("\tInit Duration: {init:.2} ms"));
    }
    if r.status == InvocationStatus::Error {
        let code = r.error_code.as_deref().unwrap_or("error");
        let status = match code {
            "FunctionTimeout" => "timeout",
            _ => "error",
        };
        line.push_str(&format!("\tStatus: {status}\tError Type: {code}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> InvocationRecord {
        InvocationRecord {
            request_id: "8f5e".into(),
            function: "f".into(),
            version: "LATEST".into(),
            revision: 1,
            instance: Some("f-1".into()),
            cold_start: false,
            started_at_ms: 0,
            init_duration_ms: None,
            duration_ms: 1.234,
            billed_duration_ms: 2,
            memory_limit_mb: 128,
            max_memory_used_mb: Some(14),
            status: InvocationStatus::Success,
            http_status: Some(200),
            error_code: None,
            error: None,
        }
    }

    #[test]
    fn report_lines_read_like_lambdas() {
        assert_eq!(
            report_line(&record()),
            "REPORT RequestId: 8f5e\tDuration: 1.23 ms\tBilled Duration: 2 ms\tMemory Size: \
             128 MB\tMax Memory Used: 14 MB"
        );
        let cold = InvocationRecord {
            init_duration_ms: Some(95.5),
            ..record()
        };
        assert!(report_line(&cold).ends_with("\tMax Memory Used: 14 MB\tInit Duration: 95.50 ms"));
        let timed_out = InvocationRecord {
            status: InvocationStatus::Error,
            error_code: Some("FunctionTimeout".into()),
            ..record()
        };
        assert!(
            report_line(&timed_out).ends_with("\tStatus: timeout\tError Type: FunctionTimeout"),
            "{}",
            report_line(&timed_out)
        );
        assert_eq!(
            start_line("r", "LATEST"),
            "START RequestId: r Version: $LATEST"
        );
        assert_eq!(end_line("r"), "END RequestId: r");
    }

    #[test]
    fn billing_rounds_up_to_whole_milliseconds() {
        assert_eq!(billed_ms(Duration::from_micros(1)), 1);
        assert_eq!(billed_ms(Duration::ZERO), 1);
        assert_eq!(billed_ms(Duration::from_micros(1_000)), 1);
        assert_eq!(billed_ms(Duration::from_micros(1_001)), 2);
        assert_eq!(mb_ceil(14 * 1024 * 1024 + 1), 15);
    }
}
