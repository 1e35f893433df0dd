//! File-system work on the async runtime's threads.
//!
//! Starting and stopping an instance does a few milliseconds of blocking system calls (mkdir,
//! mount, umount, writing `config.json`, removing the bundle). On the daemon's multi-threaded
//! runtime they run under [`tokio::task::block_in_place`], which hands this worker's other tasks
//! to another worker meanwhile, so warm invocations are not held up. (A current-thread runtime,
//! as in unit tests, has no other worker: the work then simply runs.)

use tokio::runtime::{Handle, RuntimeFlavor};

pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
