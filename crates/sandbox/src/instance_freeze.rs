//! Freezing and thawing an instance through the cgroup freezer, written directly (one
//! `pwrite`: 5–100 µs) rather than through `runtime pause`/`resume` (a process, 5–9 ms).
//!
//! What a v1 write costs depends on the rest of the host: the kernel keeps a static key on
//! while any cgroup is frozen, and the write that turns it on or off (the first freeze, the
//! last thaw) patches kernel text with an IPI to every CPU. Measured here (6.18, 2 vCPUs): a
//! thaw write takes ~80 µs when it is the only frozen cgroup (over 1 ms when every CPU is
//! busy), 5–7 µs when another cgroup stays frozen.
//!
//! * v1 (`freezer` hierarchy, v1 and hybrid hosts): write `FROZEN` to `freezer.state`; it
//!   reads `FREEZING` until every task is frozen, then `FROZEN`. There is no notification, so
//!   the freeze re-reads it: a few times right away (yielding the CPU to the tasks that must
//!   freeze, [`QUICK_RECHECKS`]), then with a backoff (1 ms, doubling, at most
//!   [`MAX_RECHECK`]).
//! * v2: write `1` to `cgroup.freeze`; `cgroup.events` says `frozen 1` once every task is, and
//!   signals `POLLPRI` when that changes, so the freeze sleeps until the kernel wakes it.
//!
//! Either wait is bounded by [`FREEZE_TIMEOUT`]; when it runs out the instance is thawed
//! again: an instance is never left half-frozen.
//!
//! Thawing is on the request path, so it is one `pwrite` of the file kept open since the
//! freeze, and no wait: v1 `THAWED` and v2 `0` take effect in the write itself (the kernel
//! wakes every task before the write returns; on this host's kernel, 6.18, `freezer.state`
//! reads `THAWED`, `cgroup.events` `frozen 0`, and the tasks are runnable right after it, which
//! `tests/freezer.rs` and the v2 test below check).
//!
//! The state Wharf tracks is one atomic ([`Instance::is_frozen`] costs no system call); its
//! transitions and the writes happen under a per-instance mutex, so a thaw that races a freeze
//! always wins (the freeze ends `Cancelled` and leaves the instance thawed). A stop thaws a
//! frozen instance first — frozen v1 tasks act on no signal, not even SIGKILL, until thawed —
//! and no freeze is possible after that.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::cgroup::{FreezerFiles, FreezerKind, NotifiedFile, pread_text};
use crate::error::FreezeError;
use crate::{Instance, InstanceEvent};

/// How long a freeze waits for the kernel to report every task frozen. Tasks freeze within
/// microseconds unless one is stuck in the kernel: uninterruptible I/O, a FUSE request, or
/// an `execve` of a multi-threaded process, which waits for its other threads to exit while
/// the freezer holds them (seen with runc's Go init, frozen right after `runtime start`
/// before it exec'd the command): such a freeze never completes and is undone.
pub(crate) const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

/// Re-reads of a state that has no notification (v1) right after the write, each after a
/// `sched_yield` (a few microseconds): a sleeping task freezes only once it ran for a moment,
/// which this catches in about 0.2 ms, where one timer tick would make it 1-2 ms. Measured
/// here with a sleeping httpd: median freeze 2.4 ms without, 0.24 ms with 10.
const QUICK_RECHECKS: u32 = 10;

/// Then the first timed re-read; doubled each time.
const FIRST_RECHECK: Duration = Duration::from_millis(1);

/// The longest pause between two reads of the state (with a notification too, in case one is
/// missed).
const MAX_RECHECK: Duration = Duration::from_millis(50);

const THAWED: u8 = 0;
/// Written `FROZEN`, waiting for the kernel to report it.
const FREEZING: u8 = 1;
const FROZEN: u8 = 2;
/// Stopping or stopped: thawed for good.
const STOPPED: u8 = 3;

/// The freezer state of one instance.
#[derive(Default)]
pub(crate) struct Freezer {
    state: AtomicU8,
    /// Opened by the first freeze, closed by the stop. Guards the state's transitions.
    files: Mutex<Option<Arc<OpenFreezer>>>,
    /// One freeze at a time (a thaw never waits for it).
    one_freeze: tokio::sync::Mutex<()>,
}

