//! Stopping an instance and removing every trace of it:
//!
//! 1. Thaw a frozen instance (frozen v1 tasks act on no signal, not even SIGKILL, until
//!    thawed; a stop must not wait out the grace for that), and allow no freeze from here on.
//!    SIGTERM to the init through its pidfd; up to `grace` for it to exit; SIGKILL; wait.
//!    (A pid-namespace init only receives SIGTERM if it installed a handler: many functions
//!    never do, and get the SIGKILL after `grace`.)
//! 2. The OOM watcher ends, after a last look at the counter; memory peak and OOM kills read
//!    from the cgroup — after the exit, so the numbers are final, and *before* the runtime
//!    deletes the cgroup.
//! 3. `runtime delete --force`, then any instance cgroup directory still there; in bridge
//!    mode, the instance's veth (its peer goes with it), address and namespace fd.
//! 4. Unmount the overlay, then the tmpfs; remove the bundle directory.
//! 5. Let the output readers drain, so the last lines reach the sink.
//!
//! Stop keeps going past errors and lists them in the report; a second call returns the
//! first call's report. The first stop ends with the instance's last event, `Removed`.

use std::os::fd::AsFd;
use std::time::Duration;

use rustix::process::Signal;
use tracing::{debug, warn};

use crate::instance_start::{delete_container, remove_instance_cgroups, unmount_and_remove};
use crate::{ExitInfo, Instance, InstanceEvent, StopReport};

/// How long to wait for the init to die after SIGKILL before giving up on it.
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// How long the output readers may take to drain once everything is dead.
const OUTPUT_DRAIN_PATIENCE: Duration = Duration::from_secs(1);

pub(crate) async fn stop(instance: &Instance, grace: Duration) -> StopReport {
    let mut cached = instance.stop_report.lock().await;
    if let Some(report) = cached.as_ref() {
        return StopReport {
            exit: report.exit,
            memory_peak_bytes: report.memory_peak_bytes,
            oom_killed: report.oom_killed,
            cleanup_errors: report.cleanup_errors.clone(),
        };
    }
    let report = stop_once(instance, grace).await;
    instance.events.emit(InstanceEvent::Removed {
        memory_peak_bytes: report.memory_peak_bytes,
        oom_killed: report.oom_killed,
    });
    *cached = Some(StopReport {
        exit: report.exit,
        memory_peak_bytes: report.memory_peak_bytes,
        oom_killed: report.oom_killed,
        cleanup_errors: report.cleanup_errors.clone(),
    });
    instance.mark_stopped();
    report
}

async fn stop_once(instance: &Instance, grace: Duration) -> StopReport {
    let sb = &instance.sandbox;
    let id = instance.id.as_str();
    let mut report = StopReport::default();

    // 1. Thaw, signals.
    if let Err(e) = instance.thaw_for_stop() {
        report.cleanup_errors.push(crate::error::display_chain(&e));
    }
    let mut exit = instance.exit_status();
    if exit.is_none() {
        exit = terminate(instance, grace).await;
    }
    if exit.is_none() {
        report.cleanup_errors.push(format!(
            "init pid {} of {id} did not exit after SIGKILL",
            instance.pid
        ));
    }
    report.exit = exit;

    // 2. Statistics, before the cgroup goes.
    let oom_watch = instance
        .oom_watch
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(watch) = oom_watch {
        watch.finish().await;
    }
    let stats = sb
        .cgroups
        .memory_stats(sb.host.as_ref(), &sb.config.cgroup_parent, id);
    report.memory_peak_bytes = stats.peak_bytes;
    report.oom_killed = stats.oom_kills.is_some_and(|n| n > 0);

    // 3. The container and its cgroups.
    if let Some(e) = delete_container(sb, id).await {
        report.cleanup_errors.push(e.to_string());
    }
    report
        .cleanup_errors
        .extend(remove_instance_cgroups(sb, id));
    if let Err(e) = sb.network.release(id).await {
        report.cleanup_errors.push(crate::error::display_chain(&e));
    }

    // 4. Mounts and bundle.
    let unmounted =
        crate::blocking::run(|| unmount_and_remove(sb, &instance.paths, true, true, true));
    for e in unmounted {
        report.cleanup_errors.push(crate::error::display_chain(&e));
    }

    // 5. Output.
    instance.output.finish(OUTPUT_DRAIN_PATIENCE).await;

    for e in &report.cleanup_errors {
        warn!(instance = %id, error = %e, "stop left something behind");
    }
    debug!(instance = %id, exit = ?report.exit, peak = ?report.memory_peak_bytes, oom = report.oom_killed, "instance stopped");
    report
}

/// SIGTERM, wait up to `grace`, SIGKILL, wait. `None` if it still has not exited.
async fn terminate(instance: &Instance, grace: Duration) -> Option<ExitInfo> {
    let signal = |sig: Signal| {
        match rustix::process::pidfd_send_signal(instance.pidfd.as_fd(), sig) {
            Ok(()) => {}
            // Already exited (the watcher will report it).
            Err(rustix::io::Errno::SRCH) => {}
            Err(e) => {
                warn!(instance = %instance.id, signal = ?sig, error = %e, "pidfd_send_signal failed")
            }
        }
    };
    if !grace.is_zero() {
        signal(Signal::TERM);
        if let Ok(exit) = tokio::time::timeout(grace, instance.exited()).await {
            return Some(exit);
        }
    }
    signal(Signal::KILL);
    tokio::time::timeout(KILL_PATIENCE, instance.exited())
        .await
        .ok()
}
