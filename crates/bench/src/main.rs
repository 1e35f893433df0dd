//! `wharf-bench`: measures Wharf against its baselines, in one run, on this machine.
//!
//! Every figure of PERFORMANCE.md is measured next to its baseline *in the same run*, samples
//! alternating between the two, because shared machines are noisy and only a ratio survives
//! that. The program sets everything up itself (a loopback registry, the images, `wharf serve`
//! daemons with fresh data directories, the baseline's containers) and removes all of it, also
//! when a figure fails or the run is interrupted (Ctrl-C, SIGTERM). Progress goes to stderr; the
//! table to stdout; `--out` writes JSON and `--against` compares with an earlier JSON.
//!
//! Everything runs on one tokio thread: the client is cheap, the latency of a single-threaded
//! client is steadier, and the machine has two cores that Wharf and the functions need. What
//! must block (the runtime's commands, probes inside a container's netns, the fixed-rate
//! schedule) runs on threads of its own. See docs/PERFORMANCE.md.

mod baseline;
mod figures;
mod http;
mod images;
mod load;
mod netns;
mod relay;
mod report;
mod setup;
mod stats;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;

use crate::figures::{Plan, cold, idle, pull, thaw, warm};
use crate::images::Variant;
use crate::report::{Figure, HostInfo, Run, Verdict};
use crate::setup::{Binaries, Daemon, Images};

/// Measures Wharf against its baselines (docs/PERFORMANCE.md). Run it as root, through
/// scripts/bench.sh, which builds the release binaries first.
#[derive(Parser, Debug)]
#[command(version, args_override_self = true)]
struct Args {
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print each figure beside this earlier run's value (a file written by --out).
    #[arg(long, value_name = "FILE")]
    against: Option<PathBuf>,
    /// Also measure what takes long: many frozen instances (P10–P12).
    #[arg(long)]
    full: bool,
    /// Only these figures, e.g. P1,P4 (P6 comes with P5's runs).
    #[arg(long, value_delimiter = ',', value_name = "P1,P4,...")]
    only: Vec<String>,
    /// Cold starts per side for P1; every other figure's sample count scales with it
    /// (P4: 200x requests closed-loop, 50x fixed-rate; P3: a burst per 33; P8/P9: a deploy
    /// per 33, at least 2).
    #[arg(long, default_value_t = 100, value_name = "N")]
    samples: usize,
    /// Frozen instances for --full.
    #[arg(long, default_value_t = 200, value_name = "N")]
    instances: usize,
    /// Keep every CPU awake during P4 with idle-priority busy loops: on a VM, waking an idle
    /// vCPU costs more than the sub-millisecond work P4 measures.
    #[arg(long)]
    awake: bool,
    /// Requests per second per side for P4's fixed-rate run.
    #[arg(long, default_value_t = 1000.0, value_name = "R")]
    rate: f64,
    /// One more argument for every `wharf serve` the run starts, e.g.
    /// `--serve-arg=--worker-threads=2` (repeatable): to compare configurations.
    #[arg(long = "serve-arg", value_name = "ARG", allow_hyphen_values = true)]
    serve_args: Vec<String>,
    /// Where the generated images and npm's packages are kept between runs.
    #[arg(long, default_value = "target/bench-cache", value_name = "DIR")]
    cache_dir: PathBuf,
}

static START: OnceLock<Instant> = OnceLock::new();

/// Prints a progress line to stderr, with the time since the start.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {
        $crate::progress_line(format_args!($($arg)*))
    };
}

pub fn progress_line(args: std::fmt::Arguments<'_>) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[{t:6.1}s] {args}");
}