/// What a freeze or thaw did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Written (and, for a freeze, reported by the kernel) after this long.
    Done(Duration),
    /// It already was in that state: nothing written.
    Already,
}

/// Thaws back a freeze whose future is dropped while it waits for the kernel.
struct ThawBack<'a> {
    freezer: &'a Freezer,
    id: &'a str,
    open: &'a OpenFreezer,
    armed: bool,
}

impl Drop for ThawBack<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _guard = self.freezer.lock();
        if self.freezer.state.load(Ordering::Acquire) == FREEZING {
            debug!(instance = %self.id, "freeze abandoned half-way: thawing back");
            let _ = self.freezer.thaw_back(self.id, self.open);
        }
    }
}

/// How the next re-read of a state without notification waits.
struct Recheck {
    quick: u32,
    backoff: Duration,
}

/// The freezer files of an instance, kept open.
struct OpenFreezer {
    files: FreezerFiles,
    /// v1 `freezer.state`, v2 `cgroup.freeze`: written, and read back on v1.
    control: File,
    state: StateFile,
}

enum StateFile {
    /// v1: the state is read from the control file.
    Control,
    /// v2 `cgroup.events`, woken by the kernel when it changes.
    Notified(NotifiedFile),
    /// v2 `cgroup.events` that epoll refuses (a regular file in the unit tests): re-read.
    Polled(File),
}

impl OpenFreezer {
    fn open(id: &str, files: FreezerFiles) -> Result<OpenFreezer, FreezeError> {
        let open_err = |path: &PathBuf| {
            let path = path.clone();
            move |source| FreezeError::Open {
                id: id.to_owned(),
                path,
                source,
            }
        };
        let control = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&files.control)
            .map_err(open_err(&files.control))?;
        let state = match files.kind {
            FreezerKind::V1 => StateFile::Control,
            FreezerKind::V2 => {
                let file = File::open(&files.state).map_err(open_err(&files.state))?;
                match NotifiedFile::new(file) {
                    Ok(notified) => StateFile::Notified(notified),
                    Err((file, e)) => {
                        debug!(path = %files.state.display(), error = %e, "no POLLPRI on the freezer state: re-reading it");
                        StateFile::Polled(file)
                    }
                }
            }
        };
        debug!(instance = %id, control = %files.control.display(), kind = ?files.kind, "freezer files open");
        Ok(OpenFreezer {
            files,
            control,
            state,
        })
    }

    fn write(&self, id: &str, freeze: bool) -> Result<(), FreezeError> {
        let value = self.files.kind.request(freeze);
        debug!(instance = %id, path = %self.files.control.display(), value, "write freezer");
        match self.control.write_at(value.as_bytes(), 0) {
            Ok(n) if n == value.len() => Ok(()),
            Ok(_) => Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
            Err(e) => Err(e),
        }
        .map_err(|source| FreezeError::Write {
            id: id.to_owned(),
            path: self.files.control.clone(),
            value,
            source,
        })
    }

    /// `(every task frozen, the state's text to quote)`.
    fn read_state(&self, id: &str) -> Result<(bool, String), FreezeError> {
        let text = match &self.state {
            StateFile::Control => pread_text(&self.control),
            StateFile::Notified(file) => file.read(),
            StateFile::Polled(file) => pread_text(file),
        }
        .map_err(|source| FreezeError::Read {
            id: id.to_owned(),
            path: self.files.state.clone(),
            source,
        })?;
        let kind = self.files.kind;
        Ok((
            kind.is_frozen(&text).unwrap_or(false),
            kind.describe_state(&text),
        ))
    }

    /// Until the state may have changed, at most `limit`.
    async fn wait(&self, limit: Duration, recheck: &mut Recheck) {
        match &self.state {
            StateFile::Notified(file) => {
                let _ = tokio::time::timeout(limit.min(MAX_RECHECK), file.changed()).await;
            }
            StateFile::Control | StateFile::Polled(_) => {
                if recheck.quick < QUICK_RECHECKS {
                    // The tasks still to freeze were woken by the write and need a CPU for a
                    // moment; give up ours instead of sleeping a timer tick (1-2 ms).
                    recheck.quick += 1;
                    std::thread::yield_now();
                    return;
                }
                tokio::time::sleep(limit.min(recheck.backoff)).await;
                recheck.backoff = (recheck.backoff * 2).min(MAX_RECHECK);
            }
        }
    }
}

