//! Instance events of real instances, with crun and with runc: their order over a whole life,
//! and an OOM kill of a child reported while the instance goes on running.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Env, Recorder, wait_for_comm};
use wharf_sandbox::{ExitInfo, InstanceEvent, RuntimePreference, Stream};

both_runtimes!(events_of_a_short_life, oom_kill_of_a_child_while_running);

/// Started → Frozen → Thawed → Exited → Removed, nothing else, each with its numbers.
async fn events_of_a_short_life(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let events = Arc::new(Recorder::default());
    let mut spec = env.spec(&["sh", "-c", "sleep 0.5; exit 3"]);
    spec.events = Some(events.clone());
    let id = spec.id.clone();
    let inst = env.sandbox.start(spec).await.unwrap();
    wait_for_comm(inst.pid(), "sh").await;
    let frozen_in = inst.freeze().await.unwrap();
    let thawed_in = inst.thaw().unwrap();
    assert_eq!(inst.exited().await, ExitInfo::Exited(3));
    let report = inst.stop(Duration::ZERO).await;
    assert!(report.cleanup_errors.is_empty(), "{report:?}");
    // A second stop reports nothing new.
    inst.stop(Duration::ZERO).await;

    let seen = events.of(&id);
    assert_eq!(
        seen,
        [
            InstanceEvent::Started {
                pid: inst.pid(),
                timings: inst.timings()
            },
            InstanceEvent::Frozen { took: frozen_in },
            InstanceEvent::Thawed { took: thawed_in },
            InstanceEvent::Exited(ExitInfo::Exited(3)),
            InstanceEvent::Removed {
                memory_peak_bytes: report.memory_peak_bytes,
                oom_killed: false
            },
        ]
    );
    assert!(
        report.memory_peak_bytes.is_some_and(|p| p > 0),
        "{report:?}"
    );
    // Only this instance's events, all of them under its id.
    assert_eq!(events.0.lock().unwrap().len(), seen.len());
    env.finish().await;
}

/// A child that fills memory is OOM-killed while the init lives on: `OomKill` comes while
/// the instance runs (the kernel notifies the watcher; before, this was only seen at the
/// stop), then the stop's `Exited` and `Removed { oom_killed: true }`.
async fn oom_kill_of_a_child_while_running(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let events = Arc::new(Recorder::default());
    let mut spec = env.spec(&[
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null & wait; echo child-done; sleep 30",
    ]);
    spec.memory_limit_bytes = 24 << 20;
    spec.events = Some(events.clone());
    let id = spec.id.clone();
    let t = Instant::now();
    let inst = env.sandbox.start(spec).await.unwrap();

    let kill = events
        .wait_for(&id, Duration::from_secs(20), |e| {
            matches!(e, InstanceEvent::OomKill { .. })
        })
        .await;
    let reported_at = t.elapsed();
    assert_eq!(kill, InstanceEvent::OomKill { kills: 1 });
    assert_eq!(inst.exit_status(), None, "the init must still run");
    assert!(inst.oom_killed());
    // The init saw its child die and goes on.
    let end = Instant::now() + Duration::from_secs(10);
    while !env
        .lines
        .of(Stream::Stdout)
        .contains(&"child-done".to_string())
    {
        assert!(Instant::now() < end, "{:?}", env.lines.of(Stream::Stdout));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(inst.exit_status(), None);
    println!("{runtime:?}: OomKill reported {reported_at:?} after the start began");

    let report = inst.stop(Duration::from_millis(100)).await;
    assert!(report.oom_killed, "{report:?}");
    assert!(report.cleanup_errors.is_empty(), "{report:?}");
    let seen = events.of(&id);
    assert!(
        matches!(
            seen.as_slice(),
            [
                InstanceEvent::Started { .. },
                InstanceEvent::OomKill { kills: 1 },
                InstanceEvent::Exited(_),
                InstanceEvent::Removed {
                    oom_killed: true,
                    ..
                },
            ]
        ),
        "{seen:?}"
    );
    env.finish().await;
}
