//! Scale-in: one sweeper task for the whole pool stops instances that have been idle for longer
//! than their function's idle timeout (the pool's by default), and notices idle instances that
//! exited on their own. It sweeps at least once a second, so a function's shorter timeout is
//! kept within a second. It also starts instances for waiting requests that room freed for
//! unnoticed, and keeps each function's reserve (`min_instances`): the instances
//! it lacks are started, and its idle ones are never stopped for idling.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::PoolInner;

/// The sweep interval: a quarter of the idle timeout, between these bounds.
const MIN_SWEEP: Duration = Duration::from_millis(50);
const MAX_SWEEP: Duration = Duration::from_secs(1);

/// Starts the sweeper; it ends at shutdown (or when the pool is gone).
pub(crate) fn spawn_sweeper(inner: &Arc<PoolInner>) {
    let interval = (inner.config.idle_timeout / 4).clamp(MIN_SWEEP, MAX_SWEEP);
    let shutdown = inner.shutdown.clone();
    let pool: Weak<PoolInner> = Arc::downgrade(inner);
    inner.tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let Some(pool) = pool.upgrade() else { return };
            sweep(&pool);
        }
    });
}

fn sweep(pool: &Arc<PoolInner>) {
    let functions: Vec<_> = pool
        .functions
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    for fp in functions {
        let expired = fp.take_expired(&pool.config);
        for i in &expired {
            if let Some(exit) = i.sandbox().exit_status() {
                i.revision.spec.log.system(
                    i.id(),
                    &format!("instance exited on its own while idle ({exit})"),
                );
            }
        }
        pool.stop_in_background(expired);
        keep_reserve(pool, &fp);
        // Room may have freed without a release noticing (an instance that exited).
        let wanted = fp.starts_wanted();
        pool.follow_up(&fp, wanted);
    }
}

/// Starts the instances a function's `min_instances` lacks (after a deploy, or when one died),
/// in the background; each becomes idle once ready.
pub(crate) fn keep_reserve(pool: &Arc<PoolInner>, fp: &Arc<crate::function::FunctionPool>) {
    let (revision, missing) = fp.reserve_missing();
    for _ in 0..missing {
        pool.start_instance(fp, revision.clone(), false);
    }
}
