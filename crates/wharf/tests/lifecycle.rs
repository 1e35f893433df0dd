//! An instance's life through the real daemon: frozen when idle (after the contract's
//! pre-freeze hook) and really stopped — its cgroup says FROZEN and a busy thread makes no
//! progress —, thawed by the next request; the pre-stop hook before SIGTERM; a hook answering
//! 500 restarts the instance; an OOM kill of a child process is told in the function's log while
//! the instance serves on; and a daemon killed with a frozen instance leaves nothing after its
//! restart.

use std::time::{Duration, Instant};

use serde_json::json;
use wharf_test_support::assert_eventually;
use wharf_test_support::daemon::WharfOptions;
use wharf_test_support::env::{TestEnv, is_frozen, skip_unless_root};

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

fn freezing(after: &str) -> WharfOptions {
    WharfOptions {
        extra: vec!["--freeze-after".into(), after.into()],
        ..WharfOptions::default()
    }
}

/// CPU time (user + system, clock ticks) of the processes in an instance's cgroup.
fn cpu_ticks(env: &TestEnv, instance: &str) -> u64 {
    let procs = ["freezer", "pids", "memory", ""]
        .iter()
        .find_map(|h| {
            std::fs::read_to_string(env.cgroup_dir(h, instance).join("cgroup.procs")).ok()
        })
        .expect("the instance's cgroup.procs");
    procs
        .lines()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            let after_comm = stat.rsplit_once(") ").map(|(_, t)| t).unwrap_or_default();
            let fields: Vec<&str> = after_comm.split(' ').collect();
            // utime and stime are fields 14 and 15 of stat; 12 and 13 after "pid (comm) ".
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_are_frozen_and_thawed_by_the_next_request() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, freezing("100ms")).await;
    env.deploy(
        "ice",
        json!({
            "image": env.image,
            "pre_freeze": {"timeout_s": 2},
            "pre_stop": {"timeout_s": 2},
        }),
    )
    .await;
    let spin = env.invoke("ice", json!({"cmd": "spin"})).await;
    assert_eq!(spin.status, 200, "{}", spin.text());
    let instance = spin.header("x-wharf-instance-id").unwrap();

    assert_eventually!(
        is_frozen(env.freezer_state(&instance).as_deref()),
        "instance {instance} frozen: {:?}",
        env.freezer_state(&instance)
    );
    // Frozen: the spinning thread gets no CPU at all.
    let before = cpu_ticks(&env, &instance);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(cpu_ticks(&env, &instance), before, "a frozen instance ran");

    // The next request thaws it: same instance, a thaw on record, the spinner ran again.
    let t = Instant::now();
    let state = env.invoke("ice", json!({"cmd": "state"})).await;
    println!("thawed call took {:?}", t.elapsed());
    assert_eq!(state.status, 200, "{}", state.text());
    assert_eq!(
        state.header("x-wharf-instance-id").as_deref(),
        Some(&*instance)
    );
    assert_eq!(state.header("x-wharf-cold-start").as_deref(), Some("false"));
    let thaw_ms: f64 = state
        .header("x-wharf-thaw-duration-ms")
        .expect("a thaw was reported")
        .parse()
        .unwrap();
    assert!(thaw_ms < 1000.0, "{thaw_ms}");
    let s = state.json();
    assert_eq!(s["pre_freeze_calls"], 1, "{s}");
    assert_eq!(s["pre_stop_calls"], 0, "{s}");
    let spins = s["spins"].as_u64().unwrap();
    assert!(spins > 0, "{s}");

    // A warm call right after another finds it thawed.
    let warm = env.invoke("ice", json!({"name": "again"})).await;
    assert!(
        warm.header("x-wharf-thaw-duration-ms").is_none(),
        "{:?}",
        warm.headers
    );

    // Frozen again, then deleted: a frozen instance stops as quickly as a thawed one (it is
    // thawed for its pre-stop hook and its SIGTERM; testfn exits on SIGTERM).
    assert_eventually!(is_frozen(env.freezer_state(&instance).as_deref()));
    let t = Instant::now();
    let deleted = env.wharf.api("DELETE", "/v1/functions/ice", None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(env.freezer_state(&instance).is_none(), "its cgroup is gone");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_stop_hook_runs_before_sigterm() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(
        WHARF,
        WharfOptions {
            idle_timeout_s: 1,
            extra: vec!["--freeze-after".into(), "100ms".into()],
            ..WharfOptions::default()
        },
    )
    .await;
    env.deploy(
        "hooks",
        json!({
            "image": env.image,
            "pre_freeze": {"timeout_s": 2},
            "pre_stop": {"timeout_s": 2},
        }),
    )
    .await;
    let first = env.invoke("hooks", json!({"name": "x"})).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let instance = first.header("x-wharf-instance-id").unwrap();
    // Idle past --idle-timeout: it is stopped (frozen before that).
    assert_eventually!(
        env.log_lines("hooks")
            .await_lines()
            .iter()
            .any(|l| l.contains("instance stopped after")),
        "the idle instance was stopped"
    );
    let lines = env.log_lines("hooks").await;
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {lines:#?}"))
    };
    assert!(at("testfn: pre-freeze called") < at("testfn: pre-stop called"));
    assert!(at("testfn: pre-stop called") < at("testfn: SIGTERM, exiting"));
    assert!(env.freezer_state(&instance).is_none(), "its cgroup is gone");
    env.finish();
}

