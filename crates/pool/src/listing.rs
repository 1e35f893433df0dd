//! What the pool shows of a function's instances (`GET /v1/functions/{name}/instances`,
//! `wharf ps`).

use serde::Serialize;

use crate::Pool;

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Serving a request (or running its initialize hook for one).
    Busy,
    /// Ready, waiting for a request.
    Idle,
    /// Idle and frozen: it uses no CPU until the next request thaws it.
    Frozen,
    /// The pool decided to stop it (idle too long, failed, function updated or removed).
    Stopping,
}

/// One instance of a function.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceInfo {
    pub id: String,
    /// The function revision it runs.
    pub revision: u64,
    /// The published version it runs; absent for the latest configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    pub state: InstanceState,
    /// When it became ready (Unix ms).
    pub started_at_ms: u64,
    /// How long since its last request ended; absent while busy.
    pub idle_ms: Option<u64>,
    /// Requests it serves now (at most the function's `concurrency`).
    pub in_flight: usize,
    /// Requests it has served.
    pub requests: u64,
    /// Memory its cgroup uses now, and its peak since it started, in MB rounded up.
    pub memory_now_mb: Option<u64>,
    pub memory_peak_mb: Option<u64>,
    pub memory_limit_mb: u32,
}

impl Pool {
    /// The instances of function `name` and of its published versions, oldest first; `None` if
    /// there is no such function.
    pub fn instances(&self, name: &str) -> Option<Vec<InstanceInfo>> {
        let versions = format!("{name}:");
        let pools: Vec<_> = {
            let functions = self
                .inner
                .functions
                .read()
                .unwrap_or_else(|e| e.into_inner());
            functions.get(name)?;
            functions
                .iter()
                .filter(|(k, _)| *k == name || k.starts_with(&versions))
                .map(|(_, fp)| fp.clone())
                .collect()
        };
        let mut list: Vec<InstanceInfo> = pools
            .iter()
            .flat_map(|fp| fp.instances())
            .map(|i| i.info())
            .collect();
        list.sort_by(|a, b| (a.started_at_ms, &a.id).cmp(&(b.started_at_ms, &b.id)));
        Some(list)
    }
}
