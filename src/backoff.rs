//! Pauses between attempts after failures: growing over failures in a row up to the
//! last step, and starting over after a success or after a run that went well for a
//! while, so a failure a day later is not the fifth of a streak.

use std::time::Duration;

/// A run at least this long counts as a success: the pauses start over after it.
pub const HEALTHY_RUN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Backoff {
    steps: &'static [Duration],
    failures: usize,
}

impl Backoff {
    /// Pauses `steps` in turn, then the last one again; `steps` must not be empty.
    pub const fn new(steps: &'static [Duration]) -> Backoff {
        Backoff { steps, failures: 0 }
    }

    /// The pause before the next attempt, after a failure.
    pub fn failed(&mut self) -> Duration {
        let last = self.steps.len().saturating_sub(1);
        let pause = self
            .steps
            .get(self.failures.min(last))
            .copied()
            .unwrap_or_default();
        self.failures += 1;
        pause
    }

    /// The pause before the next attempt, after a run that lasted `ran` and then
    /// failed: a run of [`HEALTHY_RUN`] or longer starts the pauses over.
    pub fn failed_after(&mut self, ran: Duration) -> Duration {
        if ran >= HEALTHY_RUN {
            self.succeeded();
        }
        self.failed()
    }

    /// The next failure pauses the first step again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: [Duration; 3] = [
        Duration::from_millis(1),
        Duration::from_millis(2),
        Duration::from_millis(3),
    ];

    #[test]
    fn pauses_grow_to_the_last_step_and_stay_there() {
        let mut backoff = Backoff::new(&STEPS);
        let pauses: Vec<Duration> = (0..5).map(|_| backoff.failed()).collect();
        assert_eq!(pauses, [STEPS[0], STEPS[1], STEPS[2], STEPS[2], STEPS[2]]);
    }

    #[test]
    fn a_success_or_a_healthy_run_starts_the_pauses_over() {
        let mut backoff = Backoff::new(&STEPS);
        backoff.failed();
        backoff.failed();
        backoff.succeeded();
        assert_eq!(backoff.failed(), STEPS[0]);
        assert_eq!(backoff.failed_after(Duration::from_millis(1)), STEPS[1]);
        assert_eq!(backoff.failed_after(HEALTHY_RUN), STEPS[0]);
    }
}
