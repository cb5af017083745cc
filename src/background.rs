//! One low-priority thread for the service's background work (engine snapshots,
//! eviction). That work copies gigabytes of state; run at normal priority on a small
//! machine it takes CPU time from the threads answering `Score`, which shows as a
//! tail-latency spike during every snapshot. At the lowest priority it runs on the
//! time request threads leave idle (they block on I/O and locks often), and it still
//! gets a share under full load, so snapshots are late, never starved.

use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// The background thread went away (it panicked, or the process is ending).
#[derive(Debug, thiserror::Error)]
#[error("the background worker has stopped")]
pub struct Stopped;

/// Runs jobs one at a time, in order, on its own low-priority thread. Dropping it lets
/// the thread finish the queued jobs and end.
pub struct Background {
    jobs: mpsc::Sender<Job>,
}

impl Background {
    /// A thread at the lowest priority (nice 19).
    pub fn start(name: &str) -> std::io::Result<Self> {
        Self::start_at(name, LOWEST)
    }

    /// A thread at `nice` (0 normal .. 19 lowest).
    pub fn start_at(name: &str, nice: i32) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                lower_current_thread_priority_to(nice);
                for job in queue {
                    job();
                }
            })?;
        Ok(Background { jobs })
    }

    /// Runs `job` on the background thread and waits (asynchronously) for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(job());
            }))
            .map_err(|_| Stopped)?;
        result.await.map_err(|_| Stopped)
    }
}

/// The lowest scheduling priority.
const LOWEST: i32 = 19;

/// Gives the calling thread the lowest scheduling priority (nice 19).
pub fn lower_current_thread_priority() {
    lower_current_thread_priority_to(LOWEST);
}

/// Gives the calling thread the scheduling priority `nice`. On Linux the nice value
/// belongs to the thread, not the process, so the request threads keep theirs.
/// Failure only costs latency, so it is logged and otherwise ignored.
pub fn lower_current_thread_priority_to(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority has no memory-safety preconditions; `who = 0` names the
        // calling thread under Linux's per-thread nice values.
        let status = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        if status != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not lower the background thread's priority"
            );
        }
    }
}
