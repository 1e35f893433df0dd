//! Function logs: the sink instances print into (and the pool writes invocation records into),
//! `GET /v1/functions/{name}/logs` (also followed, as a stream) and
//! `GET /v1/functions/{name}/invocations`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use wharf_pool::{FunctionLog, InvocationRecord};
use wharf_sandbox::{OutputSink, Stream};
use wharf_store::{LogEntry, LogFile, LogStore, LogStream, LogWriter};

use crate::{ApiError, App};

/// `tail` when the request does not say.
pub const DEFAULT_TAIL: usize = 200;
pub const MAX_TAIL: usize = 10_000;
/// How often a followed log looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Writes a function's instance output and Wharf's notes into the function's log file, and its
/// invocation records beside it.
pub struct StoreLog {
    writer: LogWriter,
    records: LogWriter,
}

impl StoreLog {
    pub fn new(logs: &LogStore, function: &str) -> Self {
        StoreLog {
            writer: logs.writer(function),
            records: logs.writer_of(function, LogFile::Invocations),
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

    fn invocation(&self, record: &InvocationRecord) {
        self.records.append_json(record);
    }
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    pub tail: Option<usize>,
    /// Keep the response open and send new lines as they are written (JSON lines).
    #[serde(default)]
    pub follow: bool,
    /// Only the lines of the invocation with this request id.
    pub request: Option<String>,
}

#[derive(Serialize)]
pub struct Logs {
    pub entries: Vec<LogEntry>,
}

/// A `1..=MAX_TAIL` count from a query, `default` when absent.
fn count(field: &str, value: Option<usize>, default: usize) -> Result<usize, ApiError> {
    let n = value.unwrap_or(default);
    if n == 0 || n > MAX_TAIL {
        return Err(ApiError::invalid(
            field,
            format!("{n} is out of range: must be between 1 and {MAX_TAIL}"),
        ));
    }
    Ok(n)
}

async fn require_function(app: &Arc<App>, name: &str) -> Result<(), ApiError> {
    let exists = crate::blocking({
        let (store, name) = (app.store.clone(), name.to_string());
        move || store.get_function(&name).map(|f| f.is_some())
    })
    .await?;
    if exists {
        Ok(())
    } else {
        Err(ApiError::function_not_found(name))
    }
}

/// `GET /v1/functions/{name}/logs?tail=N`: the last N lines, newest last, as
/// `{"entries": [...]}`. With `follow=true`: those lines and then every new one, as JSON lines
/// (`application/x-ndjson`), until the client goes away or the function is deleted.
pub async fn get(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    require_function(&app, &name).await?;
    let tail = count("tail", q.tail, DEFAULT_TAIL)?;
    if let Some(id) = q.request {
        if q.follow {
            return Err(ApiError::invalid(
                "follow",
                "follow and request cannot be combined: an invocation's lines are complete \
                 once its REPORT line is written",
            ));
        }
        let entries = request_lines(&app, &name, &id).await?;
        return Ok(Json(Logs { entries }).into_response());
    }
    let logs = app.logs.clone();
    let (mut entries, offset) = crate::blocking({
        let name = name.clone();
        move || logs.read_from::<LogEntry>(&name, LogFile::Log, None)
    })
    .await?;
    entries.drain(..entries.len().saturating_sub(tail));
    if !q.follow {
        return Ok(Json(Logs { entries }).into_response());
    }
    let stream = futures::stream::unfold(
        (app, name, Some(entries), offset),
        |(app, name, first, offset)| async move {
            let batch = match first {
                Some(entries) => Some((entries, offset)),
                None => follow_step(&app, &name, offset).await,
            };
            let (entries, offset) = batch?;
            let mut text = Vec::new();
            for e in &entries {
                if serde_json::to_writer(&mut text, e).is_ok() {
                    text.push(b'\n');
                }
            }
            Some((
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(text)),
                (app, name, None, offset),
            ))
        },
    );
    Ok((
        [(http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The lines of one invocation, found in the function's whole log.
async fn request_lines(app: &Arc<App>, name: &str, id: &str) -> Result<Vec<LogEntry>, ApiError> {
    let logs = app.logs.clone();
    let (entries, _) = crate::blocking({
        let name = name.to_string();
        move || logs.read_from::<LogEntry>(&name, LogFile::Log, None)
    })
    .await?;
    let lines = lines_of_request(entries, id);
    if lines.is_empty() {
        return Err(ApiError::new(
            http::StatusCode::NOT_FOUND,
            "InvocationNotFound",
            format!(
                "function {name}'s log has no lines of request {id} (the request failed before \
                 an instance took it, or its lines were rotated out; see \
                 GET /v1/functions/{name}/invocations?request={id})"
            ),
        ));
    }
    Ok(lines)
}

/// An invocation's lines: from the first system line that names the request (the vendor's
/// initialize marker or `START`) through its `REPORT`, on the instance that served it — lines of
/// other instances printed meanwhile are not its.
pub(crate) fn lines_of_request(entries: Vec<LogEntry>, id: &str) -> Vec<LogEntry> {
    let named = format!("RequestId: {id}");
    let names_it = |e: &LogEntry| {
        e.stream == LogStream::System
            && e.message.find(&named).is_some_and(|at| {
                !e.message[at + named.len()..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
            })
    };
    let Some(first) = entries.iter().position(names_it) else {
        return Vec::new();
    };
    let instance = entries[first].instance.clone();
    let report = format!("REPORT {named}");
    let mut lines = Vec::new();
    for e in entries.into_iter().skip(first) {
        if e.instance != instance {
            continue;
        }
        let done = e.stream == LogStream::System && names_it(&e) && e.message.starts_with(&report);
        lines.push(e);
        if done {
            break;
        }
    }
    lines
}

/// The next lines of a followed log, waiting until there are some; `None` once the function is
/// gone (or its log cannot be read).
async fn follow_step(app: &Arc<App>, name: &str, offset: u64) -> Option<(Vec<LogEntry>, u64)> {
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        require_function(app, name).await.ok()?;
        let logs = app.logs.clone();
        let name = name.to_string();
        let (entries, next) =
            crate::blocking(move || logs.read_from::<LogEntry>(&name, LogFile::Log, Some(offset)))
                .await
                .ok()?;
        if !entries.is_empty() {
            return Some((entries, next));
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct InvocationsQuery {
    pub limit: Option<usize>,
    /// Only the invocation with this request id.
    pub request: Option<String>,
}

#[derive(Serialize)]
pub struct Invocations {
    pub invocations: Vec<InvocationRecord>,
}

/// Records looked through for `?request=`: the newest this many.
const REQUEST_SEARCH_RECORDS: usize = 100_000;

/// `GET /v1/functions/{name}/invocations?limit=N`: the last N invocation records, newest
/// first; `?request=ID`: that invocation's record.
pub async fn invocations(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    query: Result<Query<InvocationsQuery>, QueryRejection>,
) -> Result<Json<Invocations>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    require_function(&app, &name).await?;
    let limit = count("limit", q.limit, DEFAULT_TAIL)?;
    let logs = app.logs.clone();
    let wanted = if q.request.is_some() {
        REQUEST_SEARCH_RECORDS
    } else {
        limit
    };
    let mut records: Vec<InvocationRecord> = crate::blocking({
        let name = name.clone();
        move || logs.tail_of(&name, LogFile::Invocations, wanted)
    })
    .await?;
    records.reverse();
    if let Some(id) = &q.request {
        records.retain(|r| &r.request_id == id);
        if records.is_empty() {
            return Err(ApiError::new(
                http::StatusCode::NOT_FOUND,
                "InvocationNotFound",
                format!(
                    "function {name} has no record of request {id} (records are kept for the \
                     most recent invocations only)"
                ),
            ));
        }
    }
    records.truncate(limit);
    Ok(Json(Invocations {
        invocations: records,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(instance: &str, stream: LogStream, message: &str) -> LogEntry {
        LogEntry::now(instance, stream, message)
    }

    #[test]
    fn a_request_s_lines_run_from_its_first_marker_to_its_report_on_its_instance() {
        use LogStream::{Stdout, System};
        let entries = vec![
            entry("i1", System, "START RequestId: aa-1 Version: $LATEST"),
            entry("i1", System, "REPORT RequestId: aa-1\tDuration: 1.00 ms"),
            entry("i1", System, "FC Invoke Start RequestId: aa"),
            entry("i1", System, "START RequestId: aa Version: $LATEST"),
            entry("i2", Stdout, "another instance"),
            entry("i1", Stdout, "hello"),
            entry("i1", System, "END RequestId: aa"),
            entry("i1", System, "REPORT RequestId: aa\tDuration: 2.00 ms"),
            entry("i1", Stdout, "after"),
        ];
        let got: Vec<_> = lines_of_request(entries.clone(), "aa")
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(
            got,
            [
                "FC Invoke Start RequestId: aa",
                "START RequestId: aa Version: $LATEST",
                "hello",
                "END RequestId: aa",
                "REPORT RequestId: aa\tDuration: 2.00 ms",
            ]
        );
        assert_eq!(lines_of_request(entries.clone(), "aa-1").len(), 2);
        assert!(lines_of_request(entries, "a").is_empty());
    }
}
