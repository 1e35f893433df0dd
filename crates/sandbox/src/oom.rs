//! The OOM watcher: `OomKill` events while an instance runs, not only at its stop.
//!
//! When the kernel's OOM killer kills a process other than the init (a worker, a child the
//! function forked), the instance goes on running and nothing else would tell. The kernel
//! notifies it, so the watcher waits for that, with no thread and no timer per instance: one
//! small tokio task per instance (like the exit watcher) that sleeps until the kernel wakes
//! it, reads the `oom_kill` counter and emits `OomKill` when it grew.
//!
//! * **v1**: an eventfd registered by writing `"<eventfd> <fd of memory.oom_control>"` to the
//!   instance's `cgroup.event_control`; the kernel signals it on every OOM of the cgroup (and
//!   once more when the cgroup is removed). It signals *before* the victim is chosen, so when
//!   the counter has not grown yet it is read again a few times over up to
//!   [`V1_KILL_SETTLE`] (an OOM may also end without a kill: the memory was reclaimed, or a
//!   victim was already dying).
//! * **v2**: `memory.events` itself signals `POLLPRI` when one of its counters changed (the
//!   kernel rate-limits this to about one wake-up per 10 ms); the counter is already up to
//!   date then.
//!
//! The task registers the notification itself, so the start does not wait for it (some tens
//! of microseconds); a kill before that is not lost, since the task reads the counter first.
//! A registration that fails is a warning: the stop report still tells about OOM kills.
//!
//! The task ends when the stop ends it ([`OomWatch::finish`], after a last look at the counter
//! so that no kill is reported after `Removed`), when the [`OomWatch`] is dropped with its
//! instance, or when the cgroup is gone (reading its file fails).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::InstanceEvent;
use crate::cgroup::{NotifiedFile, OomFiles, flat_keyed_value, pread_text};
use crate::events::Events;

/// v1 signals an OOM before its kill: how long to keep looking for the counter to grow.
const V1_KILL_SETTLE: Duration = Duration::from_millis(200);

/// The first re-read after a v1 notification whose counter had not grown; doubled each time.
const V1_FIRST_RECHECK: Duration = Duration::from_millis(1);

