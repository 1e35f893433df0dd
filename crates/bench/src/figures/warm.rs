//! P4 (warm added latency), P5 (saturation throughput) and P6 (Wharf's CPU per request), on a
//! daemon with a long idle timeout. "Direct" is the same request (`POST /invoke`, the same 1 KiB
//! body) sent to the same instance over a connection created inside its network namespace; the
//! load generator is the same code for both sides (see [`crate::load`]).

use anyhow::{Context, ensure};
use bytes::Bytes;

use crate::figures::{Plan, cpu_seconds, own_cpu_seconds};
use crate::http::Target;
use crate::load::{self, Throughput};
use crate::netns::{Netns, instances};
use crate::progress;
use crate::relay::Relay;
use crate::report::{Bound, Figure, Unit};
use crate::setup::{Daemon, Pushed};
use crate::stats::{median, us};

const FUNCTION: &str = "warm";
const PORT: u16 = 9000;
/// Warm instances for the fixed-rate run: two requests through Wharf overlap now and then, and
/// one that finds no idle instance starts a new one (a cold start in a warm figure).
const SPARE_INSTANCES: usize = 8;

/// 1 KiB that is not JSON: the test function echoes it.
fn body() -> Bytes {
    let line = b"wharf-bench warm request payload, not JSON, echoed by the test function. ";
    let mut b: Vec<u8> = line.iter().copied().cycle().take(1023).collect();
    b.push(b'\n');
    Bytes::from(b)
}

/// Deploys the warm function; returns Wharf's target for it.
/// Not frozen when idle: these figures are about warm instances (P7 measures thaws).
async fn deploy(daemon: &Daemon, testfn: &Pushed) -> anyhow::Result<Target> {
    daemon
        .deploy_with(
            FUNCTION,
            serde_json::json!({"image": testfn.reference, "memory_mb": 128, "freeze_idle": false}),
        )
        .await?;
    Ok(daemon.target(FUNCTION))
}

/// One call through Wharf, and a direct target for the instance that answered it: Wharf takes
/// the most recently used idle instance first, so calls that do not overlap should go to it
/// (the notes say how many did not).
async fn direct_to_next(daemon: &Daemon, wharf: &Target) -> anyhow::Result<(Target, String)> {
    let mut conn = wharf.connect().await?;
    let (_, answer) = conn.timed(&wharf.prepare(body())).await?;
    let id = answer
        .instance()
        .context("no x-wharf-instance-id")?
        .to_owned();
    let netns = Netns::of_instance(daemon.cgroup_parent(), &id)?;
    Ok((Target::Direct { netns, port: PORT }, id))
}

/// P4 lines for one mode: p50, p99 (targets) and p999 (informational).
fn p4_lines(mode: &str, key: &str, sides: load::Pair, base_is: &str) -> Vec<Figure> {
    let [mut w, mut d] = sides;
    let mut notes = Vec::new();
    if w.cold_starts > 0 {
        notes.push(format!("{} cold starts through Wharf", w.cold_starts));
    }
    if w.other_instance > 0 {
        notes.push(format!(
            "Wharf's answers came from {} instances, {} of them not from the one direct calls \
             went to",
            w.instances.len(),
            w.other_instance
        ));
    }
    let extra = w.extra_connections + d.extra_connections;
    if extra > 0 {
        notes.push(format!("{extra} extra connections opened"));
    }
    let errors = w.errors + d.errors;
    for (side, name) in [(&w, "wharf"), (&d, "direct")] {
        if let Some(e) = &side.first_error {
            notes.push(format!("first {name} error: {e}"));
        }
    }
    let lines: [(&str, f64, Option<f64>); 3] = [
        ("p50", 50.0, Some(50.0)),
        ("p99", 99.0, Some(250.0)),
        ("p999", 99.9, None),
    ];
    lines
        .iter()
        .map(|&(name, p, limit)| {
            let mut f = Figure::new(
                &format!("P4.{key}.{name}"),
                "P4",
                &format!("warm latency {name}, {mode}"),
                Unit::Us,
            )
            .wharf(w.latency.percentile(p).map(us).unwrap_or(f64::NAN))
            .baseline(base_is, d.latency.percentile(p).map(us))
            .added()
            .samples(w.latency.len(), Some(d.latency.len()));
            if let Some(l) = limit {
                f = f.bounds(&[Bound::AddedAtMost(l)]);
            }
            if name == "p50" && !notes.is_empty() {
                f = f.note(notes.join("; "));
            }
            f.judged(errors)
        })
        .collect()
}

const DIRECT_IS: &str = "direct: same request to the same instance inside its netns";

