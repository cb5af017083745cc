//! Giving memory back to the system after a burst of load. glibc's allocator keeps
//! what a burst freed in its per-thread arenas (measured: 16 streams of refused batches
//! left the server at 211 MB resident after they were cancelled, from 16 MB), so once
//! the in-flight budget has been busy and is quiet again, the arenas are trimmed.

use std::sync::Arc;
use std::time::Duration;

use super::budget::Budget;

/// How often the budget is looked at.
const TICK: Duration = Duration::from_millis(500);

/// A burst smaller than this is not worth a trim (it walks every arena).
const TRIM_AFTER_BYTES: usize = 16 << 20;

/// Trims the allocator's arenas whenever the bytes in flight fall to a quarter of the
/// most held since the last trim, after a burst of at least [`TRIM_AFTER_BYTES`].
pub async fn after_load(budget: Arc<Budget>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peak = 0;
    loop {
        ticks.tick().await;
        peak = budget.take_high_water().max(peak);
        if peak >= TRIM_AFTER_BYTES && budget.bytes_in_use() <= peak / 4 {
            tracing::debug!(peak, "load has passed: giving freed memory back");
            peak = 0;
            if tokio::task::spawn_blocking(trim).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
