//! Load: closed loop, fixed rate (open loop) and saturation, with the same client for Wharf and
//! for direct calls.
//!
//! - **Closed loop**: one keep-alive connection per side, requests back to back, Wharf's and
//!   direct requests alternating one by one (A B A B …), so that both see the same machine.
//! - **Fixed rate**: a schedule of send times at a fixed rate, slots alternating between the
//!   sides. A microsecond timer (timerfd) wakes the client at each slot's *intended* time and
//!   the request goes out; latency is measured from the intended time, so a request that had to
//!   wait — for a connection, for the client, for the machine — counts its wait (no
//!   coordinated omission). Each side has a few pre-opened connections; more are opened
//!   if all are busy, and counted.
//! - **Saturation**: `k` connections per side, each sending back to back for a fixed time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::Context;
use bytes::Bytes;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::http::{Answer, Conn, Prepared, Target};
use crate::stats::Samples;

/// What one side of a latency run saw.
#[derive(Debug, Default)]
pub struct Side {
    pub latency: Samples,
    pub errors: usize,
    /// Answers through Wharf that came from a cold start.
    pub cold_starts: usize,
    /// Answers through Wharf from an instance other than the direct side's.
    pub other_instance: usize,
    /// Connections opened during the run because all were busy.
    pub extra_connections: usize,
    /// What the first failed request said.
    pub first_error: Option<String>,
    /// The instances that answered through Wharf.
    pub instances: std::collections::BTreeSet<String>,
}

impl Side {
    fn failed(&mut self, why: String) {
        self.errors += 1;
        self.first_error.get_or_insert(why);
    }

    fn saw(&mut self, answer: &Answer, instance: Option<&str>) {
        if answer.cold() {
            self.cold_starts += 1;
        }
        if let Some(got) = answer.instance() {
            if !self.instances.contains(got) {
                self.instances.insert(got.to_owned());
            }
            if instance.is_some_and(|want| want != got) {
                self.other_instance += 1;
            }
        }
    }
}

/// The two sides of a latency run: `[wharf, direct]`.
pub type Pair = [Side; 2];

/// Closed loop, see the module docs. `instance`: the instance direct calls go to.
pub async fn closed_loop(
    targets: [&Target; 2],
    body: Bytes,
    n: usize,
    warmup: usize,
    instance: Option<&str>,
) -> anyhow::Result<Pair> {
    let mut conns = [targets[0].connect().await?, targets[1].connect().await?];
    let prepared = [targets[0].prepare(body.clone()), targets[1].prepare(body)];
    let mut sides: Pair = Default::default();
    for i in 0..warmup + n {
        for s in 0..2 {
            let (took, answer) = conns[s]
                .timed(&prepared[s])
                .await
                .with_context(|| format!("{} request {i}", targets[s].label()))?;
            if i >= warmup {
                sides[s].latency.push(took);
                sides[s].saw(&answer, instance);
            }
        }
    }
    Ok(sides)
}

type ConnPool = Arc<Mutex<Vec<Conn>>>;

