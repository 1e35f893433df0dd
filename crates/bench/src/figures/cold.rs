//! P1 (cold start, image cached, new instance per call) and P3 (cold-start rate).
//!
//! Wharf runs with `--idle-timeout 0`: every instance stops right after its call, so every call
//! is a cold start (each answer's `x-wharf-cold-start` is checked). A sample is client-timed:
//! request sent on a kept connection → whole answer read. The baseline is the OCI runtime Wharf
//! chose, running the same bundle: `run -d` → first 200 on `/invoke`, probed from inside the
//! container's netns with Wharf's readiness backoff (see [`crate::baseline`]). Samples
//! alternate (Wharf, baseline, Wharf, …); after each, and outside the timed window, the side's
//! instance or container is gone before the next sample starts, so neither pays for the
//! other's teardown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::baseline::{Baseline, Bundle, Runtime, RuntimeKind};
use crate::figures::{Plan, wait_until};
use crate::http::Answer;
use crate::progress;
use crate::report::{Bound, Figure, Unit};
use crate::setup::{Binaries, Daemon, Pushed};
use crate::stats::{Samples, median, ms};

/// The event every cold start sends (the test function answers `Hello, bench!`; the Node
/// function echoes it).
pub const EVENT: &[u8] = br#"{"name":"bench"}"#;
/// How long an instance may take to go away after its call.
const STOP_PATIENCE: Duration = Duration::from_secs(30);
/// The idle timeout of P3's daemon: long enough that no instance stops during a burst.
pub const P3_IDLE_TIMEOUT_S: u64 = 3;

/// One series of cold starts, Wharf against the baseline.
struct Series {
    wharf: Samples,
    baseline: Samples,
}

/// Deploys `function`, prepares the baseline's bundle, and alternates `n` cold starts on each
/// side (after one untimed warm-up each).
async fn series(
    daemon: &Daemon,
    baseline: &Arc<Baseline>,
    function: &str,
    image: &Pushed,
    memory_mb: u64,
    n: usize,
) -> anyhow::Result<Series> {
    daemon.deploy(function, &image.reference, memory_mb).await?;
    let bundle = baseline.bundle(function, &image.image, 9000, memory_mb)?;
    let target = daemon.target(function);
    let mut conn = target.connect().await?;
    let prepared = target.prepare(EVENT);
    let mut s = Series {
        wharf: Samples::with_capacity(n),
        baseline: Samples::with_capacity(n),
    };
    for i in 0..=n {
        let (took, answer) = conn
            .timed(&prepared)
            .await
            .with_context(|| format!("cold start {i} of {function} through Wharf"))?;
        check_cold(&answer)?;
        let id = answer.instance().unwrap_or_default().to_owned();
        wait_until(&format!("instance {id} to stop"), STOP_PATIENCE, || {
            daemon.instance_gone(&id)
        })
        .await?;
        let base = baseline_once(baseline, &bundle).await?;
        if i > 0 {
            s.wharf.push(took);
            s.baseline.push(base);
        }
        if i > 0 && i.is_multiple_of(25) {
            progress!("  {function}: {i}/{n}");
        }
    }
    Ok(s)
}

fn check_cold(answer: &Answer) -> anyhow::Result<()> {
    ensure!(
        answer.cold(),
        "an answer with idle timeout 0 was not a cold start (instance {:?})",
        answer.instance()
    );
    Ok(())
}

/// One baseline cold start; the container is deleted afterwards, untimed.
async fn baseline_once(baseline: &Arc<Baseline>, bundle: &Arc<Bundle>) -> anyhow::Result<Duration> {
    let started = baseline.cold_start_async(bundle, EVENT).await?;
    let b = baseline.clone();
    tokio::task::spawn_blocking(move || b.delete(&started.id)).await??;
    Ok(started.took)
}

fn p50_p99(s: &mut Samples) -> (f64, f64) {
    (
        s.p50().map(ms).unwrap_or(f64::NAN),
        s.p99().map(ms).unwrap_or(f64::NAN),
    )
}