/// How long a stop waits for the watcher's last look (a read of one small file).
const FINISH_PATIENCE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub(crate) enum OomWatchError {
    #[error("failed to create an eventfd")]
    Eventfd(#[source] io::Error),

    #[error("failed to open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to register an OOM eventfd in {path}")]
    Register {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to poll {path}")]
    Poll {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A running watcher. Dropping it ends the task too (its stop channel closes).
pub(crate) struct OomWatch {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl OomWatch {
    /// End the watcher after a last look at the counter, and wait for it (bounded). Call while
    /// the cgroup still exists.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(FINISH_PATIENCE, self.task)
            .await
            .is_err()
        {
            warn!("the OOM watcher did not end in time");
        }
    }
}

/// How the kernel tells the watcher, and where it reads the counter.
enum Notifier {
    V1 {
        eventfd: AsyncFd<OwnedFd>,
        oom_control: File,
    },
    V2 {
        events: NotifiedFile,
    },
}

impl Notifier {
    /// The `oom_kill` counter now; an error once the cgroup is gone.
    fn kills(&self) -> io::Result<u64> {
        let text = match self {
            Notifier::V1 { oom_control, .. } => pread_text(oom_control)?,
            Notifier::V2 { events } => events.read()?,
        };
        // A kernel without the counter (v1 before 4.13) never reports a kill.
        Ok(flat_keyed_value(&text, "oom_kill").unwrap_or(0))
    }

    async fn notified(&self) -> io::Result<()> {
        match self {
            Notifier::V1 { eventfd, .. } => loop {
                let mut guard = eventfd.readable().await?;
                let mut count = [0u8; 8];
                match guard.try_io(|fd| {
                    rustix::io::read(fd.get_ref(), &mut count).map_err(io::Error::from)
                }) {
                    Ok(result) => return result.map(drop),
                    Err(_would_block) => continue,
                }
            },
            Notifier::V2 { events } => events.changed().await,
        }
    }
}

/// Spawn the watcher of an instance's cgroup (which must exist). The task registers the
/// kernel's notification itself, off the start's path (it takes some tens of microseconds);
/// when that fails it warns and ends: the stop report still tells whether an OOM kill
/// happened.
pub(crate) fn watch(id: &str, files: OomFiles, events: Events) -> OomWatch {
    let (stop, stopped) = oneshot::channel();
    let id = id.to_owned();
    let task = tokio::spawn(async move {
        match register(&id, &files) {
            Ok(notifier) => run(id, notifier, events, stopped).await,
            Err(e) => warn!(
                instance = %id,
                error = %crate::error::display_chain(&e),
                "OOM kills of this instance will only be reported when it stops"
            ),
        }
    });
    OomWatch { stop, task }
}

/// Register the kernel's notification for the instance's cgroup. Needs the tokio runtime.
fn register(id: &str, files: &OomFiles) -> Result<Notifier, OomWatchError> {
    Ok(match files {
        OomFiles::V1 {
            oom_control,
            event_control,
        } => {
            let (eventfd, oom_control) = register_v1(oom_control, event_control)?;
            // SAFETY: the eventfd moves into the AsyncFd, which owns it: the descriptor stays
            // open and the same for the AsyncFd's whole lifetime.
            let eventfd =
                unsafe { AsyncFd::register_with_interest(eventfd, tokio::io::Interest::READABLE) }
                    .map_err(|e| OomWatchError::Eventfd(e.into_parts().1))?;
            debug!(instance = %id, "watching OOMs through an eventfd");
            Notifier::V1 {
                eventfd,
                oom_control,
            }
        }
        OomFiles::V2 { events: path } => {
            let file = File::open(path).map_err(|source| OomWatchError::Open {
                path: path.clone(),
                source,
            })?;
            let events = NotifiedFile::new(file).map_err(|(_, source)| OomWatchError::Poll {
                path: path.clone(),
                source,
            })?;
            debug!(instance = %id, path = %path.display(), "watching memory.events");
            Notifier::V2 { events }
        }
    })
}

/// A non-blocking eventfd, registered for OOM notifications of the cgroup whose
/// `memory.oom_control` is given. Returns the eventfd and the open `memory.oom_control`, from
/// which the counter is read.
fn register_v1(oom_control: &Path, event_control: &Path) -> Result<(OwnedFd, File), OomWatchError> {
    use rustix::event::{EventfdFlags, eventfd};
    let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(|e| OomWatchError::Eventfd(e.into()))?;
    let control = File::open(oom_control).map_err(|source| OomWatchError::Open {
        path: oom_control.to_owned(),
        source,
    })?;
    let line = format!("{} {}", efd.as_raw_fd(), control.as_raw_fd());
    std::fs::OpenOptions::new()
        .write(true)
        .open(event_control)
        .and_then(|f| {
            use std::os::unix::fs::FileExt;
            f.write_at(line.as_bytes(), 0)
        })
        .map_err(|source| OomWatchError::Register {
            path: event_control.to_owned(),
            source,
        })?;
    debug!(path = %event_control.display(), %line, "registered an OOM eventfd");
    Ok((efd, control))
}

async fn run(id: String, notifier: Notifier, events: Events, mut stop: oneshot::Receiver<()>) {
    let mut seen = 0;
    loop {
        if !report_growth(&id, &notifier, &events, &mut seen) {
            return;
        }
        let stop_came = tokio::select! {
            biased;
            // Sent by the stop, or the OomWatch was dropped.
            _ = &mut stop => true,
            notified = notifier.notified() => {
                if let Err(e) = notified {
                    warn!(instance = %id, error = %e, "OOM notification failed; no more OomKill events");
                    return;
                }
                matches!(notifier, Notifier::V1 { .. })
                    && !settle_v1(&id, &notifier, &events, &mut seen, &mut stop).await
            }
        };
        if stop_came {
            // A last look, so that a kill just before the stop is still reported.
            report_growth(&id, &notifier, &events, &mut seen);
            debug!(instance = %id, kills = seen, "OOM watcher ended");
            return;
        }
    }
}

/// After a v1 notification: re-read the counter, with a short backoff, until it grows or the
/// settle time is over (`true`), or the stop comes (`false`).
async fn settle_v1(
    id: &str,
    notifier: &Notifier,
    events: &Events,
    seen: &mut u64,
    stop: &mut oneshot::Receiver<()>,
) -> bool {
    let before = *seen;
    let end = tokio::time::Instant::now() + V1_KILL_SETTLE;
    let mut wait = V1_FIRST_RECHECK;
    loop {
        if !report_growth(id, notifier, events, seen) || *seen > before {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now >= end {
            debug!(instance = %id, "an OOM of the cgroup ended without a kill");
            return true;
        }
        tokio::select! {
            biased;
            _ = &mut *stop => return false,
            _ = tokio::time::sleep(wait.min(end - now)) => {}
        }
        wait *= 2;
    }
}

/// Read the counter; emit `OomKill` when it grew. `false` once the cgroup is gone.
fn report_growth(id: &str, notifier: &Notifier, events: &Events, seen: &mut u64) -> bool {
    match notifier.kills() {
        Ok(kills) => {
            if kills > *seen {
                *seen = kills;
                events.emit(InstanceEvent::OomKill { kills });
            }
            true
        }
        Err(e) => {
            debug!(instance = %id, error = %e, "the cgroup is gone: OOM watcher ended");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupLayout;
    use crate::{EventSink, InstanceEvent};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<InstanceEvent>>);

    impl EventSink for Recorder {
        fn event(&self, instance_id: &str, event: &InstanceEvent) {
            assert_eq!(instance_id, "i1");
            self.0.lock().unwrap().push(event.clone());
        }
    }

    impl Recorder {
        fn kills(&self) -> Vec<u64> {
            let events = self.0.lock().unwrap();
            events
                .iter()
                .map(|e| match e {
                    InstanceEvent::OomKill { kills } => *kills,
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        }

        async fn wait_kills(&self, want: &[u64]) {
            let end = std::time::Instant::now() + Duration::from_secs(5);
            while self.kills() != want {
                assert!(std::time::Instant::now() < end, "{:?}", self.kills());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    fn oom_control(kills: u64) -> String {
        format!("oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n")
    }

    /// A fake v1 memory tree, and the kernel's part played by the test: it rewrites the
    /// counter and signals the eventfd it finds registered in `cgroup.event_control`.
    #[tokio::test]
    async fn v1_eventfd_registration_and_kills() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("memory");
        let dir = root.join("wharf").join("i1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.oom_control"), oom_control(0)).unwrap();
        std::fs::write(dir.join("cgroup.event_control"), "").unwrap();
        let layout = CgroupLayout::from_mountinfo(&format!(
            "35 31 0:32 / {} rw,relatime - cgroup cgroup rw,memory\n",
            root.display()
        ));
        let files = layout.oom_files("wharf", "i1").unwrap();
        assert_eq!(
            files,
            OomFiles::V1 {
                oom_control: dir.join("memory.oom_control"),
                event_control: dir.join("cgroup.event_control"),
            }
        );
        let recorder = Arc::new(Recorder::default());
        let watch = watch(
            "i1",
            files.clone(),
            Events::new("i1", Some(recorder.clone())),
        );

        // "<eventfd> <fd of memory.oom_control>", written by the watcher's task.
        let end = std::time::Instant::now() + Duration::from_secs(5);
        let line = loop {
            let line = std::fs::read_to_string(dir.join("cgroup.event_control")).unwrap();
            if !line.is_empty() {
                break line;
            }
            assert!(std::time::Instant::now() < end, "never registered");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let (efd, cfd) = line.split_once(' ').unwrap();
        let (efd, cfd): (i32, i32) = (efd.parse().unwrap(), cfd.parse().unwrap());
        let link = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(link(efd), Path::new("anon_inode:[eventfd]"));
        assert_eq!(link(cfd), dir.join("memory.oom_control"));
        let signal = || {
            // SAFETY: the watcher owns this eventfd and is alive until `finish` below.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(efd) };
            rustix::io::write(fd, &1u64.to_ne_bytes()).unwrap();
        };

        // A kill: counter, then the notification.
        std::fs::write(dir.join("memory.oom_control"), oom_control(1)).unwrap();
        signal();
        recorder.wait_kills(&[1]).await;
        // v1 notifies before the kill: the counter grows a little later.
        signal();
        tokio::time::sleep(Duration::from_millis(5)).await;
        std::fs::write(dir.join("memory.oom_control"), oom_control(2)).unwrap();
        recorder.wait_kills(&[1, 2]).await;
        // A kill just before the stop, not notified yet: the last look sees it.
        std::fs::write(dir.join("memory.oom_control"), oom_control(3)).unwrap();
        watch.finish().await;
        assert_eq!(recorder.kills(), [1, 2, 3]);
        // The watcher's descriptors are closed with it.
        assert_ne!(
            std::fs::read_link(format!("/proc/self/fd/{cfd}")).ok(),
            Some(dir.join("memory.oom_control"))
        );
    }

    #[tokio::test]
    async fn kills_before_the_watch_are_reported_and_a_gone_cgroup_ends_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("memory").join("wharf").join("i1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.oom_control"), oom_control(2)).unwrap();
        std::fs::write(dir.join("cgroup.event_control"), "").unwrap();
        let files = OomFiles::V1 {
            oom_control: dir.join("memory.oom_control"),
            event_control: dir.join("cgroup.event_control"),
        };
        let recorder = Arc::new(Recorder::default());
        let watch = watch(
            "i1",
            files.clone(),
            Events::new("i1", Some(recorder.clone())),
        );
        recorder.wait_kills(&[2]).await;
        watch.finish().await;
        assert_eq!(recorder.kills(), [2]);

        // No cgroup: registration fails naming the file (the start only warns).
        let err = watch_err(&OomFiles::V1 {
            oom_control: dir.join("gone/memory.oom_control"),
            event_control: dir.join("gone/cgroup.event_control"),
        });
        assert!(err.contains("gone/memory.oom_control"), "{err}");
    }

    /// v2's `memory.events` must be pollable: a regular file is not, and the error says which.
    #[tokio::test]
    async fn v2_needs_a_pollable_memory_events() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("unified");
        let dir = root.join("wharf").join("i1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
        let layout = CgroupLayout::from_mountinfo(&format!(
            "35 24 0:30 / {} rw - cgroup2 cgroup2 rw\n",
            root.display()
        ));
        let files = layout.oom_files("wharf", "i1").unwrap();
        assert_eq!(
            files,
            OomFiles::V2 {
                events: dir.join("memory.events")
            }
        );
        let err = watch_err(&files);
        assert!(
            err.starts_with(&format!(
                "failed to poll {}",
                dir.join("memory.events").display()
            )),
            "{err}"
        );
    }

    fn watch_err(files: &OomFiles) -> String {
        match register("i1", files) {
            Ok(_) => panic!("watching {files:?} worked"),
            Err(e) => crate::error::display_chain(&e),
        }
    }
}
