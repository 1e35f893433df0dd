//! Watching and reaping an instance's init process.
//!
//! Wharf is a child subreaper, so when `runtime create` exits the container's init becomes our
//! child. We hold a pidfd for it: the pidfd turns readable when the process exits (tokio
//! `AsyncFd`, no thread, no timer), and `waitid(P_PIDFD, WEXITED)` reaps exactly that process.
//! Never `waitpid(-1)`: tokio's process driver reaps its own children, and a global wait would
//! steal their statuses.
//!
//! The watcher task outlives a dropped `Instance`: a container killed later (by `recover`, by
//! hand) is still reaped instead of lingering as a zombie.
//!
//! It emits the instance's `Exited` event, once the start has succeeded (it is armed with the
//! instance's [`Events`] then, after `Started`; a failed start drops the arming and nothing is
//! emitted), and before it publishes the exit, so that whoever sees the exit (a stop going
//! on to `Removed`) sees it after the event.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::process::{WaitId, WaitIdOptions, WaitIdStatus};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};

use crate::events::Events;
use crate::{ExitInfo, InstanceEvent};

/// Spawn the watcher of `pidfd`; the returned receiver holds `Some(exit)` once it exited.
/// `armed` brings the events of a started instance (see the module docs).
pub(crate) fn watch_exit(
    id: &str,
    pid: u32,
    pidfd: Arc<OwnedFd>,
    armed: oneshot::Receiver<Events>,
) -> std::io::Result<watch::Receiver<Option<ExitInfo>>> {
    let (tx, rx) = watch::channel(None);
    // SAFETY: the Arc<OwnedFd> moves into the AsyncFd; the descriptor stays open and the same
    // for the AsyncFd's whole lifetime (other clones of the Arc only add owners).
    let async_fd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }?;
    let id = id.to_owned();
    tokio::spawn(async move {
        let exit = wait_exit(&async_fd).await;
        debug!(instance = %id, pid, ?exit, "init exited");
        // Waits at most until the start returns.
        if let Ok(events) = armed.await {
            events.emit(InstanceEvent::Exited(exit));
        }
        let _ = tx.send(Some(exit));
    });
    Ok(rx)
}

async fn wait_exit(async_fd: &AsyncFd<Arc<OwnedFd>>) -> ExitInfo {
    loop {
        let mut guard = match async_fd.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                warn!(error = %e, "polling a pidfd failed");
                return ExitInfo::Signaled(libc::SIGKILL);
            }
        };
        match try_reap(async_fd.get_ref().as_fd()) {
            Ok(Some(exit)) => return exit,
            Ok(None) => guard.clear_ready(),
            Err(e) => {
                // ECHILD: not our child (we were not its subreaper); the process is gone but
                // its status went elsewhere.
                warn!(error = %e, "waitid on a pidfd failed");
                return ExitInfo::Signaled(libc::SIGKILL);
            }
        }
    }
}

/// `waitid(P_PIDFD, fd, WEXITED | WNOHANG)`.
fn try_reap(pidfd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Option<ExitInfo>> {
    loop {
        match rustix::process::waitid(
            WaitId::PidFd(pidfd),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(status) => return Ok(status.and_then(|s| exit_info(&s))),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reap a process that is dead or about to be (after `runtime delete --force`), waiting at
/// most `patience`. For the start-up probe's init, which has no watcher. `None` if it is not
/// our child or did not exit in time.
pub(crate) fn reap_blocking(
    pidfd: std::os::fd::BorrowedFd<'_>,
    patience: std::time::Duration,
) -> Option<ExitInfo> {
    let end = std::time::Instant::now() + patience;
    loop {
        match try_reap(pidfd) {
            Ok(Some(exit)) => return Some(exit),
            Ok(None) if std::time::Instant::now() < end => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok(None) | Err(_) => return None,
        }
    }
}

fn exit_info(status: &WaitIdStatus) -> Option<ExitInfo> {
    if let Some(code) = status.exit_status() {
        return Some(ExitInfo::Exited(code));
    }
    status.terminating_signal().map(ExitInfo::Signaled)
}
