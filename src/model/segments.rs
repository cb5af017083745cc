//! Customer segments as a served model family: k-means centroids over standardised
//! features (the artifact's columns and preprocessing). Its score for a row is the
//! index of the nearest centroid, the segment, so `Score` (and V2) on a segments
//! artifact answers which segment an entity's current features fall in.

use serde::{Deserialize, Serialize};

use super::squared_distance;
use super::validate::{Invalid, invalid};

/// Most segments an artifact may hold.
pub const MAX_SEGMENTS: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Centroids {
    /// `k` centroids of `columns` values each, row-major, in standardised units.
    pub centroids: Vec<f64>,
    /// Training rows assigned to each segment.
    pub sizes: Vec<u64>,
}

impl Centroids {
    pub fn k(&self) -> usize {
        self.sizes.len()
    }

    /// The nearest centroid of a standardised row (the lowest index on a tie).
    pub fn nearest(&self, standardised: &[f64]) -> usize {
        let width = standardised.len().max(1);
        let mut best = (0, f64::INFINITY);
        for (index, centroid) in self.centroids.chunks(width).enumerate() {
            let distance = squared_distance(centroid, standardised);
            if distance < best.1 {
                best = (index, distance);
            }
        }
        best.0
    }

    pub fn validate(&self, columns: usize) -> Result<(), Invalid> {
        let k = self.k();
        if k == 0 || k > MAX_SEGMENTS {
            return invalid(format!(
                "a segments model needs 1 to {MAX_SEGMENTS} centroids, has {k}"
            ));
        }
        if Some(self.centroids.len()) != k.checked_mul(columns) {
            return invalid(format!(
                "centroids hold {} values, not {k} segments x {columns} columns",
                self.centroids.len()
            ));
        }
        match self.centroids.iter().position(|v| !v.is_finite()) {
            Some(at) => invalid(format!("centroids[{at}] is not a finite number")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_centroid_wins_and_ties_go_to_the_first() {
        let c = Centroids {
            centroids: vec![0.0, 0.0, 2.0, 2.0, 0.0, 4.0],
            sizes: vec![1, 1, 1],
        };
        assert_eq!(c.nearest(&[1.9, 1.5]), 1);
        assert_eq!(c.nearest(&[0.0, 1.9]), 0);
        assert_eq!(c.nearest(&[1.0, 1.0]), 0, "equidistant from 0 and 1");
        assert!(c.validate(2).is_ok());
        assert!(c.validate(3).is_err());
    }
}