impl Freezer {
    fn lock(&self) -> MutexGuard<'_, Option<Arc<OpenFreezer>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_frozen(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), FREEZING | FROZEN)
    }

    /// Write the freeze request, wait (at most `bound`) for the kernel to report every task
    /// frozen; on timeout or error thaw back. `files` is `None` without a freezer.
    pub async fn freeze(
        &self,
        id: &str,
        files: Option<FreezerFiles>,
        bound: Duration,
    ) -> Result<Change, FreezeError> {
        let _one = self.one_freeze.lock().await;
        let (open, started) = {
            let mut guard = self.lock();
            match self.state.load(Ordering::Acquire) {
                FROZEN => return Ok(Change::Already),
                STOPPED => return Err(FreezeError::Stopped { id: id.to_owned() }),
                _ => {}
            }
            let open = match guard.as_ref() {
                Some(open) => open.clone(),
                None => {
                    let files =
                        files.ok_or_else(|| FreezeError::NoFreezer { id: id.to_owned() })?;
                    let open = Arc::new(OpenFreezer::open(id, files)?);
                    *guard = Some(open.clone());
                    open
                }
            };
            let started = Instant::now();
            if let Err(e) = open.write(id, true) {
                // A failed write may still have frozen some tasks of a v1 hierarchy.
                let _ = open.write(id, false);
                return Err(e);
            }
            self.state.store(FREEZING, Ordering::Release);
            (open, started)
        };

        // Dropped half-way (the caller gave up on the future): thaw back.
        let mut undo = ThawBack {
            freezer: self,
            id,
            open: &open,
            armed: true,
        };
        let mut recheck = Recheck {
            quick: 0,
            backoff: FIRST_RECHECK,
        };
        loop {
            let seen = open.read_state(id);
            let waited = started.elapsed();
            let guard = self.lock();
            if self.state.load(Ordering::Acquire) != FREEZING {
                // A thaw (which wrote its request) or a stop came first.
                undo.armed = false;
                return Err(FreezeError::Cancelled { id: id.to_owned() });
            }
            let state = match seen {
                Ok((true, _)) => {
                    undo.armed = false;
                    self.state.store(FROZEN, Ordering::Release);
                    return Ok(Change::Done(waited));
                }
                Ok((false, state)) => state,
                Err(e) => {
                    undo.armed = false;
                    let _ = self.thaw_back(id, &open);
                    return Err(e);
                }
            };
            if waited >= bound {
                undo.armed = false;
                let thawed = self.thaw_back(id, &open);
                drop(guard);
                return Err(match thawed {
                    Ok(()) => FreezeError::Timeout {
                        id: id.to_owned(),
                        waited,
                        state,
                    },
                    Err(FreezeError::Write { path, source, .. }) => FreezeError::Stuck {
                        id: id.to_owned(),
                        waited,
                        state,
                        path,
                        source,
                    },
                    Err(other) => other,
                });
            }
            drop(guard);
            open.wait(bound - waited, &mut recheck).await;
        }
    }

    /// Undo a freeze that did not complete (call with the lock held). When the write fails
    /// the instance may be frozen: the state says so, and a later thaw tries again.
    fn thaw_back(&self, id: &str, open: &OpenFreezer) -> Result<(), FreezeError> {
        let thawed = open.write(id, false);
        let state = if thawed.is_ok() { THAWED } else { FROZEN };
        self.state.store(state, Ordering::Release);
        thawed
    }

    /// One write of the thaw request, when frozen or freezing.
    pub fn thaw(&self, id: &str) -> Result<Change, FreezeError> {
        let guard = self.lock();
        if !matches!(self.state.load(Ordering::Acquire), FREEZING | FROZEN) {
            return Ok(Change::Already);
        }
        let Some(open) = guard.as_ref() else {
            // Freezing set without files cannot happen; nothing was written either way.
            self.state.store(THAWED, Ordering::Release);
            return Ok(Change::Already);
        };
        let started = Instant::now();
        open.write(id, false)?;
        let took = started.elapsed();
        self.state.store(THAWED, Ordering::Release);
        Ok(Change::Done(took))
    }

    /// For the stop: no freeze from now on; thaw if frozen or freezing; close the files.
    pub fn stop(&self, id: &str) -> Result<Change, FreezeError> {
        let mut guard = self.lock();
        let previous = self.state.swap(STOPPED, Ordering::AcqRel);
        let open = guard.take();
        match (previous, open) {
            (FREEZING | FROZEN, Some(open)) => {
                let started = Instant::now();
                open.write(id, false)?;
                Ok(Change::Done(started.elapsed()))
            }
            _ => Ok(Change::Already),
        }
    }
}

