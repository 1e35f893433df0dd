//! P10–P12 with `--full`: many *frozen* instances of the test function (a daemon that freezes
//! instances 200 ms after their last request): host memory per instance (the memory the host
//! cannot reclaim, grown while they start and shrunk when they go, divided by their number),
//! Wharf's CPU while they sit frozen, Wharf's RSS, and whether any helper process runs beside
//! the instances. P2 is not measured (n/a).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::figures::thaw::frozen;
use crate::figures::{Plan, cpu_seconds, rss, wait_until};
use crate::netns::instances;
use crate::progress;
use crate::report::{Bound, Figure, Unit};
use crate::setup::{Binaries, Daemon, Pushed};

/// The figures that cannot be measured (yet).
pub fn not_available() -> Vec<Figure> {
    vec![Figure::not_available(
        "P2.readiness",
        "P2",
        "readiness lag",
        "the moment a function starts listening is not visible from outside Wharf; \
         needs timestamps inside the daemon",
    )]
}

/// Functions hold at most this many instances (the pool's default cap).
const PER_FUNCTION: usize = 100;
/// How long Wharf's idle CPU is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// `--full`: `plan.idle_instances` idle instances on a fresh daemon.
pub async fn idle(bins: &Binaries, testfn: &Pushed, plan: &Plan) -> Vec<Figure> {
    let n = plan.idle_instances;
    progress!("idle: {n} frozen instances of the test function");
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
    let mut bins = bins.clone();
    bins.serve_args
        .extend(["--freeze-after".to_string(), "200ms".to_string()]);
    let daemon = Daemon::start(&bins, 3600, "auto")?;
    let functions: Vec<String> = (0..n.div_ceil(PER_FUNCTION))
        .map(|i| format!("idle-{i}"))
        .collect();
    for f in &functions {
        daemon.deploy(f, &testfn.reference, 128).await?;
    }
    let pid = daemon.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mem0 = Memory::settled().await?;
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
    let parent = daemon.cgroup_parent().to_owned();
    wait_until(
        "every instance to be frozen",
        Duration::from_secs(120),
        || ids.iter().all(|id| frozen(&parent, id)),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let live = instances(daemon.cgroup_parent());
    let frozen_now = live.iter().filter(|id| frozen(&parent, id)).count();
    let mem1 = Memory::settled().await?;
    let rss1 = rss(pid)?;
    let charged: Vec<u64> = live
        .iter()
        .filter_map(|id| cgroup_memory(daemon.cgroup_parent(), id))
        .collect();
    progress!(
        "idle: {} instances; measuring Wharf's idle CPU for {IDLE_WINDOW:?}",
        live.len()
    );
    let c0 = cpu_seconds(pid)?;
    tokio::time::sleep(IDLE_WINDOW).await;
    // Clock ticks (10 ms): 0.1 % of a core over the window. Clamped: a thread's exit can
    // make the process's sum step back a little.
    let cpu = ((cpu_seconds(pid)? - c0) / IDLE_WINDOW.as_secs_f64() * 100.0).max(0.0);
    let helpers = helper_processes(pid, daemon.cgroup_parent());

    // And back: the instances go, and the memory they held comes back. Averaging the growth
    // and the shrinkage cancels whatever drifts steadily meanwhile (other processes, reclaim).
    progress!("idle: deleting the functions");
    for f in &functions {
        daemon.delete(f).await?;
    }
    wait_until(
        "the idle instances to stop",
        Duration::from_secs(120),
        || daemon.no_instances(),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mem2 = Memory::settled().await?;
    let per_instance =
        |f: fn(&Memory) -> f64| ((f(&mem1) - f(&mem0)) + (f(&mem1) - f(&mem2))) / 2.0 / n as f64;
    let helpers = if helpers.is_empty() {
        "none".to_string()
    } else {
        helpers.join(", ")
    };
    let charged_mean = charged.iter().sum::<u64>() as f64 / charged.len().max(1) as f64;

    let label = "frozen";
    let mib = |b: f64| b / (1024.0 * 1024.0);
    Ok(vec![
        Figure::new(
            "P10.idle.memory",
            "P10",
            &format!("host memory per instance ({label})"),
            Unit::MiB,
        )
        .wharf(mib(per_instance(|m| m.used_for_good)))
        .samples(n, None)
        .note(format!(
            "growth of the memory the host cannot reclaim (MemTotal − MemFree − Buffers − \
             Cached − SReclaimable + Shmem) / {n}, averaged over starting and deleting the \
             instances; by the same measure, MemAvailable {:.2} MiB and unreclaimable kernel \
             memory {:.2} MiB; charged to an instance's cgroup {:.2} MiB, Wharf's RSS {:.3} MiB \
             per instance; Wharf's processes beside the instances: {helpers}; {frozen_now} of \
             {} instances frozen while measured",
            mib(-per_instance(|m| m.available)),
            mib(per_instance(|m| m.kernel)),
            mib(charged_mean),
            mib(rss1 as f64 - rss0 as f64) / n as f64,
            live.len(),
        ))
        .bounds(&[Bound::AtMost(1.0)])
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
            "over {IDLE_WINDOW:?}; the target is for 1,000 frozen instances"
        ))
        .bounds(&[Bound::AtMost(1.0)])
        .judged(0),
        if n >= 1000 {
            Figure::new(
                "P11.density",
                "P11",
                "frozen instances of the test function held at once",
                Unit::Instances,
            )
            .wharf(frozen_now as f64)
            .samples(n, None)
            .bounds(&[Bound::AtLeast(1000.0)])
            .judged(0)
        } else {
            Figure::not_available(
                "P11.density",
                "P11",
                "frozen instances held at once",
                &format!("measured with --full --instances 1000 (this run: {n})"),
            )
        },
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
        .bounds(if n >= 1000 {
            // PERFORMANCE.md's 50 MB.
            &[Bound::AtMost(50e6 / 1048576.0)]
        } else {
            &[]
        })
        .judged(0),
    ])
}

