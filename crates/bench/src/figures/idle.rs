//! P7 and P10–P12 need the freezer (issues 5 and 7), which is not built yet: they are printed as
//! `n/a`. With `--full`, what can be measured now is measured on *idle* (not frozen) instances
//! of the test function: host memory per instance (the drop of `MemAvailable` divided by the
//! number of instances), Wharf's CPU while everything is idle, Wharf's RSS, and whether any
//! helper process runs beside the instances.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::figures::{Plan, cpu_seconds, mem_available, rss};
use crate::netns::instances;
use crate::progress;
use crate::report::{Figure, Unit};
use crate::setup::{Binaries, Daemon, Pushed};

const FREEZER: &str = "needs the freezer (issues 5 and 7), not built yet";

/// The figures that cannot be measured yet.
pub fn not_available() -> Vec<Figure> {
    vec![
        Figure::not_available(
            "P2.readiness",
            "P2",
            "readiness lag",
            "the moment a function starts listening is not visible from outside Wharf; \
             needs timestamps inside the daemon",
        ),
        Figure::not_available("P7.thaw", "P7", "thaw added latency", FREEZER),
        Figure::not_available(
            "P10.frozen",
            "P10",
            "idle cost per frozen instance",
            FREEZER,
        ),
        Figure::not_available(
            "P11.density",
            "P11",
            "frozen instances of a 10 MB function",
            FREEZER,
        ),
        Figure::not_available(
            "P12.rss",
            "P12",
            "daemon RSS with 1,000 frozen instances",
            FREEZER,
        ),
    ]
}

/// Functions hold at most this many instances (the pool's default cap).
const PER_FUNCTION: usize = 100;
/// How long Wharf's idle CPU is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// `--full`: `plan.idle_instances` idle instances on a fresh daemon.
pub async fn idle(bins: &Binaries, testfn: &Pushed, plan: &Plan) -> Vec<Figure> {
    let n = plan.idle_instances;
    progress!("idle: {n} idle (not frozen) instances of the test function");
    match measure(bins, testfn, n).await {
        Ok(f) => f,
        Err(e) => vec![Figure::error(
            "P10.idle.memory",
            "P10",
            "idle instances",
            &e,
        )],
    }
}

async fn measure(bins: &Binaries, testfn: &Pushed, n: usize) -> anyhow::Result<Vec<Figure>> {
    let daemon = Daemon::start(bins, 3600, "auto")?;
    let functions: Vec<String> = (0..n.div_ceil(PER_FUNCTION))
        .map(|i| format!("idle-{i}"))
        .collect();
    for f in &functions {
        daemon.deploy(f, &testfn.reference, 128).await?;
    }
    let pid = daemon.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mem0 = mem_available()?;
    let rss0 = rss(pid)?;

    // n calls at once, each holding its instance long enough for all n to start.
    let hold_ms = 5_000 + 40 * n as u64;
    let event = format!(r#"{{"cmd":"sleep","ms":{hold_ms}}}"#);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let target = daemon.target(&functions[i / PER_FUNCTION]);
        let p = target.prepare(event.clone());
        set.spawn(async move { target.connect().await?.timed(&p).await });
    }
    let mut ids = BTreeSet::new();
    while let Some(r) = set.join_next().await {
        let (_, answer) = r??;
        ids.insert(answer.instance().context("no instance id")?.to_owned());
    }
    ensure!(
        ids.len() == n,
        "{} instances for {n} concurrent calls",
        ids.len()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let live = instances(daemon.cgroup_parent()).len();
    let mem1 = mem_available()?;
    let rss1 = rss(pid)?;
    progress!("idle: {live} instances; measuring Wharf's idle CPU for {IDLE_WINDOW:?}");
    let c0 = cpu_seconds(pid)?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let cpu = (cpu_seconds(pid)? - c0) / IDLE_WINDOW.as_secs_f64() * 100.0;
    let helpers = helper_processes(pid, daemon.cgroup_parent());

    let label = "idle, not frozen";
    let mib = |b: f64| b / (1024.0 * 1024.0);
    Ok(vec![
        Figure::new(
            "P10.idle.memory",
            "P10",
            &format!("host memory per instance ({label})"),
            Unit::MiB,
        )
        .wharf(mib(mem0.saturating_sub(mem1) as f64 / n as f64))
        .samples(n, None)
        .note(format!(
            "MemAvailable drop / {n}; target ≤1 MiB is for frozen instances; helper processes \
                 beside the instances: {helpers}"
        ))
        .judged(0),
        Figure::new(
            "P10.idle.cpu",
            "P10",
            &format!("Wharf CPU with {n} instances ({label})"),
            Unit::PercentCore,
        )
        .wharf(cpu)
        .samples(n, None)
        .note(format!(
            "over {IDLE_WINDOW:?}; target ≤1 % is for 1,000 frozen instances"
        ))
        .judged(0),
        Figure::new(
            "P12.idle.rss",
            "P12",
            &format!("Wharf RSS with {n} instances ({label})"),
            Unit::MiB,
        )
        .wharf(mib(rss1 as f64))
        .samples(n, None)
        .note(format!(
            "{:.1} MiB before the instances; target ≤50 MB is for 1,000",
            mib(rss0 as f64)
        ))
        .judged(0),
    ])
}

/// Processes whose parent is Wharf and that are not in an instance's cgroup (a shim would be
/// one).
fn helper_processes(wharf: u32, cgroup_parent: &str) -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            ppid == Some(wharf)
        })
        .filter(|pid| {
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            !cg.contains(&format!("/{cgroup_parent}/"))
        })
        .count()
}