/// P1: the test function (p50 and p99, with targets), the Node/Express image and, when Wharf
/// chose crun, the test function on runc (informational).
pub async fn p1(
    bins: &Binaries,
    daemon: &Daemon,
    baseline: &Arc<Baseline>,
    testfn: &Pushed,
    node: Option<&Result<Pushed, String>>,
    plan: &Plan,
) -> Vec<Figure> {
    let mut out = Vec::new();
    let rt = baseline.runtime.kind.name();
    let base_is = format!(
        "{} run -d → first 200, same bundle",
        baseline.runtime.describe()
    );
    progress!(
        "P1: cold starts of the test function, {} per side",
        plan.p1_samples
    );
    match series(
        daemon,
        baseline,
        "cold-testfn",
        testfn,
        128,
        plan.p1_samples,
    )
    .await
    {
        Ok(mut s) => {
            let (w50, w99) = p50_p99(&mut s.wharf);
            let (b50, b99) = p50_p99(&mut s.baseline);
            let n = s.wharf.len();
            out.push(
                Figure::new(
                    "P1.testfn.p50",
                    "P1",
                    &format!("cold start p50, test function ({rt})"),
                    Unit::Ms,
                )
                .wharf(w50)
                .baseline(&base_is, Some(b50))
                .ratio()
                .bounds(&[Bound::RatioAtMost(1.3), Bound::AtMost(15.0)])
                .samples(n, Some(s.baseline.len()))
                .judged(0),
            );
            out.push(
                Figure::new(
                    "P1.testfn.p99",
                    "P1",
                    &format!("cold start p99, test function ({rt})"),
                    Unit::Ms,
                )
                .wharf(w99)
                .baseline(&base_is, Some(b99))
                .ratio()
                .bounds(&[Bound::AtMost(40.0)])
                .samples(n, Some(s.baseline.len()))
                .judged(0),
            );
        }
        Err(e) => out.push(Figure::error(
            "P1.testfn.p50",
            "P1",
            "cold start, test function",
            &e,
        )),
    }
    if let Some(Err(e)) = node {
        out.push(Figure::error(
            "P1.node.p50",
            "P1",
            "cold start, Node/Express",
            &anyhow::anyhow!("{e}"),
        ));
    }
    if let Some(Ok(node)) = node {
        progress!(
            "P1: cold starts of the Node/Express function, {} per side",
            plan.p1_node_samples
        );
        match series(
            daemon,
            baseline,
            "cold-node",
            node,
            256,
            plan.p1_node_samples,
        )
        .await
        {
            Ok(mut s) => {
                let (w50, w99) = p50_p99(&mut s.wharf);
                let (b50, b99) = p50_p99(&mut s.baseline);
                out.push(
                    Figure::new(
                        "P1.node.p50",
                        "P1",
                        &format!("cold start p50, Node/Express ({rt})"),
                        Unit::Ms,
                    )
                    .wharf(w50)
                    .baseline(&base_is, Some(b50))
                    .ratio()
                    .samples(s.wharf.len(), Some(s.baseline.len()))
                    .note(format!("p99 {w99:.1} ms vs {b99:.1} ms"))
                    .judged(0),
                );
            }
            Err(e) => out.push(Figure::error(
                "P1.node.p50",
                "P1",
                "cold start, Node/Express",
                &e,
            )),
        }
    }
    if baseline.runtime.kind == RuntimeKind::Crun {
        progress!("P1: cold starts on runc, {} per side", plan.p1_runc_samples);
        match runc_series(bins, testfn, plan.p1_runc_samples).await {
            Ok((mut s, describe)) => {
                let (w50, w99) = p50_p99(&mut s.wharf);
                let (b50, b99) = p50_p99(&mut s.baseline);
                out.push(
                    Figure::new(
                        "P1.runc.p50",
                        "P1",
                        "cold start p50, test function (runc)",
                        Unit::Ms,
                    )
                    .wharf(w50)
                    .baseline(
                        &format!("{describe} run -d → first 200, same bundle"),
                        Some(b50),
                    )
                    .ratio()
                    .samples(s.wharf.len(), Some(s.baseline.len()))
                    .note(format!(
                        "wharf serve --runtime runc; p99 {w99:.1} ms vs {b99:.1} ms"
                    ))
                    .judged(0),
                );
            }
            Err(e) => out.push(Figure::error(
                "P1.runc.p50",
                "P1",
                "cold start, test function (runc)",
                &e,
            )),
        }
    }
    out
}

/// The test function with `wharf serve --runtime runc` against runc.
async fn runc_series(
    bins: &Binaries,
    testfn: &Pushed,
    n: usize,
) -> anyhow::Result<(Series, String)> {
    let daemon = Daemon::start(bins, 0, "runc")?;
    let baseline = Arc::new(Baseline::new(Runtime::find(RuntimeKind::Runc)?)?);
    let s = series(&daemon, &baseline, "cold-runc", testfn, 128, n).await?;
    Ok((s, baseline.runtime.describe()))
}

