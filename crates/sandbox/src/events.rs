//! Instance events: what the sandbox tells the pool (and the log) about an instance.
//!
//! Every event goes to `tracing` at `debug!` and to the instance's [`EventSink`], if it has
//! one. They come from where the thing happens, on the sandbox's tasks:
//!
//! | event | from |
//! |---|---|
//! | `Started` | the end of a successful start (`instance_start`, through [`announce_started`]) |
//! | `Frozen`, `Thawed` | the freezer (`instance_freeze`; a stop thaws a frozen instance first) |
//! | `OomKill` | the OOM watcher, while the instance runs (`oom`) |
//! | `Exited` | the exit watcher (`reaper`) |
//! | `Removed` | the end of the first stop (`instance_stop`) |
//!
//! The order is Started first and Removed last. Exited comes before anyone can see the exit
//! through [`Instance::exit_status`] (so before a stop goes on), and the stop ends the OOM
//! watcher, with a last look at the counter, before Removed. Only an OOM kill of the init
//! itself has no fixed order with its Exited: both watchers see it at the same time. A start
//! that fails emits nothing.

use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::debug;

use crate::{EventSink, Instance, InstanceEvent};

/// Emits the events of one instance. Cheap to clone (two `Arc`s), one clone per task.
#[derive(Clone)]
pub(crate) struct Events {
    id: Arc<str>,
    sink: Option<Arc<dyn EventSink>>,
}

impl Events {
    pub fn new(id: &str, sink: Option<Arc<dyn EventSink>>) -> Events {
        Events {
            id: id.into(),
            sink,
        }
    }

    pub fn emit(&self, event: InstanceEvent) {
        debug!(instance = %self.id, ?event, "instance event");
        if let Some(sink) = &self.sink {
            sink.event(&self.id, &event);
        }
    }
}

/// The end of a successful start: `Started`, then the exit watcher may report `Exited`
/// (`arm_exit`), then the OOM watcher starts. The OOM watcher needs the cgroup, which exists
/// since `runtime create`; it registers in its own task, so the start does not wait for it.
pub(crate) fn announce_started(instance: &Instance, arm_exit: oneshot::Sender<Events>) {
    instance.events.emit(InstanceEvent::Started {
        pid: instance.pid,
        timings: instance.timings,
    });
    // Only fails when the watcher is gone, i.e. the runtime is shutting down.
    let _ = arm_exit.send(instance.events.clone());
    let sb = &instance.sandbox;
    let Some(files) = sb.cgroups.oom_files(&sb.config.cgroup_parent, &instance.id) else {
        debug!(instance = %instance.id, "no memory controller: no OOM watcher");
        return;
    };
    let watch = crate::oom::watch(&instance.id, files, instance.events.clone());
    *instance.oom_watch.lock().unwrap_or_else(|e| e.into_inner()) = Some(watch);
}