/// P4, closed loop: one connection per side; Wharf has one instance, which direct calls use.
async fn p4_closed(daemon: &Daemon, wharf: &Target, plan: &Plan) -> anyhow::Result<Vec<Figure>> {
    progress!(
        "P4: closed loop, {} requests per side, alternating",
        plan.p4_closed
    );
    let (direct, id) = direct_to_next(daemon, wharf).await?;
    let sides = load::closed_loop([wharf, &direct], body(), plan.p4_closed, 500, Some(&id)).await?;
    let mut out = p4_lines("closed loop, 1 KiB, keep-alive", "closed", sides, DIRECT_IS);
    // The floor: what the least of proxies adds on this machine.
    let Target::Direct { netns, .. } = &direct else {
        unreachable!("direct_to_next gives a direct target")
    };
    let relay = Relay::start(vec![netns.clone()], PORT)?;
    let via_relay = Target::Relay {
        addr: relay.addr(),
        port: PORT,
    };
    progress!("P4: closed loop through the reference relay, alternating with direct");
    let [mut r, mut d] =
        load::closed_loop([&via_relay, &direct], body(), plan.p4_closed, 500, None).await?;
    for (name, p) in [("p50", 50.0), ("p99", 99.0)] {
        out.push(
            Figure::new(
                &format!("P4.closed.relay.{name}"),
                "P4",
                &format!("reference relay {name}, closed loop (floor, not Wharf)"),
                Unit::Us,
            )
            .wharf(r.latency.percentile(p).map(us).unwrap_or(f64::NAN))
            .baseline(RELAY_IS, d.latency.percentile(p).map(us))
            .added()
            .samples(r.latency.len(), Some(d.latency.len()))
            .judged(r.errors + d.errors),
        );
    }
    Ok(out)
}

const RELAY_IS: &str = "the reference relay (crates/bench/src/relay.rs: accept, connect inside the \
     instance's netns, copy bytes; one thread) against direct calls: the least a proxy adds here; \
     its value stands in the Wharf column";

/// P4, fixed rate, with spare warm instances (see [`SPARE_INSTANCES`]); direct calls go to the
/// instance Wharf uses when calls do not overlap.
async fn p4_fixed(daemon: &Daemon, wharf: &Target, plan: &Plan) -> anyhow::Result<Vec<Figure>> {
    warm_instances(wharf, SPARE_INSTANCES).await?;
    let (direct, id) = direct_to_next(daemon, wharf).await?;
    progress!(
        "P4: fixed rate, {} requests per side at {}/s each, slots alternating",
        plan.p4_fixed,
        plan.p4_rate
    );
    let sides = load::fixed_rate(
        [wharf, &direct],
        body(),
        plan.p4_fixed,
        plan.p4_rate,
        Some(&id),
    )
    .await?;
    Ok(p4_lines(
        &format!("fixed rate {}/s, 1 KiB", plan.p4_rate),
        "fixed",
        sides,
        &format!("{DIRECT_IS}; latency from the intended send time"),
    ))
}

/// P4, P5 and P6 on `daemon` (long idle timeout).
pub async fn p4_p5_p6(
    daemon: &Daemon,
    testfn: &Pushed,
    plan: &Plan,
    which: &dyn Fn(&str) -> bool,
) -> Vec<Figure> {
    let mut out = Vec::new();
    let wharf = match deploy(daemon, testfn).await {
        Ok(x) => x,
        Err(e) => return vec![Figure::error("P4.closed.p50", "P4", "warm latency", &e)],
    };
    if which("P4") {
        let awake = match plan.awake.then(load::Awake::start).transpose() {
            Ok(a) => a,
            Err(e) => {
                return vec![Figure::error(
                    "P4.closed.p50",
                    "P4",
                    "warm latency",
                    &e.into(),
                )];
            }
        };
        let before = out.len();
        match p4_closed(daemon, &wharf, plan).await {
            Ok(f) => out.extend(f),
            Err(e) => out.push(Figure::error(
                "P4.closed.p50",
                "P4",
                "warm latency, closed loop",
                &e,
            )),
        }
        match p4_fixed(daemon, &wharf, plan).await {
            Ok(f) => out.extend(f),
            Err(e) => out.push(Figure::error(
                "P4.fixed.p50",
                "P4",
                "warm latency, fixed rate",
                &e,
            )),
        }
        if awake.is_some() {
            for f in out[before..].iter_mut().filter(|f| f.key.ends_with(".p50")) {
                f.note = Some(match f.note.take() {
                    Some(n) => format!("CPUs kept awake (--awake); {n}"),
                    None => "CPUs kept awake (--awake)".into(),
                });
            }
        }
        drop(awake);
    }
    if which("P5") || which("P6") {
        match p5_p6(daemon, &wharf, plan).await {
            Ok(f) => out.extend(f.into_iter().filter(|f| which(&f.id))),
            Err(e) => out.push(Figure::error("P5.throughput", "P5", "warm throughput", &e)),
        }
    }
    out
}