impl Instance {
    /// Freeze every process of the instance (cgroup freezer) and wait until the kernel reports
    /// them frozen, at most 2 s (`FREEZE_TIMEOUT`; then it is thawed again and the error says
    /// what the kernel reported). Returns how long the kernel took. Already frozen: `Ok` at
    /// once. A frozen instance uses no CPU and keeps its memory; its connections stay open
    /// but nothing answers until [`Instance::thaw`].
    pub async fn freeze(&self) -> Result<Duration, FreezeError> {
        self.freeze_within(FREEZE_TIMEOUT).await
    }

    async fn freeze_within(&self, bound: Duration) -> Result<Duration, FreezeError> {
        if let Some(exit) = self.exit_status() {
            return Err(FreezeError::Exited {
                id: self.id.clone(),
                exit,
            });
        }
        let sb = &self.sandbox;
        sb.keep_freezer_on();
        let files = sb.cgroups.freezer(&sb.config.cgroup_parent, &self.id);
        match self.freezer.freeze(&self.id, files, bound).await? {
            Change::Done(took) => {
                self.events.emit(InstanceEvent::Frozen { took });
                Ok(took)
            }
            Change::Already => Ok(Duration::ZERO),
        }
    }

    /// Let the instance's processes run again: one write of the freezer file kept open since
    /// the freeze, no wait (the thaw takes effect in the write). Returns how long the write
    /// took. Not frozen: `Ok` at once. Synchronous and fast enough for the request path.
    pub fn thaw(&self) -> Result<Duration, FreezeError> {
        match self.freezer.thaw(&self.id)? {
            Change::Done(took) => {
                self.events.emit(InstanceEvent::Thawed { took });
                Ok(took)
            }
            Change::Already => Ok(Duration::ZERO),
        }
    }

    /// Whether the instance is frozen or being frozen, i.e. needs [`Instance::thaw`] before it
    /// can answer. The state Wharf tracks: no system call.
    pub fn is_frozen(&self) -> bool {
        self.freezer.is_frozen()
    }