/// Children of Wharf outside every instance's cgroup (a shim would be one), as
/// `name (pid, state)`.
fn helper_processes(wharf: u32, cgroup_parent: &str) -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for pid in procs
        .flatten()
        .filter_map(|p| p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("?");
        if fields.next().and_then(|p| p.parse::<u32>().ok()) != Some(wharf) {
            continue;
        }
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cg.contains(&format!("/{cgroup_parent}/")) {
            continue;
        }
        let name = head.split_once('(').map_or("?", |(_, n)| n);
        found.push(format!("{name} ({pid}, {state})"));
    }
    found
}

/// What /proc/meminfo says, in bytes.
struct Memory {
    /// `MemAvailable`.
    available: f64,
    /// Memory that cannot be reclaimed: anonymous, tmpfs and unreclaimable kernel memory. Unlike
    /// `MemAvailable`, it does not move when the page cache grows or is reclaimed (this VM
    /// reclaims cold page cache continuously with DAMON).
    used_for_good: f64,
    /// Unreclaimable kernel memory: SUnreclaim + Percpu + KernelStack + PageTables.
    kernel: f64,
}

impl Memory {
    fn read() -> anyhow::Result<Memory> {
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let f = |name: &str| -> f64 {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
                .unwrap_or(0.0)
                * 1024.0
        };
        Ok(Memory {
            available: f("MemAvailable:"),
            used_for_good: f("MemTotal:")
                - f("MemFree:")
                - f("Buffers:")
                - f("Cached:")
                - f("SReclaimable:")
                + f("Shmem:"),
            kernel: f("SUnreclaim:") + f("Percpu:") + f("KernelStack:") + f("PageTables:"),
        })
    }

    /// The median of five reads over half a second, field by field.
    async fn settled() -> anyhow::Result<Memory> {
        let mut reads = Vec::new();
        for _ in 0..5 {
            reads.push(Memory::read()?);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let median = |f: fn(&Memory) -> f64| {
            crate::stats::median(&reads.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        Ok(Memory {
            available: median(|m| m.available),
            used_for_good: median(|m| m.used_for_good),
            kernel: median(|m| m.kernel),
        })
    }
}

/// The memory charged to an instance's cgroup (v1 `memory.usage_in_bytes`, v2
/// `memory.current`).
fn cgroup_memory(parent: &str, id: &str) -> Option<u64> {
    [
        format!("/sys/fs/cgroup/memory/{parent}/{id}/memory.usage_in_bytes"),
        format!("/sys/fs/cgroup/{parent}/{id}/memory.current"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
}
