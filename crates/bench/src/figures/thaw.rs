//! P7: what a thaw adds to a call. A daemon that freezes instances 20 ms after their last
//! request; one instance of the test function; per sample, wait until the kernel reports it
//! frozen, time a call through Wharf (which thaws it), then at once time a second call (warm,
//! not frozen) on the same connection. The baseline is that warm call: the same request, path
//! and instance, measured in the same run, so the difference is the thaw.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::figures::Plan;
use crate::progress;
use crate::report::{Bound, Figure, Unit};
use crate::setup::{Binaries, Daemon, Pushed};
use crate::stats::{Samples, median, us};

const FUNCTION: &str = "thaw";
/// How long an instance stays idle before it is frozen, on P7's daemon.
const FREEZE_AFTER: &str = "20ms";
const WARM_IS: &str =
    "the same call again at once, on the same connection and instance, not frozen";

/// The freezer state file of an instance: v1 `freezer.state`, else v2 `cgroup.events`.
fn freezer_file(parent: &str, id: &str) -> Option<PathBuf> {
    [
        format!("/sys/fs/cgroup/freezer/{parent}/{id}/freezer.state"),
        format!("/sys/fs/cgroup/{parent}/{id}/cgroup.events"),
        format!("/sys/fs/cgroup/unified/{parent}/{id}/cgroup.events"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Whether the kernel reports the instance frozen.
pub fn frozen(parent: &str, id: &str) -> bool {
    let Some(file) = freezer_file(parent, id) else {
        return false;
    };
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.trim() == "FROZEN" || text.lines().any(|l| l == "frozen 1")
}

pub async fn p7(bins: &Binaries, testfn: &Pushed, plan: &Plan) -> Vec<Figure> {
    match measure(bins, testfn, plan.p7_samples).await {
        Ok(f) => f,
        Err(e) => vec![Figure::error("P7.thaw.p50", "P7", "thaw added latency", &e)],
    }
}

async fn measure(bins: &Binaries, testfn: &Pushed, n: usize) -> anyhow::Result<Vec<Figure>> {
    progress!("P7: {n} thawed calls, each beside a warm one (--freeze-after {FREEZE_AFTER})");
    let mut bins = bins.clone();
    bins.serve_args
        .extend(["--freeze-after".to_string(), FREEZE_AFTER.to_string()]);
    let daemon = Daemon::start(&bins, 3600, "auto")?;
    daemon.deploy(FUNCTION, &testfn.reference, 128).await?;
    let target = daemon.target(FUNCTION);
    let request = target.prepare(&b"{\"name\":\"thaw\"}"[..]);
    let mut conn = target.connect().await?;
    let (_, first) = conn.timed(&request).await?;
    let id = first.instance().context("no instance id")?.to_owned();
    let parent = daemon.cgroup_parent().to_owned();

    let mut thawed = Samples::with_capacity(n);
    let mut warm = Samples::with_capacity(n);
    let mut writes = Vec::with_capacity(n);
    let mut not_thawed = 0;
    for _ in 0..n {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !frozen(&parent, &id) {
            if Instant::now() > deadline {
                bail!("instance {id} was not frozen within 10 s of its last call");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (took, answer) = conn.timed(&request).await?;
        ensure!(
            answer.instance() == Some(id.as_str()),
            "another instance answered"
        );
        match answer
            .header("x-wharf-thaw-duration-ms")
            .and_then(|v| v.parse::<f64>().ok())
        {
            Some(ms) => writes.push(ms * 1000.0),
            None => not_thawed += 1,
        }
        thawed.push(took);
        let (took, answer) = conn.timed(&request).await?;
        ensure!(
            answer.header("x-wharf-thaw-duration-ms").is_none(),
            "the call right after a thaw found the instance frozen again"
        );
        warm.push(took);
    }
    drop(conn);
    daemon.delete(FUNCTION).await?;

    let mut note = format!(
        "the thaw itself (one write of the freezer file, x-wharf-thaw-duration-ms): median {:.1} µs",
        median(&writes).unwrap_or(f64::NAN)
    );
    if not_thawed > 0 {
        note.push_str(&format!(
            "; {not_thawed} calls found the instance not frozen"
        ));
    }
    let lines = [("p50", 50.0, 200.0), ("p99", 99.0, 2000.0)];
    Ok(lines
        .iter()
        .map(|&(name, p, limit)| {
            let f = Figure::new(
                &format!("P7.thaw.{name}"),
                "P7",
                &format!("thaw added latency {name}"),
                Unit::Us,
            )
            .wharf(thawed.percentile(p).map(us).unwrap_or(f64::NAN))
            .baseline(WARM_IS, warm.percentile(p).map(us))
            .added()
            .bounds(&[Bound::AddedAtMost(limit)])
            .samples(thawed.len(), Some(warm.len()));
            let f = if name == "p50" {
                f.note(note.clone())
            } else {
                f
            };
            f.judged(not_thawed)
        })
        .collect())
}
