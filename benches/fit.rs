//! Fit time of the model families on 1M rows x 45 columns (the fraud model's width),
//! synthetic rows from a known logistic model, imbalanced, with some missing
//! values. Prints seconds and the training ROC-AUC (a sanity check, not a quality claim).
//!
//! The kernel SVM fits on the first 20k rows (env KERNEL_ROWS), as it does in
//! training (a stratified sample).
//!
//! `cargo bench --bench fit` (env: ROWS=1000000, KERNEL_ROWS=20000).

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use streamscore::model::sigmoid;
use streamscore::train::evaluate::roc_auc;
use streamscore::train::kernel_svm::{self, KernelSvmParams};
use streamscore::train::logistic::{self, LogisticParams};
use streamscore::train::svm::{self, SvmParams};
use streamscore::train::tree::{self, TreeParams};

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let width = 45;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let truth: Vec<f64> = (0..width)
        .map(|i| {
            if i % 3 == 0 {
                rng.random_range(-1.0..1.0)
            } else {
                0.0
            }
        })
        .collect();
    let mut data = Vec::with_capacity(rows);
    let mut labels = Vec::with_capacity(rows);
    for _ in 0..rows {
        let x: Vec<f64> = (0..width)
            .map(|_| rng.random_range(-1.0f64..1.0).powi(3) * 5.0)
            .collect();
        let z = -8.0 + x.iter().zip(&truth).map(|(a, b)| a * b).sum::<f64>();
        labels.push(f64::from(u8::from(rng.random_bool(sigmoid(z)))));
        data.push(
            x.into_iter()
                .map(|v| if v.abs() < 0.001 { None } else { Some(v) })
                .collect::<Vec<_>>(),
        );
    }
    let columns: Vec<String> = (0..width).map(|i| format!("x{i}")).collect();
    let positives = labels.iter().sum::<f64>() / rows as f64;
    println!(
        "{rows} rows x {width} columns, {:.2}% positive",
        positives * 100.0
    );

    let started = Instant::now();
    let (model, converged) = logistic::fit(
        &columns,
        &data,
        &labels,
        LogisticParams::default().check().expect("params"),
    )
    .expect("fit");
    let seconds = started.elapsed().as_secs_f64();
    let scores: Vec<f64> = data.iter().map(|r| model.predict(r)).collect();
    println!(
        "logistic regression: {seconds:.2} s (converged: {converged}), training AUC {:.4}",
        roc_auc(&scores, &labels)
    );

    let started = Instant::now();
    let (model, converged) = svm::fit(
        &columns,
        &data,
        &labels,
        SvmParams::default().check().expect("params"),
    )
    .expect("fit");
    let seconds = started.elapsed().as_secs_f64();
    let scores: Vec<f64> = data.iter().map(|r| model.predict(r)).collect();
    println!(
        "linear SVM + Platt: {seconds:.2} s (converged: {converged}), training AUC {:.4}",
        roc_auc(&scores, &labels)
    );

    let started = Instant::now();
    let params = TreeParams {
        max_depth: 12,
        ..TreeParams::default()
    }
    .check()
    .expect("params");
    let model = tree::fit(&columns, &data, &labels, params).expect("fit");
    let seconds = started.elapsed().as_secs_f64();
    let scores: Vec<f64> = data.iter().map(|r| model.predict(r)).collect();
    println!(
        "decision tree, depth 12: {seconds:.2} s, training AUC {:.4}",
        roc_auc(&scores, &labels)
    );

    let kernel_rows: usize = std::env::var("KERNEL_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
        .min(rows);
    let params = KernelSvmParams {
        sample_size: kernel_rows,
        ..KernelSvmParams::default()
    }
    .check()
    .expect("params");
    let started = Instant::now();
    let (model, converged) = kernel_svm::fit(
        &columns,
        &data[..kernel_rows],
        &labels[..kernel_rows],
        params,
    )
    .expect("fit");
    let seconds = started.elapsed().as_secs_f64();
    let scores: Vec<f64> = data[..kernel_rows]
        .iter()
        .map(|r| model.predict(r))
        .collect();
    println!(
        "kernel SVM (Gaussian) on {kernel_rows} rows: {seconds:.2} s (converged: {converged}), training AUC {:.4}",
        roc_auc(&scores, &labels[..kernel_rows])
    );
}