/// `log_lines` is async; `assert_eventually!` wants a plain condition: block on it.
trait AwaitLines {
    fn await_lines(self) -> Vec<String>;
}

impl<F: std::future::Future<Output = Vec<String>>> AwaitLines for F {
    fn await_lines(self) -> Vec<String> {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(self))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_freeze_hook_answering_500_restarts_the_instance() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, freezing("50ms")).await;
    env.deploy(
        "sick",
        json!({
            "image": env.image,
            "env": {"TESTFN_PRE_FREEZE_STATUS": "500"},
            "pre_freeze": {"timeout_s": 2},
        }),
    )
    .await;
    let first = env.invoke("sick", json!({"name": "x"})).await;
    let instance = first.header("x-wharf-instance-id").unwrap();
    assert_eventually!(
        env.log_lines("sick")
            .await_lines()
            .iter()
            .any(|l| l.contains("the pre-freeze hook answered 500")),
        "the restart is logged"
    );
    assert_eventually!(env.freezer_state(&instance).is_none(), "{instance} is gone");
    let next = env.invoke("sick", json!({"name": "y"})).await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.header("x-wharf-cold-start").as_deref(), Some("true"));
    assert_ne!(
        next.header("x-wharf-instance-id").as_deref(),
        Some(&*instance)
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_of_a_child_is_logged_and_the_instance_serves_on() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    env.deploy(
        "hog",
        json!({"image": env.image, "memory_mb": 64, "freeze_idle": false}),
    )
    .await;
    let resp = env.invoke("hog", json!({"cmd": "oom-child"})).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let instance = resp.header("x-wharf-instance-id").unwrap();
    let child = resp.json();
    assert!(
        child["child"]
            .as_str()
            .is_some_and(|c| c.contains("signal: 9")),
        "{child}"
    );
    assert_eventually!(
        env.log_lines("hog").await_lines().iter().any(|l| l
            .starts_with("system: the OOM killer ended a process of the instance")
            && l.contains("64 MB")),
        "the OOM kill is in the log"
    );
    let again = env.invoke("hog", json!({"name": "x"})).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        again.header("x-wharf-instance-id").as_deref(),
        Some(&*instance)
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_with_frozen_instances_leaves_nothing_after_a_restart() {
    if skip_unless_root() {
        return;
    }
    for runtime in ["crun", "runc"] {
        let mut env = TestEnv::start(
            WHARF,
            WharfOptions {
                runtime: runtime.into(),
                extra: vec!["--freeze-after".into(), "50ms".into()],
                ..WharfOptions::default()
            },
        )
        .await;
        env.deploy("cold", json!({"image": env.image})).await;
        let first = env.invoke("cold", json!({"name": "x"})).await;
        let instance = first.header("x-wharf-instance-id").unwrap();
        assert_eventually!(is_frozen(env.freezer_state(&instance).as_deref()));
        env.wharf.kill().unwrap();
        assert!(
            !env.wharf.leftovers().is_empty(),
            "{runtime}: a killed daemon leaves its instance"
        );
        env.wharf.restart().unwrap();
        assert_eventually!(
            env.freezer_state(&instance).is_none(),
            "{runtime}: the frozen orphan is cleaned up at start"
        );
        println!("{runtime}: cleaned up after the crash");
        let again = env.invoke("cold", json!({"name": "y"})).await;
        assert_eq!(again.status, 200, "{runtime}: {}", again.text());
        env.finish();
    }
}
