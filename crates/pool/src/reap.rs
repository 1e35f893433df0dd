//! Scale-in: one sweeper task for the whole pool stops instances that have been idle for longer
//! than the idle timeout, and notices idle instances that exited on their own.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::PoolInner;

/// The sweep interval: a quarter of the idle timeout, between these bounds.
const MIN_SWEEP: Duration = Duration::from_millis(50);
const MAX_SWEEP: Duration = Duration::from_secs(1);

pub(crate) fn spawn_sweeper(pool: Weak<PoolInner>) {
    tokio::spawn(async move {
        loop {
            let interval = match pool.upgrade() {
                Some(p) => (p.config.idle_timeout / 4).clamp(MIN_SWEEP, MAX_SWEEP),
                None => return,
            };
            tokio::time::sleep(interval).await;
            let Some(pool) = pool.upgrade() else { return };
            if pool.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            sweep(&pool);
        }
    });
}

fn sweep(pool: &PoolInner) {
    let functions: Vec<_> = pool
        .functions
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    for fp in functions {
        let expired = fp.take_expired(pool.config.idle_timeout);
        for i in &expired {
            if let Some(exit) = i.sandbox().exit_status() {
                i.revision.spec.log.system(
                    i.id(),
                    &format!("instance exited on its own while idle ({exit:?})"),
                );
            }
        }
        pool.stop_in_background(expired);
    }
}
