//! A small L-BFGS minimiser (two-loop recursion, backtracking Armijo line search) for
//! smooth convex objectives such as the regularised logistic loss. It says whether it
//! converged, unlike the library solver it replaces.

/// The result of a minimisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Minimum {
    pub x: Vec<f64>,
    pub value: f64,
    pub iterations: usize,
    /// Largest absolute gradient component at `x`.
    pub gradient_norm: f64,
    pub converged: bool,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises `objective` (which returns the value and writes the gradient) from `start`.
pub fn minimise(
    mut objective: impl FnMut(&[f64], &mut [f64]) -> f64,
    start: Vec<f64>,
    max_iterations: usize,
    tolerance: f64,
) -> Minimum {
    const HISTORY: usize = 10;
    let dimension = start.len();
    let mut x = start;
    let mut gradient = vec![0.0; dimension];
    let mut value = objective(&x, &mut gradient);
    let mut steps: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::with_capacity(HISTORY);
    let mut direction = vec![0.0; dimension];
    let mut candidate = vec![0.0; dimension];
    let mut candidate_gradient = vec![0.0; dimension];
    let infinity_norm = |g: &[f64]| g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut iterations = 0;
    while iterations < max_iterations && infinity_norm(&gradient) > tolerance {
        iterations += 1;
        // Two-loop recursion: direction = -H * gradient.
        direction.copy_from_slice(&gradient);
        let mut alphas = Vec::with_capacity(steps.len());
        for (s, y, rho) in steps.iter().rev() {
            let alpha = rho * dot(s, &direction);
            direction
                .iter_mut()
                .zip(y)
                .for_each(|(d, yi)| *d -= alpha * yi);
            alphas.push(alpha);
        }
        if let Some((s, y, _)) = steps.last() {
            let scale = dot(s, y) / dot(y, y);
            direction.iter_mut().for_each(|d| *d *= scale);
        }
        for ((s, y, rho), alpha) in steps.iter().zip(alphas.iter().rev()) {
            let beta = rho * dot(y, &direction);
            direction
                .iter_mut()
                .zip(s)
                .for_each(|(d, si)| *d += (alpha - beta) * si);
        }
        direction.iter_mut().for_each(|d| *d = -*d);
        let mut slope = dot(&gradient, &direction);
        if slope >= 0.0 {
            // Not a descent direction (curvature information went stale): restart.
            steps.clear();
            direction
                .iter_mut()
                .zip(&gradient)
                .for_each(|(d, g)| *d = -g);
            slope = dot(&gradient, &direction);
        }
        let mut step = if steps.is_empty() {
            1.0 / infinity_norm(&gradient).max(1.0)
        } else {
            1.0
        };
        let mut accepted = false;
        for _ in 0..50 {
            candidate
                .iter_mut()
                .zip(&x)
                .zip(&direction)
                .for_each(|((c, xi), d)| *c = xi + step * d);
            let candidate_value = objective(&candidate, &mut candidate_gradient);
            if candidate_value <= value + 1e-4 * step * slope {
                let s: Vec<f64> = candidate.iter().zip(&x).map(|(c, xi)| c - xi).collect();
                let y: Vec<f64> = candidate_gradient
                    .iter()
                    .zip(&gradient)
                    .map(|(c, g)| c - g)
                    .collect();
                let curvature = dot(&s, &y);
                if curvature > 1e-12 {
                    if steps.len() == HISTORY {
                        steps.remove(0);
                    }
                    steps.push((s, y, 1.0 / curvature));
                }
                std::mem::swap(&mut x, &mut candidate);
                std::mem::swap(&mut gradient, &mut candidate_gradient);
                value = candidate_value;
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    let gradient_norm = infinity_norm(&gradient);
    Minimum {
        x,
        value,
        iterations,
        gradient_norm,
        converged: gradient_norm <= tolerance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_minimum_of_a_skewed_quadratic_and_rosenbrock() {
        let quadratic = |x: &[f64], g: &mut [f64]| {
            g[0] = 2.0 * (x[0] - 3.0);
            g[1] = 200.0 * (x[1] + 1.0);
            (x[0] - 3.0).powi(2) + 100.0 * (x[1] + 1.0).powi(2)
        };
        let found = minimise(quadratic, vec![0.0, 0.0], 200, 1e-9);
        assert!(found.converged);
        assert!(
            (found.x[0] - 3.0).abs() < 1e-6 && (found.x[1] + 1.0).abs() < 1e-6,
            "{found:?}"
        );

        let rosenbrock = |x: &[f64], g: &mut [f64]| {
            g[0] = -2.0 * (1.0 - x[0]) - 400.0 * x[0] * (x[1] - x[0] * x[0]);
            g[1] = 200.0 * (x[1] - x[0] * x[0]);
            (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2)
        };
        let found = minimise(rosenbrock, vec![-1.2, 1.0], 1_000, 1e-8);
        assert!(found.converged, "{found:?}");
        assert!(
            (found.x[0] - 1.0).abs() < 1e-5 && (found.x[1] - 1.0).abs() < 1e-5,
            "{found:?}"
        );
    }
}