/// At least `k` instances: `k` concurrent calls that each hold an instance for a while.
async fn warm_instances(wharf: &Target, k: usize) -> anyhow::Result<()> {
    progress!("warming {k} instances");
    let slow = wharf.prepare(&br#"{"cmd":"sleep","ms":300}"#[..]);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..k {
        let (t, p) = (wharf.clone(), slow.clone());
        set.spawn(async move { t.connect().await?.timed(&p).await });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

async fn p5_p6(daemon: &Daemon, wharf: &Target, plan: &Plan) -> anyhow::Result<Vec<Figure>> {
    let k = plan.p5_instances;
    warm_instances(wharf, k).await?;
    let ids = instances(daemon.cgroup_parent());
    ensure!(
        ids.len() >= k,
        "only {} instances after warming {k}",
        ids.len()
    );
    let mut direct_conns = Vec::new();
    let mut direct_prepared = None;
    for id in ids.iter().take(k) {
        let t = Target::Direct {
            netns: Netns::of_instance(daemon.cgroup_parent(), id)?,
            port: PORT,
        };
        direct_conns.push(t.connect().await?);
        direct_prepared.get_or_insert_with(|| t.prepare(body()));
    }
    let direct_prepared = direct_prepared.context("no instance")?;
    let mut wharf_conns = Vec::new();
    for _ in 0..k {
        wharf_conns.push(wharf.connect().await?);
    }
    let wharf_prepared = wharf.prepare(body());
    let mut netnss = Vec::new();
    for id in ids.iter().take(k) {
        netnss.push(Netns::of_instance(daemon.cgroup_parent(), id)?);
    }
    let relay = Relay::start(netnss, PORT)?;
    let via_relay = Target::Relay {
        addr: relay.addr(),
        port: PORT,
    };
    let mut relay_conns = Vec::new();
    for _ in 0..k {
        relay_conns.push(via_relay.connect().await?);
    }
    let relay_prepared = via_relay.prepare(body());

    progress!(
        "P5: saturation, {k} connections, {} rounds of {:?} per side, alternating",
        plan.p5_rounds,
        plan.p5_round
    );
    let pid = daemon.pid();
    let (mut w_rates, mut d_rates, mut r_rates) = (Vec::new(), Vec::new(), Vec::new());
    let (mut w_total, mut d_total) = (Throughput::default(), Throughput::default());
    let mut r_total = Throughput::default();
    let (mut wharf_cpu, mut client_cpu_direct) = (0.0, 0.0);
    for _ in 0..plan.p5_rounds {
        let c0 = cpu_seconds(pid)?;
        let (t, back) = load::saturate(wharf_conns, &wharf_prepared, plan.p5_round).await;
        wharf_cpu += cpu_seconds(pid)? - c0;
        wharf_conns = back;
        w_rates.push(t.per_sec());
        add(&mut w_total, t);

        let own0 = own_cpu_seconds();
        let (t, back) = load::saturate(direct_conns, &direct_prepared, plan.p5_round).await;
        client_cpu_direct += own_cpu_seconds() - own0;
        direct_conns = back;
        d_rates.push(t.per_sec());
        add(&mut d_total, t);

        let (t, back) = load::saturate(relay_conns, &relay_prepared, plan.p5_round).await;
        relay_conns = back;
        r_rates.push(t.per_sec());
        add(&mut r_total, t);
    }
    drop(relay_conns);
    drop(relay);
    let errors = (w_total.errors + d_total.errors) as usize;
    let mut p5 = Figure::new(
        "P5.throughput",
        "P5",
        &format!("warm throughput, {k} instances, saturation"),
        Unit::ReqPerSec,
    )
    .wharf(median(&w_rates).unwrap_or(f64::NAN))
    .baseline(
        &format!("direct: {k} connections, one per instance"),
        median(&d_rates),
    )
    .ratio()
    .bounds(&[Bound::RatioAtLeast(0.5)])
    .samples(w_total.requests as usize, Some(d_total.requests as usize));
    if w_total.cold_starts > 0 {
        p5 = p5.note(format!(
            "{} cold starts through Wharf during the runs",
            w_total.cold_starts
        ));
    }
    let per_request = |cpu: f64, t: &Throughput| cpu / t.requests.max(1) as f64 * 1e6;
    let p6 = Figure::new("P6.cpu", "P6", "Wharf CPU per warm request", Unit::Us)
        .wharf(per_request(wharf_cpu, &w_total))
        .baseline(
            "the client's own CPU per direct request, for scale",
            Some(per_request(client_cpu_direct, &d_total)),
        )
        .bounds(&[Bound::AtMost(25.0)])
        .samples(w_total.requests as usize, Some(d_total.requests as usize))
        .note(format!(
            "utime+stime of wharf serve over the P5 runs ({:.2} s, {} ticks/s)",
            wharf_cpu,
            crate::figures::clock_ticks()
        ))
        .judged(0);
    let relay_line = Figure::new(
        "P5.relay",
        "P5",
        &format!("reference relay throughput, {k} instances (floor, not Wharf)"),
        Unit::ReqPerSec,
    )
    .wharf(median(&r_rates).unwrap_or(f64::NAN))
    .baseline(RELAY_IS, median(&d_rates))
    .ratio()
    .samples(r_total.requests as usize, Some(d_total.requests as usize))
    .judged(r_total.errors as usize);
    Ok(vec![p5.judged(errors), relay_line, p6])
}

fn add(total: &mut Throughput, t: Throughput) {
    total.requests += t.requests;
    total.errors += t.errors;
    total.cold_starts += t.cold_starts;
    total.elapsed += t.elapsed;
}
