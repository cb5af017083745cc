//! Hold-out splits: `time` (the latest share of rows, a cut in time: what a model
//! trained on the past and used on the future meets), `random`, or `stratified`
//! (random within each class, so both sides keep the positive rate), seeded; and k
//! folds for cross-validation by the same rule. Index lists come back in time order.

use serde::{Deserialize, Serialize};

use super::dataset::Row;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    #[default]
    Time,
    Random,
    Stratified,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Time => "time",
            Split::Random => "random",
            Split::Stratified => "stratified",
        }
    }
}

/// A small, seeded generator (SplitMix64): the same seed gives the same split on every
/// machine and version.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fisher-Yates.
    fn shuffle(&mut self, items: &mut [usize]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// The groups rows are drawn from: one (all rows) or one per class.
fn groups(rows: &[Row], split: Split) -> Vec<Vec<usize>> {
    match split {
        Split::Stratified => {
            let (positive, negative): (Vec<usize>, Vec<usize>) =
                (0..rows.len()).partition(|i| rows[*i].label > 0.5);
            vec![negative, positive]
        }
        Split::Time | Split::Random => vec![(0..rows.len()).collect()],
    }
}

/// Assigns each row a fold in `0..folds`: consecutive blocks for `time`, shuffled
/// (within each class for `stratified`) otherwise.
pub fn folds(rows: &[Row], folds: usize, split: Split, seed: u64) -> Vec<usize> {
    let mut fold_of = vec![0; rows.len()];
    let mut random = SplitMix(seed);
    for mut group in groups(rows, split) {
        if split != Split::Time {
            random.shuffle(&mut group);
        }
        let size = group.len();
        for (rank, row) in group.into_iter().enumerate() {
            fold_of[row] = rank * folds / size.max(1);
        }
    }
    fold_of
}

/// (training rows, validation rows), each in time order. `time` holds out the latest
/// `holdout` share; the others a seeded random share (of each class for `stratified`).
pub fn holdout(rows: &[Row], holdout: f64, split: Split, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut validation = vec![false; rows.len()];
    let mut random = SplitMix(seed);
    for mut group in groups(rows, split) {
        let held = ((group.len() as f64) * holdout).round() as usize;
        if split != Split::Time {
            random.shuffle(&mut group);
        }
        // Time: the last `held` rows of the group (rows are in time order).
        let skip = if split == Split::Time {
            group.len() - held.min(group.len())
        } else {
            0
        };
        for row in group.into_iter().skip(skip).take(held) {
            validation[row] = true;
        }
    }
    (0..rows.len()).partition(|i| !validation[*i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(labels: &[f64]) -> Vec<Row> {
        labels
            .iter()
            .enumerate()
            .map(|(i, label)| Row {
                event_id: format!("r{i}"),
                time_ms: i as i64,
                values: vec![],
                label: *label,
            })
            .collect()
    }

    #[test]
    fn time_holds_out_the_latest_rows() {
        let set = rows(&[0.0; 8]);
        let (train, validation) = holdout(&set, 0.25, Split::Time, 1);
        assert_eq!(train, [0, 1, 2, 3, 4, 5]);
        assert_eq!(validation, [6, 7]);
    }

    #[test]
    fn stratified_keeps_the_positive_rate_and_the_seed_decides() {
        // 20 positives in 100 rows, all at the start: a time split would hold out none.
        let labels: Vec<f64> = (0..100).map(|i| f64::from(u8::from(i < 20))).collect();
        let set = rows(&labels);
        let (train, validation) = holdout(&set, 0.25, Split::Stratified, 7);
        let positives = |idx: &[usize]| idx.iter().filter(|i| set[**i].label > 0.5).count();
        assert_eq!((validation.len(), positives(&validation)), (25, 5));
        assert_eq!((train.len(), positives(&train)), (75, 15));
        assert!(validation.windows(2).all(|w| w[0] < w[1]), "time order");
        assert_eq!(holdout(&set, 0.25, Split::Stratified, 7).1, validation);
        assert_ne!(holdout(&set, 0.25, Split::Stratified, 8).1, validation);
        let (_, random) = holdout(&set, 0.25, Split::Random, 7);
        assert_eq!(random.len(), 25);
    }

    #[test]
    fn folds_cover_every_row_evenly() {
        let labels: Vec<f64> = (0..30).map(|i| f64::from(u8::from(i % 3 == 0))).collect();
        let set = rows(&labels);
        for split in [Split::Time, Split::Random, Split::Stratified] {
            let fold_of = folds(&set, 5, split, 3);
            for fold in 0..5 {
                let members: Vec<usize> = (0..30).filter(|i| fold_of[*i] == fold).collect();
                assert_eq!(members.len(), 6, "{split:?}");
                if split == Split::Stratified {
                    let positives = members.iter().filter(|i| set[**i].label > 0.5).count();
                    assert_eq!(positives, 2);
                }
            }
        }
        assert_eq!(folds(&set, 3, Split::Time, 0)[..10], [0; 10]);
    }
}