    /// The start of a stop: thaw if frozen, so that the signals are acted on, and refuse
    /// freezes from now on. An error is for the stop report.
    pub(crate) fn thaw_for_stop(&self) -> Result<(), FreezeError> {
        if let Change::Done(took) = self.freezer.stop(&self.id)? {
            self.events.emit(InstanceEvent::Thawed { took });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupLayout;

    /// A fake cgroup tree in a tempdir, with the layout that finds it.
    struct FakeTree {
        _tmp: tempfile::TempDir,
        layout: CgroupLayout,
        dir: PathBuf,
    }

    fn fake_tree(v1: bool) -> FakeTree {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(if v1 { "freezer" } else { "unified" });
        let dir = root.join("wharf").join("i1");
        std::fs::create_dir_all(&dir).unwrap();
        let fstype = if v1 {
            "cgroup cgroup rw,freezer"
        } else {
            "cgroup2 cgroup2 rw"
        };
        let mountinfo = format!("37 31 0:34 / {} rw,relatime - {fstype}\n", root.display());
        if v1 {
            std::fs::write(dir.join("freezer.state"), "THAWED\n").unwrap();
        } else {
            std::fs::write(dir.join("cgroup.freeze"), "0\n").unwrap();
            std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        }
        FakeTree {
            _tmp: tmp,
            layout: CgroupLayout::from_mountinfo(&mountinfo),
            dir,
        }
    }

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[tokio::test]
    async fn v1_writes_freezer_state() {
        let tree = fake_tree(true);
        let files = tree.layout.freezer("wharf", "i1").unwrap();
        assert_eq!(files.kind, FreezerKind::V1);
        assert_eq!(files.control, tree.dir.join("freezer.state"));
        assert_eq!(files.state, files.control);

        let freezer = Freezer::default();
        assert!(!freezer.is_frozen());
        // Nothing to thaw yet: nothing is opened or written.
        assert_eq!(freezer.thaw("i1").unwrap(), Change::Already);
        let change = freezer
            .freeze("i1", Some(files.clone()), FREEZE_TIMEOUT)
            .await
            .unwrap();
        assert!(matches!(change, Change::Done(_)), "{change:?}");
        assert_eq!(read(tree.dir.join("freezer.state")), "FROZEN\n");
        assert!(freezer.is_frozen());
        // Idempotent.
        assert_eq!(
            freezer
                .freeze("i1", Some(files), FREEZE_TIMEOUT)
                .await
                .unwrap(),
            Change::Already
        );
        assert!(matches!(freezer.thaw("i1").unwrap(), Change::Done(_)));
        assert_eq!(read(tree.dir.join("freezer.state")), "THAWED\n");
        assert!(!freezer.is_frozen());
        assert_eq!(freezer.thaw("i1").unwrap(), Change::Already);
    }

    #[tokio::test]
    async fn v2_waits_until_cgroup_events_says_frozen() {
        let tree = fake_tree(false);
        let files = tree.layout.freezer("wharf", "i1").unwrap();
        assert_eq!(files.kind, FreezerKind::V2);
        assert_eq!(files.control, tree.dir.join("cgroup.freeze"));
        assert_eq!(files.state, tree.dir.join("cgroup.events"));

        // The "kernel": reports frozen 30 ms after the request was written.
        let events = files.state.clone();
        let control = files.control.clone();
        let kernel = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(5);
            while std::fs::read_to_string(&control).unwrap() != "1\n" {
                assert!(Instant::now() < end, "never asked to freeze");
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(30));
            std::fs::write(&events, "populated 1\nfrozen 1\n").unwrap();
        });
        let freezer = Freezer::default();
        let change = freezer
            .freeze("i1", Some(files), FREEZE_TIMEOUT)
            .await
            .unwrap();
        kernel.join().unwrap();
        let Change::Done(took) = change else {
            panic!("{change:?}")
        };
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(freezer.is_frozen());
        freezer.thaw("i1").unwrap();
        assert_eq!(read(tree.dir.join("cgroup.freeze")), "0\n");
        assert!(!freezer.is_frozen());
    }

    #[tokio::test]
    async fn a_freeze_that_never_completes_is_thawed_back() {
        let tree = fake_tree(false);
        let files = tree.layout.freezer("wharf", "i1").unwrap();
        let freezer = Freezer::default();
        let t = Instant::now();
        let err = freezer
            .freeze("i1", Some(files.clone()), Duration::from_millis(40))
            .await
            .unwrap_err();
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(40) && took < Duration::from_secs(1),
            "{took:?}"
        );
        let FreezeError::Timeout { id, state, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!((id.as_str(), state.as_str()), ("i1", "frozen 0"));
        let text = err.to_string();
        assert!(
            text.contains("instance i1 did not freeze") && text.contains("thawed again"),
            "{text}"
        );
        // Thawed back, and the tracked state says so.
        assert_eq!(read(tree.dir.join("cgroup.freeze")), "0\n");
        assert!(!freezer.is_frozen());
        // A caller that gives up on the freeze (drops its future) thaws it back too.
        let abandoned = tokio::time::timeout(
            Duration::from_millis(30),
            freezer.freeze("i1", Some(files.clone()), FREEZE_TIMEOUT),
        )
        .await;
        assert!(abandoned.is_err(), "{abandoned:?}");
        assert_eq!(read(tree.dir.join("cgroup.freeze")), "0\n");
        assert!(!freezer.is_frozen());
        // A later freeze tries again.
        std::fs::write(&files.state, "populated 1\nfrozen 1\n").unwrap();
        let again = freezer
            .freeze("i1", Some(files), Duration::from_millis(40))
            .await;
        assert!(matches!(again, Ok(Change::Done(_))), "{again:?}");
    }

