//! Detail log lines under a flood.
//!
//! One bad producer can make every event fail the same rule: ten thousand
//! events, ten thousand identical WARN lines. A [`Throttle`] lets through
//! at most [`LINES_PER_WINDOW`] lines per key (a rule id, a source and
//! reason) per [`WINDOW`] and counts the rest; the next line let through
//! for that key carries how many were held back (`suppressed=N`). Counters
//! never go through here: metrics stay exact, only the logging is sampled.
//! Sources that see a batch (an HTTP request) add one summary line of
//! their own.
//!
//! The table holds one small entry per key seen in the last window; keys
//! are rule ids and source reasons, a bounded set, and it is cleared of
//! quiet keys when it grows past [`MAX_KEYS`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Detail lines per key per window.
pub const LINES_PER_WINDOW: u32 = 5;

/// The window of [`LINES_PER_WINDOW`].
pub const WINDOW: Duration = Duration::from_secs(10);

/// Keys kept before quiet ones are forgotten.
const MAX_KEYS: usize = 10_000;

/// Per-key line budget; see the module docs.
#[derive(Debug, Default)]
pub struct Throttle {
    keys: Mutex<HashMap<String, Budget>>,
}

#[derive(Debug)]
struct Budget {
    since: Instant,
    lines: u32,
    suppressed: u64,
}

impl Throttle {
    /// Whether a line for `key` may be written now: `Some(n)` with the
    /// number of lines held back for this key since the last one written,
    /// `None` to skip it (it is counted).
    pub fn allow(&self, key: &str) -> Option<u64> {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
            keys.retain(|_, b| now.duration_since(b.since) < WINDOW || b.suppressed > 0);
        }
        let budget = keys.entry(key.to_string()).or_insert(Budget {
            since: now,
            lines: 0,
            suppressed: 0,
        });
        if now.duration_since(budget.since) >= WINDOW {
            budget.since = now;
            budget.lines = 0;
        }
        if budget.lines < LINES_PER_WINDOW {
            budget.lines += 1;
            Some(std::mem::take(&mut budget.suppressed))
        } else {
            budget.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_a_few_lines_per_window_and_the_next_says_how_many_were_held() {
        let t = Throttle::default();
        let start = Instant::now();
        let written: Vec<_> = (0..1000)
            .filter_map(|_| t.allow_at("rule-a", start))
            .collect();
        assert_eq!(written, vec![0; LINES_PER_WINDOW as usize]);
        // Another key has its own budget.
        assert_eq!(t.allow_at("rule-b", start), Some(0));
        let later = start + WINDOW;
        assert_eq!(
            t.allow_at("rule-a", later),
            Some(1000 - u64::from(LINES_PER_WINDOW))
        );
        assert_eq!(t.allow_at("rule-a", later), Some(0));
    }
}
