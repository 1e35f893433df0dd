//! The figures of PERFORMANCE.md, one module per kind of measurement. Each returns its lines;
//! a measurement that fails becomes an ERROR line and the others go on.

pub mod cold;
pub mod idle;
pub mod pull;
pub mod thaw;
pub mod warm;

use std::time::Duration;

/// How many samples each figure takes; scaled from `--samples`.
#[derive(Clone, Debug)]
pub struct Plan {
    /// P1, test function: cold starts per side.
    pub p1_samples: usize,
    /// P1, Node/Express: cold starts per side.
    pub p1_node_samples: usize,
    /// P1, test function on runc: cold starts per side.
    pub p1_runc_samples: usize,
    /// P3: instances per burst, and bursts per side.
    pub p3_burst: usize,
    pub p3_rounds: usize,
    /// P4: closed-loop requests per side, and fixed-rate requests per side at this rate.
    pub p4_closed: usize,
    pub p4_fixed: usize,
    pub p4_rate: f64,
    /// P5: instances and connections; rounds per side and their length.
    pub p5_instances: usize,
    pub p5_rounds: usize,
    pub p5_round: Duration,
    /// P7: thawed calls, each beside a warm one.
    pub p7_samples: usize,
    /// P8/P9: deploys (and baseline unpacks) per side and compression.
    pub pull_samples: usize,
    /// `--full`: idle instances.
    pub idle_instances: usize,
    /// `--awake`: keep the CPUs out of idle during P4.
    pub awake: bool,
}

impl Plan {
    pub fn new(samples: usize, rate: f64, instances: usize, awake: bool) -> Plan {
        let n = samples.max(1);
        Plan {
            p1_samples: n,
            p1_node_samples: (n / 5).max(3),
            p1_runc_samples: (n / 4).max(3),
            p3_burst: 40,
            p3_rounds: (n / 33).max(1),
            p4_closed: n * 200,
            p4_fixed: n * 50,
            p4_rate: rate,
            p5_instances: 4,
            p5_rounds: 3,
            p5_round: Duration::from_secs_f64((n as f64 / 50.0).clamp(0.5, 10.0)),
            p7_samples: (n * 2).max(20),
            pull_samples: (n / 33).max(2),
            idle_instances: instances,
            awake,
        }
    }
}

/// Waits until `cond` holds, checking every millisecond, for at most `patience`.
pub async fn wait_until(
    what: &str,
    patience: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + patience;
    while !cond() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{what}: not within {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// utime + stime of a process, in seconds (all its threads, living and dead).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are fixed.
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("odd /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")": state is field 3 (index 0); utime is field 14, stime 15.
    let utime: f64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0.0);
    Ok((utime + stime) / clock_ticks())
}

/// CPU time of this process (every thread), in seconds.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass, which is valid for its whole size.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

pub fn clock_ticks() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// `VmRSS` of a process, in bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    meminfo_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status"))?,
        "VmRSS:",
    )
}

fn meminfo_field(text: &str, name: &str) -> anyhow::Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow::anyhow!("no {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let meminfo = "MemTotal:       24000000 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(
            meminfo_field(meminfo, "MemAvailable:").unwrap(),
            23_000_000 * 1024
        );
        assert!(meminfo_field(meminfo, "VmRSS:").is_err());
        // Our own stat parses, and time only goes forward.
        let a = cpu_seconds(std::process::id()).unwrap();
        let b = cpu_seconds(std::process::id()).unwrap();
        assert!(b >= a);
        assert!(rss(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn plans_scale_with_samples() {
        let p = Plan::new(100, 1000.0, 200, false);
        assert_eq!((p.p1_samples, p.p1_node_samples, p.p3_rounds), (100, 20, 3));
        assert_eq!(p.p4_closed, 20_000);
        assert_eq!(p.pull_samples, 3);
        let small = Plan::new(5, 1000.0, 200, false);
        assert_eq!(
            (small.p1_node_samples, small.p3_rounds, small.pull_samples),
            (3, 1, 2)
        );
        assert_eq!(small.p5_round, Duration::from_millis(500));
    }
}
