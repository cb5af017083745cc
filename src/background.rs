//! One low-priority thread for the service's background work (engine snapshots,
//! eviction). That work copies gigabytes of state; run at normal priority on a small
//! machine it takes CPU time from the threads answering `Score`, which shows as a
//! tail-latency spike during every snapshot. At the lowest priority it runs on the
//! time request threads leave idle (they block on I/O and locks often), and it still
//! gets a share under full load, so snapshots are late, never starved.

use std::sync::mpsc;

use crate::config::MAX_CPUS;

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
        Self::start_on(name, nice, &[])
    }

    /// A thread at `nice` that runs on `cpus` only (empty: any; see [`pin_current_thread`]).
    pub fn start_on(name: &str, nice: i32, cpus: &[usize]) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let cpus = cpus.to_vec();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                pin_current_thread(&cpus);
                lower_current_thread_priority_to(nice);
                for job in queue {
                    job();
                }
            })?;
        Ok(Background { jobs })
    }

    /// Queues `job` on the background thread without waiting for it; a stopped thread
    /// runs it here instead.
    pub fn detach(&self, job: impl FnOnce() + Send + 'static) {
        if let Err(returned) = self.jobs.send(Box::new(job)) {
            (returned.0)();
        }
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

/// Runs the calling thread on `cpus` only; empty leaves it where it is. Used to keep
/// the ingest threads apart from the request threads: on shared cores a busy writer
/// delays the threads answering `Score` by whole scheduler slices (measured on 2
/// cores: `Score` p99 3-6x beside heavy ingest, even when the ingest went to another
/// server process at the lowest priority; 1.3x with the ingest threads on one core).
/// Failure (a CPU outside the process's allowed set) is logged; the thread still runs.
pub fn pin_current_thread(cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is a plain bit array, valid when zeroed; CPU_SET is given
        // numbers below MAX_CPUS (CPU_SETSIZE), so it stays inside the array; and
        // sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes of `set`.
        let status = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in cpus.iter().filter(|&&cpu| cpu < MAX_CPUS) {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if status != 0 {
            tracing::error!(
                error = %std::io::Error::last_os_error(),
                ?cpus,
                "could not pin the thread to its CPUs; it runs on any"
            );
        }
    }
}