fn main() -> ExitCode {
    START.get_or_init(Instant::now);
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wharf-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let (mut int, mut term) = match (
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            _ => return Err(anyhow::anyhow!("cannot handle signals")),
        };
        // When a signal wins, the benchmark's future is dropped here, and with it every daemon,
        // registry, baseline container and temporary directory it holds (their Drop cleans up).
        tokio::select! {
            r = run(&args) => r,
            _ = int.recv() => {
                progress!("interrupted: cleaning up");
                Err(anyhow::anyhow!("interrupted"))
            }
            _ = term.recv() => {
                progress!("terminated: cleaning up");
                Err(anyhow::anyhow!("terminated"))
            }
        }
    });
    drop(rt);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wharf-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "wharf-bench needs root (it runs wharf serve and OCI runtimes); use scripts/bench.sh"
        );
    }
    let only: BTreeSet<String> = args
        .only
        .iter()
        .map(|s| s.trim().to_ascii_uppercase())
        .collect();
    let which = |id: &str| only.is_empty() || only.contains(id);
    let against = match &args.against {
        Some(p) => Some(
            serde_json::from_slice::<Run>(
                &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("{} is not a wharf-bench JSON file", p.display()))?,
        ),
        None => None,
    };
    let plan = Plan::new(args.samples, args.rate, args.instances, args.awake);
    let mut bins = Binaries::find()?;
    bins.serve_args = args.serve_args.clone();
    std::fs::create_dir_all(&args.cache_dir)?;
    let cache = args.cache_dir.canonicalize()?;
    progress!("wharf {}, cache {}", bins.wharf.display(), cache.display());

    let cold_figures = which("P1") || which("P3");
    let warm_figures = which("P4") || which("P5") || which("P6");
    let thaw_figures = which("P7");
    let pull_figures = which("P8") || which("P9");
    let images = Images::set_up(
        &bins,
        &cache,
        cold_figures || warm_figures || thaw_figures || args.full,
        which("P1"),
        pull_figures,
    )
    .await?;

    let mut figures: Vec<Figure> = Vec::new();
    let mut host = host_info();
    if cold_figures {
        let testfn = images.testfn.as_ref().expect("pushed");
        let daemon = Daemon::start(&bins, 0, "auto")?;
        progress!("cold daemon (--idle-timeout 0): {}", daemon.runtime.note);
        let baseline = cold::baseline_for(&daemon)?;
        if which("P1") {
            figures.extend(
                cold::p1(
                    &bins,
                    &daemon,
                    &baseline,
                    testfn,
                    images.node.as_ref(),
                    &plan,
                )
                .await,
            );
        }
        if which("P3") {
            // The runtime's burst is measured to the last answer, before its containers are
            // deleted; so is Wharf's: its instances stop a few seconds after the burst, not
            // in the middle of it (as --idle-timeout 0 would have them do).
            drop(daemon);
            let burst = Daemon::start(&bins, cold::P3_IDLE_TIMEOUT_S, "auto")?;
            figures.extend(cold::p3(&burst, &baseline, testfn, &plan).await);
        }
    }
    if warm_figures {
        let testfn = images.testfn.as_ref().expect("pushed");
        let daemon = Daemon::start(&bins, 3600, "auto")?;
        figures.extend(warm::p4_p5_p6(&daemon, testfn, &plan, &which).await);
    }
    if thaw_figures {
        let testfn = images.testfn.as_ref().expect("pushed");
        figures.extend(thaw::p7(&bins, testfn, &plan).await);
    }
    if pull_figures {
        let (image, gz, zst) = images.big.as_ref().expect("pushed");
        figures.extend(
            pull::p8_p9(
                &bins,
                &images.registry.host(),
                image,
                [(gz.as_str(), Variant::Gzip), (zst.as_str(), Variant::Zstd)],
                &plan,
                &which,
            )
            .await,
        );
    }
    if args.full && (which("P10") || which("P11") || which("P12")) {
        let testfn = images.testfn.as_ref().expect("pushed");
        figures.extend(idle::idle(&bins, testfn, &plan).await);
    }
    figures.extend(idle::not_available().into_iter().filter(|f| which(&f.id)));
    // In the order of PERFORMANCE.md (stable: a figure's lines keep their order).
    figures.sort_by_key(|f| {
        f.id.trim_start_matches('P')
            .parse::<u32>()
            .unwrap_or(u32::MAX)
    });

    host.runtime = setup::AUTO_RUNTIME.get().cloned().unwrap_or_default();
    let elapsed = START.get_or_init(Instant::now).elapsed();
    let run = Run {
        format: report::FORMAT,
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        host,
        args: std::env::args().skip(1).collect(),
        duration_s: elapsed.as_secs_f64(),
        figures,
    };
    println!(
        "wharf-bench {}  {} CPUs, {} MiB, kernel {}  runtime: {}  took {:.0} s",
        run.date,
        run.host.cpus,
        run.host.memory_mib,
        run.host.kernel,
        run.host.runtime,
        run.duration_s
    );
    if let Some(a) = &against {
        println!("compared with the run of {}", a.date);
    }
    println!();
    print!("{}", report::table(&run.figures, against.as_ref()));
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&run)?)
            .with_context(|| format!("writing {}", out.display()))?;
        progress!("wrote {}", out.display());
    }
    let failed = run
        .figures
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count();
    let errors = run
        .figures
        .iter()
        .filter(|f| f.verdict == Verdict::Error)
        .count();
    progress!("done: {failed} FAIL, {errors} ERROR");
    Ok(())
}

fn host_info() -> HostInfo {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    HostInfo {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel,
        memory_mib,
        runtime: String::new(),
    }
}