    /// A thaw while the freeze waits for the kernel wins: the freeze ends `Cancelled`.
    #[tokio::test]
    async fn a_thaw_cancels_a_freeze_in_progress() {
        let tree = fake_tree(false);
        let files = tree.layout.freezer("wharf", "i1").unwrap();
        let freezer = Freezer::default();
        let thaw_soon = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(freezer.is_frozen(), "freezing counts as frozen");
            freezer.thaw("i1")
        };
        let (frozen, thawed) =
            tokio::join!(freezer.freeze("i1", Some(files), FREEZE_TIMEOUT), thaw_soon);
        assert!(matches!(thawed, Ok(Change::Done(_))), "{thawed:?}");
        let err = frozen.unwrap_err();
        assert!(matches!(err, FreezeError::Cancelled { .. }), "{err}");
        assert_eq!(read(tree.dir.join("cgroup.freeze")), "0\n");
        assert!(!freezer.is_frozen());
    }

    #[tokio::test]
    async fn stop_thaws_and_refuses_later_freezes() {
        let tree = fake_tree(true);
        let files = tree.layout.freezer("wharf", "i1").unwrap();
        let freezer = Freezer::default();
        freezer
            .freeze("i1", Some(files.clone()), FREEZE_TIMEOUT)
            .await
            .unwrap();
        assert!(matches!(freezer.stop("i1").unwrap(), Change::Done(_)));
        assert_eq!(read(tree.dir.join("freezer.state")), "THAWED\n");
        assert!(!freezer.is_frozen());
        let err = freezer
            .freeze("i1", Some(files), FREEZE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, FreezeError::Stopped { .. }), "{err}");
        assert_eq!(freezer.thaw("i1").unwrap(), Change::Already);
        // The files were closed by the stop.
        assert!(freezer.lock().is_none());
    }

    #[tokio::test]
    async fn missing_freezer_and_missing_files() {
        let freezer = Freezer::default();
        let err = freezer
            .freeze("i1", None, FREEZE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, FreezeError::NoFreezer { .. }), "{err}");
        // A cgroup that is gone (a stopped instance): an error naming the file.
        let tree = fake_tree(true);
        let files = tree.layout.freezer("wharf", "gone").unwrap();
        let err = freezer
            .freeze("i1", Some(files), FREEZE_TIMEOUT)
            .await
            .unwrap_err();
        let FreezeError::Open { path, .. } = &err else {
            panic!("{err}")
        };
        assert!(path.ends_with("wharf/gone/freezer.state"), "{err}");
        assert!(!freezer.is_frozen());
    }

    /// A real v2 cgroup on this host's cgroup2 mount (the unified mount of a hybrid host needs
    /// no controller: the freezer is part of cgroup v2) with a busy child: the v2 path against
    /// the kernel, which the integration tests reach only on pure v2 hosts.
    #[tokio::test]
    async fn v2_freezer_of_this_kernel() {
        if !rustix::process::geteuid().is_root() {
            println!("skipped: needs root");
            return;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let layout = CgroupLayout::from_mountinfo(&mountinfo);
        let Some(v2) = layout.v2_mount() else {
            println!("skipped: no cgroup2 mount");
            return;
        };
        let cgroup = V2Child::start(&v2.join(format!("wharf-unit-{}", std::process::id())));
        let files = FreezerFiles {
            kind: FreezerKind::V2,
            control: cgroup.dir.join("cgroup.freeze"),
            state: cgroup.dir.join("cgroup.events"),
        };

        // The kernel wakes a poller of cgroup.events when the state changes.
        let events = NotifiedFile::new(File::open(&files.state).unwrap()).unwrap();
        assert!(events.read().unwrap().contains("frozen 0"));
        let control = files.control.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::write(control, "1").unwrap();
        });
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), async {
            // A wake-up may be spurious: done when the text says so.
            loop {
                events.changed().await.unwrap();
                if events.read().unwrap().contains("frozen 1") {
                    break;
                }
            }
        })
        .await
        .expect("no POLLPRI from cgroup.events");
        assert!(
            t.elapsed() >= Duration::from_millis(15),
            "{:?}",
            t.elapsed()
        );
        writer.join().unwrap();
        std::fs::write(&files.control, "0").unwrap();

        // Through the freezer: frozen, the CPU time stands still; thawed in the write.
        let freezer = Freezer::default();
        let change = freezer
            .freeze("i1", Some(files.clone()), FREEZE_TIMEOUT)
            .await
            .unwrap();
        println!("v2 freeze: {change:?}");
        assert!(matches!(
            freezer.lock().as_ref().unwrap().state,
            StateFile::Notified(_)
        ));
        let cpu = cgroup.cpu_ticks();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(cgroup.cpu_ticks(), cpu, "a frozen task ran");
        let Change::Done(took) = freezer.thaw("i1").unwrap() else {
            panic!("not thawed")
        };
        println!("v2 thaw: {took:?}");
        let events = std::fs::read_to_string(&files.state).unwrap();
        assert!(events.contains("frozen 0"), "{events}");
        assert_eq!(cgroup.task_state(), 'R', "runnable right after the write");
        let end = Instant::now() + Duration::from_secs(5);
        while cgroup.cpu_ticks() == cpu {
            assert!(Instant::now() < end, "the thawed task never ran");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `<v2>/<parent>/i1` with a busy `sh` in it; everything removed on drop.
    struct V2Child {
        parent: PathBuf,
        dir: PathBuf,
        child: std::process::Child,
    }

    impl V2Child {
        fn start(parent: &std::path::Path) -> V2Child {
            let dir = parent.join("i1");
            std::fs::create_dir_all(&dir).unwrap();
            let child = std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap();
            let cgroup = V2Child {
                parent: parent.to_owned(),
                dir,
                child,
            };
            std::fs::write(
                cgroup.dir.join("cgroup.procs"),
                cgroup.child.id().to_string(),
            )
            .unwrap();
            cgroup
        }

        fn stat(&self) -> Vec<String> {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
            let (_, rest) = stat.rsplit_once(") ").unwrap();
            rest.split(' ').map(str::to_owned).collect()
        }

        /// utime + stime (fields 14 and 15 of /proc/<pid>/stat).
        fn cpu_ticks(&self) -> u64 {
            let f = self.stat();
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        }

        fn task_state(&self) -> char {
            self.stat()[0].chars().next().unwrap()
        }
    }

    impl Drop for V2Child {
        fn drop(&mut self) {
            let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir(&self.dir);
            let _ = std::fs::remove_dir(&self.parent);
        }
    }

    #[test]
    fn freezer_state_texts() {
        assert_eq!(FreezerKind::V1.is_frozen("FROZEN\n"), Some(true));
        assert_eq!(FreezerKind::V1.is_frozen("FREEZING\n"), Some(false));
        assert_eq!(FreezerKind::V1.is_frozen("THAWED\n"), Some(false));
        assert_eq!(FreezerKind::V1.is_frozen("?"), None);
        assert_eq!(FreezerKind::V1.describe_state("FREEZING\n"), "FREEZING");
        assert_eq!(
            FreezerKind::V2.is_frozen("populated 1\nfrozen 1\n"),
            Some(true)
        );
        assert_eq!(
            FreezerKind::V2.is_frozen("populated 1\nfrozen 0\n"),
            Some(false)
        );
        assert_eq!(FreezerKind::V2.is_frozen("populated 1\n"), None);
        assert_eq!(
            FreezerKind::V2.describe_state("populated 0\nfrozen 0\n"),
            "frozen 0"
        );
        assert_eq!(FreezerKind::V1.request(true), "FROZEN");
        assert_eq!(FreezerKind::V1.request(false), "THAWED");
        assert_eq!(FreezerKind::V2.request(true), "1");
        assert_eq!(FreezerKind::V2.request(false), "0");
    }
}