/// P3: bursts of `plan.p3_burst` concurrent invocations, each needing a new instance, against
/// the runtime starting as many containers at once (one thread each). Rates are per burst
/// (instances / time to the last answer), the median burst reported; latencies pool all bursts.
pub async fn p3(
    daemon: &Daemon,
    baseline: &Arc<Baseline>,
    testfn: &Pushed,
    plan: &Plan,
) -> Vec<Figure> {
    progress!(
        "P3: {} bursts of {} cold starts per side",
        plan.p3_rounds,
        plan.p3_burst
    );
    match p3_measure(daemon, baseline, testfn, plan).await {
        Ok(f) => f,
        Err(e) => vec![Figure::error("P3.rate", "P3", "cold-start rate", &e)],
    }
}

async fn p3_measure(
    daemon: &Daemon,
    baseline: &Arc<Baseline>,
    testfn: &Pushed,
    plan: &Plan,
) -> anyhow::Result<Vec<Figure>> {
    let n = plan.p3_burst;
    daemon.deploy("burst", &testfn.reference, 128).await?;
    let bundle = baseline.bundle("burst", &testfn.image, 9000, 128)?;
    let target = daemon.target("burst");
    let prepared = target.prepare(EVENT);
    let (mut w_lat, mut b_lat) = (Samples::new(), Samples::new());
    let (mut w_rates, mut b_rates) = (Vec::new(), Vec::new());
    let mut not_cold = 0;
    for round in 0..plan.p3_rounds {
        // Wharf: n kept connections, opened beforehand, all sending at once.
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(target.connect().await?);
        }
        let mut set = tokio::task::JoinSet::new();
        let t0 = Instant::now();
        for mut conn in conns {
            let p = prepared.clone();
            set.spawn(async move { conn.timed(&p).await });
        }
        while let Some(r) = set.join_next().await {
            let (took, answer) = r?.context("a burst invocation through Wharf")?;
            w_lat.push(took);
            if !answer.cold() {
                not_cold += 1;
            }
        }
        w_rates.push(n as f64 / t0.elapsed().as_secs_f64());
        wait_until("the burst's instances to stop", STOP_PATIENCE, || {
            daemon.no_instances()
        })
        .await?;

        // The runtime: n containers at once.
        let (b, bundle2) = (baseline.clone(), bundle.clone());
        let (results, wall) =
            tokio::task::spawn_blocking(move || b.burst(&bundle2, n, EVENT)).await?;
        let mut ids = Vec::new();
        let mut first_error = None;
        for r in results {
            match r {
                Ok(s) => {
                    b_lat.push(s.took);
                    ids.push(s.id);
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        let b = baseline.clone();
        tokio::task::spawn_blocking(move || b.delete_all(&ids)).await??;
        if let Some(e) = first_error {
            bail!("a baseline container of the burst failed: {e:#}");
        }
        b_rates.push(n as f64 / wall.as_secs_f64());
        progress!("  burst {}/{}", round + 1, plan.p3_rounds);
    }
    let rt = baseline.runtime.describe();
    let mut rate = Figure::new(
        "P3.rate",
        "P3",
        &format!("cold-start rate, burst of {n}"),
        Unit::StartsPerSec,
    )
    .wharf(median(&w_rates).unwrap_or(f64::NAN))
    .baseline(
        &format!("{rt}: {n} containers at once, each run -d → first 200"),
        median(&b_rates),
    )
    .ratio()
    .bounds(&[Bound::AtLeast(150.0)])
    .samples(w_rates.len(), Some(b_rates.len()));
    if not_cold > 0 {
        rate = rate.note(format!(
            "{not_cold} of the bursts' answers were not cold starts"
        ));
    }
    Ok(vec![
        rate.judged(0),
        Figure::new(
            "P3.p99",
            "P3",
            &format!("cold-start p99 during a burst of {n}"),
            Unit::Ms,
        )
        .wharf(w_lat.p99().map(ms).unwrap_or(f64::NAN))
        .baseline(
            &format!("{rt}: {n} containers at once, each run -d → first 200"),
            b_lat.p99().map(ms),
        )
        .ratio()
        .bounds(&[Bound::Below(50.0)])
        .samples(w_lat.len(), Some(b_lat.len()))
        .judged(0),
    ])
}

/// The baseline for the runtime Wharf chose.
pub fn baseline_for(daemon: &Daemon) -> anyhow::Result<Arc<Baseline>> {
    Ok(Arc::new(Baseline::new(Runtime::find(
        daemon.runtime.kind,
    )?)?))
}
