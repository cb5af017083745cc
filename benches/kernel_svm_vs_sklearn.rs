//! Kernel SVM fit time side by side with scikit-learn's SVC, in one run on the same
//! rows: 10k x 30 synthetic rows (a non-linear boundary with label noise), C = 1,
//! gamma = 1 / columns, both on standardised columns. Ours includes the Platt scaling
//! (computed from the solver's own decision values when every row is in the sample).
//! Target: ratio (ours / scikit-learn) at most 1.0.
//!
//! `cargo bench --bench kernel_svm_vs_sklearn` (env: ROWS=10000, WIDTH=30,
//! PYTHON=python3 with scikit-learn and numpy; without them only our time is printed).

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use streamscore::train::kernel_svm::{self, KernelSvmParams};

const SKLEARN: &str = r#"
import sys, time
import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
data = np.loadtxt(sys.argv[1], delimiter=",")
x, y = data[:, :-1], data[:, -1]
best = float("inf")
for _ in range(3):
    model = make_pipeline(StandardScaler(), SVC(kernel="rbf", C=1.0, gamma=1.0 / x.shape[1]))
    started = time.perf_counter()
    model.fit(x, y)
    best = min(best, time.perf_counter() - started)
print(best)
"#;

mod support;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let var = support::env_usize;
    let (rows, width) = (var("ROWS", 10_000), var("WIDTH", 30));
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut data = Vec::with_capacity(rows);
    let mut labels = Vec::with_capacity(rows);
    for _ in 0..rows {
        let x: Vec<f64> = (0..width).map(|_| rng.random_range(-1.0f64..1.0)).collect();
        // Inside a ball in the first five columns, with 10% of labels flipped.
        let radius: f64 = x.iter().take(5).map(|v| v * v).sum();
        let inside = radius < 0.9;
        labels.push(f64::from(u8::from(inside != rng.random_bool(0.1))));
        data.push(x.into_iter().map(Some).collect::<Vec<_>>());
    }
    let columns: Vec<String> = (0..width).map(|i| format!("x{i}")).collect();
    let params = KernelSvmParams {
        c: 1.0,
        sample_size: rows,
        ..KernelSvmParams::default()
    }
    .check()
    .expect("valid parameters");
    let mut ours = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        let fitted = kernel_svm::fit(&columns, &data, &labels, params).expect("fit");
        ours = ours.min(started.elapsed().as_secs_f64());
        std::hint::black_box(fitted);
    }
    println!("kernel SVM, {rows} x {width}: streamscore {ours:.2} s (best of 3)");

    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("rows.csv");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&csv).expect("csv"));
        for (row, label) in data.iter().zip(&labels) {
            for value in row {
                write!(out, "{},", value.unwrap_or(0.0)).expect("write");
            }
            writeln!(out, "{label}").expect("write");
        }
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = dir.path().join("sklearn_svc.py");
    std::fs::write(&script, SKLEARN).expect("script");
    match Command::new(&python).arg(&script).arg(&csv).output() {
        Ok(output) if output.status.success() => {
            let theirs: f64 = String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap_or(f64::NAN);
            println!(
                "kernel SVM, {rows} x {width}: scikit-learn SVC {theirs:.2} s (best of 3); ratio {:.2} (target <= 1.0)",
                ours / theirs
            );
        }
        _ => println!("scikit-learn not available to {python}: no side-by-side figure"),
    }
}
