//! Sliding windows made of tiles, and their exact semantics.
//!
//! A window of nominal length `W` is cut into tiles of `s` milliseconds, where `s` is the
//! largest whole number of seconds that divides `W` and is at most `W / 24` (so a window
//! holds at least 24 tiles and tiles are never coarser than 1/24 of the window). Tile `k`
//! holds the events with `k * s <= event_time < (k + 1) * s`.
//!
//! A read at time `t` sees the `n + 1` tiles `tile(t) - n ..= tile(t)` where
//! `n = W / s` and `tile(t) = floor(t / s)`. That covers the nominal window `(t - W, t]`
//! and, exactly:
//! - the old edge reaches back to `(tile(t) - n) * s`, which is at most one tile (`s`)
//!   further back than `t - W`, never less far;
//! - the new edge is `t` itself: an event stamped after `t` is never seen, even inside
//!   `t`'s tile. The engine keeps an entity's newest events apart from its tiles until
//!   no read may be older than they are (see `features::state::EntityState::recent`), so a read
//!   "as of" a past moment leaves them out exactly.
//!
//! A lifetime window is a single tile that every read sees (events after `t` excepted).

use serde::{Deserialize, Serialize};

use crate::time::{SECOND_MS, format_duration_ms};

/// Tiles per window at the least; the resolution guarantee of the engine.
pub const MIN_TILES: i64 = 24;
/// Windows must be whole seconds and at least this long, so a tile is at least 1 s.
pub const MIN_WINDOW_MS: i64 = MIN_TILES * SECOND_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Window {
    Lifetime,
    Sliding { length_ms: i64, tile_ms: i64 },
}

impl Window {
    /// A sliding window of `length_ms`, with its tile size chosen as the module doc says.
    pub fn sliding(length_ms: i64) -> Result<Window, String> {
        if length_ms < MIN_WINDOW_MS || length_ms % SECOND_MS != 0 {
            return Err(format!(
                "window {} must be a whole number of seconds and at least {}",
                format_duration_ms(length_ms),
                format_duration_ms(MIN_WINDOW_MS)
            ));
        }
        let seconds = length_ms / SECOND_MS;
        let tile_seconds = (1..=seconds / MIN_TILES)
            .rev()
            .find(|d| seconds % d == 0)
            .unwrap_or(1);
        Ok(Window::Sliding {
            length_ms,
            tile_ms: tile_seconds * SECOND_MS,
        })
    }

    /// The tile an event at `time_ms` falls into.
    pub fn tile_of(&self, time_ms: i64) -> u32 {
        match self {
            Window::Lifetime => 0,
            // Event times are validated positive and tiles are >= 1 s, so the quotient
            // fits u32 until the year 2106; saturate rather than wrap beyond that.
            Window::Sliding { tile_ms, .. } => {
                u32::try_from(time_ms.max(0) / tile_ms).unwrap_or(u32::MAX)
            }
        }
    }

    /// The inclusive tile range a read at `time_ms` sees.
    pub fn tiles_read_at(&self, time_ms: i64) -> (u32, u32) {
        match self {
            Window::Lifetime => (0, 0),
            Window::Sliding { length_ms, tile_ms } => {
                let newest = self.tile_of(time_ms);
                (newest.saturating_sub((length_ms / tile_ms) as u32), newest)
            }
        }
    }

    /// The nominal length, `None` for lifetime.
    pub fn length_ms(&self) -> Option<i64> {
        match self {
            Window::Lifetime => None,
            Window::Sliding { length_ms, .. } => Some(*length_ms),
        }
    }

    pub fn tile_ms(&self) -> Option<i64> {
        match self {
            Window::Lifetime => None,
            Window::Sliding { tile_ms, .. } => Some(*tile_ms),
        }
    }

    /// `10m`, `7d`, or `lifetime`.
    pub fn label(&self) -> String {
        match self {
            Window::Lifetime => "lifetime".to_string(),
            Window::Sliding { length_ms, .. } => format_duration_ms(*length_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{DAY_MS, HOUR_MS, MINUTE_MS};

    #[test]
    fn default_windows_get_24_tiles() {
        for length in [10 * MINUTE_MS, HOUR_MS, DAY_MS, 7 * DAY_MS, 30 * DAY_MS] {
            let window = Window::sliding(length).unwrap();
            assert_eq!(window.tile_ms().unwrap() * 24, length);
        }
    }

    #[test]
    fn odd_windows_get_at_least_24_whole_second_tiles() {
        let window = Window::sliding(37 * SECOND_MS).unwrap();
        assert_eq!(window.tile_ms(), Some(SECOND_MS));
        let window = Window::sliding(25 * MINUTE_MS).unwrap();
        let tile = window.tile_ms().unwrap();
        assert_eq!((25 * MINUTE_MS) % tile, 0);
        assert!(tile * 24 <= 25 * MINUTE_MS);
        assert!(Window::sliding(10 * SECOND_MS).is_err());
        assert!(Window::sliding(30_500).is_err());
    }

    #[test]
    fn reads_reach_back_at_most_one_tile_past_the_window() {
        let window = Window::sliding(HOUR_MS).unwrap();
        let tile = window.tile_ms().unwrap();
        for t in [
            HOUR_MS * 1000,
            HOUR_MS * 1000 + 1,
            HOUR_MS * 1000 + tile - 1,
        ] {
            let (oldest, newest) = window.tiles_read_at(t);
            let old_edge = i64::from(oldest) * tile;
            assert!(old_edge <= t - HOUR_MS);
            assert!(t - HOUR_MS - old_edge < tile);
            assert_eq!(i64::from(newest), t / tile);
        }
    }
}
