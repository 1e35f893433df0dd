//! Counters per function, kept by the pool as invocations end, and their Prometheus text
//! (`GET /metrics`): invocations by status, throttles, cold starts, a duration histogram,
//! requests queued, and instances by state. A function's counters live as long as it does (across its updates).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::report::{InvocationRecord, InvocationStatus};
use crate::{InstanceState, Pool};

/// Upper bounds of the duration histogram's buckets, in seconds.
const BUCKETS_S: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Default)]
pub(crate) struct FunctionMetrics {
    /// By [`InvocationStatus`]: success, function error, error.
    invocations: [AtomicU64; 3],
    throttles: AtomicU64,
    cold_starts: AtomicU64,
    /// Cumulative counts are computed when written; each slot counts its own bucket (the last
    /// one: above every bound).
    buckets: [AtomicU64; BUCKETS_S.len() + 1],
    duration_sum_us: AtomicU64,
}

impl FunctionMetrics {
    /// Counts an ended invocation.
    pub fn observe(&self, r: &InvocationRecord) {
        let status = match r.status {
            InvocationStatus::Success => 0,
            InvocationStatus::FunctionError => 1,
            InvocationStatus::Error => 2,
        };
        self.invocations[status].fetch_add(1, Ordering::Relaxed);
        if r.error_code.as_deref() == Some("ResourceExhausted") {
            self.throttles.fetch_add(1, Ordering::Relaxed);
        }
        if r.cold_start {
            self.cold_starts.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = r.duration_ms / 1e3;
        let slot = BUCKETS_S
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS_S.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us
            .fetch_add((r.duration_ms * 1e3) as u64, Ordering::Relaxed);
    }
}

const STATES: [(InstanceState, &str); 4] = [
    (InstanceState::Busy, "busy"),
    (InstanceState::Idle, "idle"),
    (InstanceState::Frozen, "frozen"),
    (InstanceState::Stopping, "stopping"),
];

impl Pool {
    /// Every function's counters and instances, in Prometheus' text format (0.0.4).
    pub fn metrics_text(&self) -> String {
        // Each function's labels: `function`, and `version` for a published version's pool.
        let mut functions: Vec<(String, _)> = self
            .inner
            .functions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|fp| {
                let spec = &fp.revision().spec;
                let labels = match spec.version {
                    Some(v) => format!("function=\"{}\",version=\"{v}\"", spec.name),
                    None => format!("function=\"{}\"", spec.name),
                };
                (labels, fp.clone())
            })
            .collect();
        functions.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = String::with_capacity(512 + functions.len() * 1024);
        let mut section =
            |name: &str, kind: &str, help: &str, body: &mut dyn FnMut(&mut String)| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                body(&mut out);
            };
        section(
            "wharf_invocations_total",
            "counter",
            "Invocations that ended, by status (success, function_error, error).",
            &mut |out| {
                for (f, fp) in &functions {
                    let m = &fp.revision().metrics;
                    for (i, status) in ["success", "function_error", "error"].iter().enumerate() {
                        let n = m.invocations[i].load(Ordering::Relaxed);
                        let _ = writeln!(
                            out,
                            "wharf_invocations_total{{{f},status=\"{status}\"}} {n}"
                        );
                    }
                }
            },
        );
        section(
            "wharf_throttles_total",
            "counter",
            "Invocations refused because the function had all its instances busy.",
            &mut |out| {
                for (f, fp) in &functions {
                    let n = fp.revision().metrics.throttles.load(Ordering::Relaxed);
                    let _ = writeln!(out, "wharf_throttles_total{{{f}}} {n}");
                }
            },
        );
        section(
            "wharf_cold_starts_total",
            "counter",
            "Invocations that started a new instance.",
            &mut |out| {
                for (f, fp) in &functions {
                    let n = fp.revision().metrics.cold_starts.load(Ordering::Relaxed);
                    let _ = writeln!(out, "wharf_cold_starts_total{{{f}}} {n}");
                }
            },
        );
        section(
            "wharf_invocation_duration_seconds",
            "histogram",
            "The function's time per invocation: event sent to answer read.",
            &mut |out| {
                for (f, fp) in &functions {
                    let m = &fp.revision().metrics;
                    let mut cumulative = 0;
                    for (i, bound) in BUCKETS_S.iter().enumerate() {
                        cumulative += m.buckets[i].load(Ordering::Relaxed);
                        let _ = writeln!(
                            out,
                            "wharf_invocation_duration_seconds_bucket{{{f},le=\"{bound}\"}} {cumulative}"
                        );
                    }
                    cumulative += m.buckets[BUCKETS_S.len()].load(Ordering::Relaxed);
                    let sum = m.duration_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
                    let _ = writeln!(
                        out,
                        "wharf_invocation_duration_seconds_bucket{{{f},le=\"+Inf\"}} {cumulative}\n\
                         wharf_invocation_duration_seconds_sum{{{f}}} {sum}\n\
                         wharf_invocation_duration_seconds_count{{{f}}} {cumulative}"
                    );
                }
            },
        );
        section(
            "wharf_queued_requests",
            "gauge",
            "Requests waiting for an instance of the function to free.",
            &mut |out| {
                for (f, fp) in &functions {
                    let _ = writeln!(out, "wharf_queued_requests{{{f}}} {}", fp.queued());
                }
            },
        );
        section(
            "wharf_instances",
            "gauge",
            "Instances by state (busy, idle, frozen, stopping).",
            &mut |out| {
                for (f, fp) in &functions {
                    let all = fp.instances();
                    for (state, label) in STATES {
                        let n = all.iter().filter(|i| i.state() == state).count();
                        let _ = writeln!(out, "wharf_instances{{{f},state=\"{label}\"}} {n}");
                    }
                }
            },
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        status: InvocationStatus,
        code: Option<&str>,
        ms: f64,
        cold: bool,
    ) -> InvocationRecord {
        InvocationRecord {
            request_id: "r".into(),
            function: "f".into(),
            version: "LATEST".into(),
            revision: 1,
            instance: None,
            cold_start: cold,
            started_at_ms: 0,
            init_duration_ms: None,
            duration_ms: ms,
            billed_duration_ms: 1,
            memory_limit_mb: 128,
            max_memory_used_mb: None,
            status,
            http_status: None,
            error_code: code.map(str::to_string),
            error: None,
        }
    }

    #[test]
    fn observations_land_in_their_counters_and_bucket() {
        let m = FunctionMetrics::default();
        m.observe(&record(InvocationStatus::Success, None, 0.4, true));
        m.observe(&record(InvocationStatus::Success, None, 7.0, false));
        m.observe(&record(
            InvocationStatus::Error,
            Some("ResourceExhausted"),
            0.0,
            false,
        ));
        m.observe(&record(
            InvocationStatus::FunctionError,
            None,
            60_000.0,
            false,
        ));
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(n(&m.invocations[0]), 2);
        assert_eq!(n(&m.invocations[1]), 1);
        assert_eq!(n(&m.invocations[2]), 1);
        assert_eq!(n(&m.throttles), 1);
        assert_eq!(n(&m.cold_starts), 1);
        assert_eq!(n(&m.buckets[0]), 2, "0.4 ms and 0 ms: within 1 ms");
        assert_eq!(n(&m.buckets[3]), 1, "7 ms: within 10 ms");
        assert_eq!(n(&m.buckets[BUCKETS_S.len()]), 1, "60 s: above every bound");
        assert_eq!(n(&m.duration_sum_us), 400 + 7_000 + 60_000_000);
    }
}
