//! Answers to recorded calls, kept by event id so that a retry of a recorded `Score`
//! (same `event_id`) gets the first attempt's answer instead of being scored again on
//! features that already count its first attempt.
//!
//! Bounded: at most `capacity` answers, the oldest dropped first. An answer is stored
//! under the store's one writer together with the event it recorded, so a retry that
//! finds the event already admitted always finds its answer too, unless it was dropped
//! for room or the server restarted since (answers live in memory only); the caller
//! then fails closed and says so.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

/// An answer as the caller made it; the store does not look inside.
pub type Answer = Arc<dyn std::any::Any + Send + Sync>;

/// Answers by event id, oldest dropped first past the capacity.
pub struct RecentAnswers {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Answer>,
    order: VecDeque<String>,
}

impl RecentAnswers {
    pub fn new(capacity: usize) -> RecentAnswers {
        RecentAnswers {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    /// Keeps `answer` for `event_id` (replacing an older one for the same id).
    pub fn remember(&self, event_id: &str, answer: Answer) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.by_id.insert(event_id.to_string(), answer).is_none() {
            inner.order.push_back(event_id.to_string());
        }
        while inner.order.len() > self.capacity {
            if let Some(oldest) = inner.order.pop_front() {
                inner.by_id.remove(&oldest);
            }
        }
    }

    pub fn recall(&self, event_id: &str) -> Option<Answer> {
        self.inner.lock().by_id.get(event_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_answers_up_to_its_capacity() {
        let answers = RecentAnswers::new(3);
        for n in 0..5u32 {
            answers.remember(&format!("e{n}"), Arc::new(n));
        }
        assert_eq!(answers.len(), 3);
        assert!(answers.recall("e1").is_none(), "the oldest are dropped");
        let kept = answers.recall("e4").expect("newest kept");
        assert_eq!(kept.downcast_ref::<u32>(), Some(&4));
        // Replacing an answer does not take a second place.
        answers.remember("e4", Arc::new(40u32));
        assert_eq!(answers.len(), 3);
        assert!(answers.recall("e2").is_some());
    }
}
