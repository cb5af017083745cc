//! Progress bars for a training run on the terminal: a bar over the history replay,
//! then a spinner while the family fits and the hold-out is scored. indicatif hides
//! them when stderr is not a terminal (CI logs, pipes), so scripts stay quiet.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::pipeline::Progress;

pub struct TrainingBar {
    bar: ProgressBar,
    family: String,
}

impl TrainingBar {
    pub fn new(family: &str, events: u64) -> TrainingBar {
        let bar = ProgressBar::new(events);
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>12} replay [{bar:30}] {human_pos}/{human_len} events ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(family.to_string());
        TrainingBar {
            bar,
            family: family.to_string(),
        }
    }

    /// A bar for a family fitted on a training set already built (no replay of its
    /// own): a spinner from the start, never an empty `replay 0/0` bar.
    pub fn fitting(family: &str) -> TrainingBar {
        TrainingBar::spinner(family, "preparing")
    }

    /// A spinner saying `message` until [`TrainingBar::finish`].
    pub fn spinner(prefix: &str, message: &str) -> TrainingBar {
        let bar = TrainingBar {
            bar: ProgressBar::new(0),
            family: prefix.to_string(),
        };
        bar.spin(message.to_string());
        bar
    }

    /// Changes a spinner's message.
    pub fn message(&self, message: String) {
        self.bar.set_message(message);
    }

    pub fn show(&self, step: Progress) {
        match step {
            Progress::Replayed(done) => self.bar.set_position(done),
            Progress::Fitting { rows } => {
                self.bar.set_position(self.bar.length().unwrap_or(0));
                self.spin(format!("fitting on {rows} rows"));
            }
            Progress::Evaluating { rows } => self.spin(format!("scoring {rows} hold-out rows")),
        }
    }

    fn spin(&self, message: String) {
        if let Ok(style) = ProgressStyle::with_template("{prefix:>12} {spinner} {msg} ({elapsed})")
        {
            self.bar.set_style(style);
        }
        self.bar.set_prefix(self.family.clone());
        self.bar.set_message(message);
        self.bar.enable_steady_tick(Duration::from_millis(120));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