/// Fixed rate, see the module docs: `per_side` requests each at `rate` requests/s each.
pub async fn fixed_rate(
    targets: [&Target; 2],
    body: Bytes,
    per_side: usize,
    rate: f64,
    instance: Option<&str>,
) -> anyhow::Result<Pair> {
    const CONNECTIONS: usize = 4;
    let mut pools: Vec<ConnPool> = Vec::new();
    for t in targets {
        let mut conns = Vec::new();
        for _ in 0..CONNECTIONS {
            conns.push(t.connect().await?);
        }
        pools.push(Arc::new(Mutex::new(conns)));
    }
    let prepared = [targets[0].prepare(body.clone()), targets[1].prepare(body)];
    let sides: Arc<Mutex<Pair>> = Arc::default();
    let instance: Option<Arc<str>> = instance.map(Arc::from);

    // Slots alternate between the sides: the schedule runs at twice the per-side rate.
    let interval = Duration::from_secs_f64(1.0 / (2.0 * rate));
    let timer = PreciseTimer::new()?;
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now() + Duration::from_millis(10);
    for i in 0..2 * per_side {
        let intended = t0 + interval * i as u32;
        timer.sleep_until(intended).await?;
        let s = i % 2;
        let (pool, target, prepared, sides, instance) = (
            pools[s].clone(),
            targets[s].clone(),
            prepared[s].clone(),
            sides.clone(),
            instance.clone(),
        );
        tasks.spawn(async move {
            let pooled = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => {
                    let c = target.connect().await;
                    let mut sides = sides.lock().unwrap_or_else(|e| e.into_inner());
                    sides[s].extra_connections += 1;
                    match c {
                        Ok(c) => c,
                        Err(e) => {
                            sides[s].failed(format!("{e:#}"));
                            return;
                        }
                    }
                }
            };
            let result = conn.call(&prepared).await;
            let took = intended.elapsed();
            let mut sides = sides.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(a) if a.status == 200 => {
                    sides[s].latency.push(took);
                    sides[s].saw(&a, instance.as_deref());
                    pool.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                }
                Ok(a) => sides[s].failed(format!(
                    "answered {}: {}",
                    a.status,
                    String::from_utf8_lossy(&a.body[..a.body.len().min(200)])
                )),
                Err(e) => sides[s].failed(format!("{e:#}")),
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done?;
    }
    let mut sides = sides.lock().unwrap_or_else(|e| e.into_inner());
    Ok(std::mem::take(&mut *sides))
}

/// A one-shot timer with microsecond resolution on the runtime's own thread: tokio's timers
/// have millisecond granularity, and a timer on another thread would add a thread wake-up to
/// every request of the fixed-rate schedule.
struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    fn new() -> std::io::Result<PreciseTimer> {
        // SAFETY: timerfd_create has no memory arguments; the result is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open, the same descriptor, for
        // its whole lifetime.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(PreciseTimer { fd })
    }

    /// Returns at `deadline` (at once if it has passed).
    async fn sleep_until(&self, deadline: Instant) -> std::io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            },
        };
        let fd = self.fd.get_ref().as_raw_fd();
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for (NULL).
        if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer.
            let n = unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(err);
            }
            guard.clear_ready();
        }
    }
}

/// What a saturation run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Throughput {
    pub requests: u64,
    pub errors: u64,
    pub cold_starts: u64,
    pub elapsed: Duration,
}

impl Throughput {
    pub fn per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// Every connection sends `prepared` back to back for `duration`; the connections are handed
/// back for the next round.
pub async fn saturate(
    conns: Vec<Conn>,
    prepared: &Prepared,
    duration: Duration,
) -> (Throughput, Vec<Conn>) {
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut set = tokio::task::JoinSet::new();
    for mut conn in conns {
        let p = prepared.clone();
        set.spawn(async move {
            let mut t = Throughput::default();
            while Instant::now() < deadline {
                match conn.call(&p).await {
                    Ok(a) if a.status == 200 => {
                        t.requests += 1;
                        if a.cold() {
                            t.cold_starts += 1;
                        }
                    }
                    _ => {
                        t.errors += 1;
                        // A broken connection stays broken; stop this one.
                        if conn.is_closed() {
                            break;
                        }
                    }
                }
            }
            (t, conn)
        });
    }
    let mut total = Throughput::default();
    let mut back = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok((t, conn)) = done {
            total.requests += t.requests;
            total.errors += t.errors;
            total.cold_starts += t.cold_starts;
            back.push(conn);
        }
    }
    total.elapsed = t0.elapsed();
    (total, back)
}

/// Busy loops at `SCHED_IDLE` priority on every CPU, until dropped: they keep the CPUs out of
/// their idle states without taking time from anything else (a waking task preempts them at
/// once). On a VM an idle vCPU halts, and waking it costs a trip through the hypervisor, which
/// at sub-millisecond latencies outweighs the work measured (`--awake`; see
/// docs/PERFORMANCE.md).
pub struct Awake {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Awake {
    pub fn start() -> std::io::Result<Awake> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut threads = Vec::new();
        for _ in 0..cpus {
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("bench-awake".into())
                    .spawn(move || {
                        let param = libc::sched_param { sched_priority: 0 };
                        // SAFETY: `param` is a valid sched_param; 0 is the calling thread.
                        unsafe {
                            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
                        }
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    })?,
            );
        }
        Ok(Awake { stop, threads })
    }
}

impl Drop for Awake {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
