//! Function logs: the sink instances print into, and `GET /v1/functions/{name}/logs`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use wharf_pool::FunctionLog;
use wharf_sandbox::{OutputSink, Stream};
use wharf_store::{LogEntry, LogStore, LogStream, LogWriter};

use crate::{ApiError, App};

/// `tail` when the request does not say.
pub const DEFAULT_TAIL: usize = 200;
pub const MAX_TAIL: usize = 10_000;

/// Writes a function's instance output and Wharf's notes into the function's log file.
pub struct StoreLog {
    writer: LogWriter,
}

impl StoreLog {
    pub fn new(logs: &LogStore, function: &str) -> Self {
        StoreLog {
            writer: logs.writer(function),
        }
    }

    fn append(&self, instance_id: &str, stream: LogStream, line: &str) {
        self.writer
            .append(&LogEntry::now(instance_id, stream, line));
    }
}

impl OutputSink for StoreLog {
    fn write_line(&self, instance_id: &str, stream: Stream, line: &str) {
        let stream = match stream {
            Stream::Stdout => LogStream::Stdout,
            Stream::Stderr => LogStream::Stderr,
        };
        self.append(instance_id, stream, line);
    }
}

impl FunctionLog for StoreLog {
    fn system(&self, instance_id: &str, message: &str) {
        self.append(instance_id, LogStream::System, message);
    }
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    pub tail: Option<usize>,
}

#[derive(Serialize)]
pub struct Logs {
    pub entries: Vec<LogEntry>,
}

/// `GET /v1/functions/{name}/logs?tail=N`: the last N lines, newest last.
pub async fn get(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<Logs>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    if app.store.get_function(&name)?.is_none() {
        return Err(ApiError::function_not_found(&name));
    }
    let tail = q.tail.unwrap_or(DEFAULT_TAIL);
    if tail == 0 || tail > MAX_TAIL {
        return Err(ApiError::invalid(
            "tail",
            format!("{tail} is out of range: must be between 1 and {MAX_TAIL}"),
        ));
    }
    let logs = app.logs.clone();
    let entries = tokio::task::spawn_blocking(move || logs.tail(&name, tail))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(Logs { entries }))
}
