//! Readiness: "is the function listening yet?", answered within a fraction of a millisecond.
//!
//! A bare process is ready about 1 ms after `runtime start`; a 1 s probe would make every cold
//! start ten times slower than it needs to be. [`wait_listening`] tries to connect through the
//! connector, and on `ECONNREFUSED` waits a short, growing backoff (200 µs, ×1.5, capped at
//! 5 ms) — or less, if the init process exits first, which ends the wait at once.
//!
//! tokio's timers have millisecond granularity, too coarse for a 200 µs backoff, so the
//! backoff sleeps on a `timerfd` (CLOCK_MONOTONIC) registered with tokio.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::netns::Connector;
use crate::{ExitInfo, NotListening};

pub(crate) const FIRST_BACKOFF: Duration = Duration::from_micros(200);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_millis(5);

/// The backoff after `previous`: ×1.5, at most [`MAX_BACKOFF`].
pub(crate) fn next_backoff(previous: Duration) -> Duration {
    (previous * 3 / 2).min(MAX_BACKOFF)
}

/// A one-shot timer with microsecond resolution.
pub(crate) struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    pub fn new() -> io::Result<PreciseTimer> {
        // SAFETY: timerfd_create has no memory arguments; the result is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open, the same descriptor, for
        // its whole lifetime.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(PreciseTimer { fd })
    }

    pub async fn sleep(&self, duration: Duration) -> io::Result<()> {
        let duration = duration.max(Duration::from_nanos(1)); // zero would disarm the timer
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: duration.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(duration.subsec_nanos() as i32),
            },
        };
        // SAFETY: valid fd, valid pointer to an initialised itimerspec, no old value wanted.
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match rustix::io::read(self.fd.get_ref(), &mut expirations) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Poll-connect to `127.0.0.1:port` in `netns` until it works, the init exits, or the deadline.
pub(crate) async fn wait_listening(
    connector: &Connector,
    netns: &Arc<OwnedFd>,
    port: u16,
    deadline: Duration,
    exit: &watch::Receiver<Option<ExitInfo>>,
) -> Result<TcpStream, NotListening> {
    let end = Instant::now() + deadline;
    let timer = PreciseTimer::new().ok();
    let mut backoff = FIRST_BACKOFF;
    let mut exit = exit.clone();
    loop {
        let status = *exit.borrow();
        if let Some(info) = status {
            return Err(NotListening::Exited(info));
        }
        let remaining = end.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(NotListening::Deadline);
        }
        // A connect on loopback is refused or accepted at once; the timeout only matters when
        // the listener's backlog is full.
        match tokio::time::timeout(remaining, connector.connect(netns, port)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Ok(Err(e)) => tracing::debug!(error = %e, port, "connect while waiting for a listener"),
            Err(_) => return Err(NotListening::Deadline),
        }
        let remaining = end.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(NotListening::Deadline);
        }
        let pause = backoff.min(remaining);
        backoff = next_backoff(backoff);
        let sleep = async {
            match &timer {
                Some(t) => {
                    if t.sleep(pause).await.is_err() {
                        tokio::time::sleep(pause).await;
                    }
                }
                None => tokio::time::sleep(pause).await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            changed = exit.changed() => {
                let gone = changed.is_err() && exit.borrow().is_none();
                if gone {
                    // The watcher is gone without a status; keep polling until the deadline.
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap() {
        let mut b = FIRST_BACKOFF;
        let mut steps = vec![b];
        while b < MAX_BACKOFF {
            b = next_backoff(b);
            steps.push(b);
        }
        assert_eq!(steps[1], Duration::from_micros(300));
        assert_eq!(*steps.last().unwrap(), MAX_BACKOFF);
        assert!(steps.len() < 12, "{steps:?}");
    }

    #[tokio::test]
    async fn precise_timer_sleeps_below_a_millisecond() {
        let timer = PreciseTimer::new().unwrap();
        let mut best = Duration::MAX;
        for _ in 0..20 {
            let start = Instant::now();
            timer.sleep(Duration::from_micros(200)).await.unwrap();
            let took = start.elapsed();
            assert!(took >= Duration::from_micros(200));
            best = best.min(took);
        }
        // Busy CI machines are noisy; the best of 20 is still well under tokio's 1 ms tick.
        assert!(best < Duration::from_micros(900), "best {best:?}");
    }
}
