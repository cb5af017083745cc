//! The report beside a rule-set artifact: what was mined from how many baskets, the
//! strongest rules, and a support/confidence scatter plot of all rules (lift as colour)
//! to help set the limits.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use super::config::{CheckedRulesConfig, RulesConfig};
use super::rules::Mined;
use super::{Baskets, MiningError};
use crate::model::rules::{AssociationRule, RuleSet};
use crate::train::plots::{FONT, PlotError, SIZE, failed, register_font};

/// Rules listed in the report.
pub const TOP_RULES: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct RulesReport {
    pub name: String,
    pub version: u32,
    pub baskets: usize,
    pub products: usize,
    pub mean_basket_size: f64,
    /// Frequent itemsets by length (1, 2, ...).
    pub itemsets_by_length: Vec<usize>,
    pub rules: usize,
    pub itemset_seconds: f64,
    pub rule_seconds: f64,
    pub config: RulesConfig,
    pub top: Vec<AssociationRule>,
}

impl RulesReport {
    pub fn new(
        name: &str,
        version: u32,
        baskets: &Baskets,
        mined: &Mined,
        config: &CheckedRulesConfig,
        set: &RuleSet,
    ) -> RulesReport {
        let mut by_length = vec![0usize; config.config.max_len];
        for itemset in &mined.itemsets {
            if let Some(slot) = by_length.get_mut(itemset.items.len().saturating_sub(1)) {
                *slot += 1;
            }
        }
        while by_length.last() == Some(&0) {
            by_length.pop();
        }
        let items: usize = baskets.baskets.iter().map(Vec::len).sum();
        RulesReport {
            name: name.to_string(),
            version,
            baskets: baskets.baskets.len(),
            products: baskets.products.len(),
            mean_basket_size: items as f64 / baskets.baskets.len().max(1) as f64,
            itemsets_by_length: by_length,
            rules: set.rules.len(),
            itemset_seconds: mined.itemset_seconds,
            rule_seconds: mined.rule_seconds,
            config: config.config.clone(),
            top: set.rules.iter().take(TOP_RULES).cloned().collect(),
        }
    }

    /// The artifact's metrics.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        vec![
            ("baskets".into(), self.baskets as f64),
            ("products".into(), self.products as f64),
            (
                "itemsets".into(),
                self.itemsets_by_length.iter().sum::<usize>() as f64,
            ),
            ("rules".into(), self.rules as f64),
        ]
    }

    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut text = format!(
            "# {} v{}: association rules\n\n{} baskets of {} products (mean {:.2} products per basket): a basket is the distinct products a user carted at most {} before the order that closed it, since their previous order.\n\nLimits: min_support {}, min_confidence {}, min_lift {}, max_len {}.\n\n",
            self.name,
            self.version,
            self.baskets,
            self.products,
            self.mean_basket_size,
            c.window,
            c.min_support,
            c.min_confidence,
            c.min_lift,
            c.max_len
        );
        text += "| itemset length | frequent itemsets |\n|---|---|\n";
        for (at, count) in self.itemsets_by_length.iter().enumerate() {
            text += &format!("| {} | {count} |\n", at + 1);
        }
        text += &format!(
            "\n{} rules. FP-growth took {:.3} s, the rules {:.3} s.\n\n## Strongest rules (by lift)\n\n| antecedent | consequent | support | confidence | lift |\n|---|---|---|---|---|\n",
            self.rules, self.itemset_seconds, self.rule_seconds
        );
        for rule in &self.top {
            text += &format!(
                "| {} | {} | {:.4} | {:.4} | {:.3} |\n",
                rule.antecedent.join(", "),
                rule.consequent.join(", "),
                rule.support,
                rule.confidence,
                rule.lift
            );
        }
        text
    }

    /// Writes `<stem>.report.json`, `<stem>.report.md` and `<stem>.rules.png` beside
    /// `artifact`; returns the files written.
    pub fn write_beside(
        &self,
        artifact: &Path,
        mined: &Mined,
    ) -> Result<Vec<PathBuf>, MiningError> {
        let error = |path: &Path, reason: String| MiningError::Write {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = artifact.parent() {
            std::fs::create_dir_all(dir).map_err(|e| error(dir, e.to_string()))?;
        }
        let json = artifact.with_extension("report.json");
        let text = serde_json::to_string_pretty(self).map_err(|e| error(&json, e.to_string()))?;
        std::fs::write(&json, text).map_err(|e| error(&json, e.to_string()))?;
        let markdown = artifact.with_extension("report.md");
        std::fs::write(&markdown, self.markdown()).map_err(|e| error(&markdown, e.to_string()))?;
        let plot = artifact.with_extension("rules.png");
        scatter(&plot, &format!("{} v{}", self.name, self.version), mined)
            .map_err(|e| error(&plot, e.to_string()))?;
        Ok(vec![json, markdown, plot])
    }
}

/// The colour of a lift: blue at the lowest of the rules, red at the highest.
fn lift_colour(lift: f64, (low, high): (f64, f64)) -> RGBColor {
    let warmth = ((lift - low) / (high - low).max(1e-12)).clamp(0.0, 1.0);
    RGBColor((255.0 * warmth) as u8, 40, (255.0 * (1.0 - warmth)) as u8)
}

/// Width of the colour bar's area at the right of the rules plot, in pixels.
const BAR_AREA: u32 = 110;

/// The lifts the colour bar labels, lowest first: its ends and three between.
fn bar_ticks((low, high): (f64, f64)) -> Vec<f64> {
    (0..5)
        .map(|i| low + (high - low) * f64::from(i) / 4.0)
        .collect()
}

/// A vertical colour bar for lift, labelled with its values (before, the title said
/// "colour: lift" and nothing said which colour was which lift).
fn colour_bar(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    lifts: (f64, f64),
) -> Result<(), PlotError> {
    let (top, bottom, left) = (60i32, SIZE.1 as i32 - 70, 16i32);
    let height = bottom - top;
    for step in 0..height {
        let lift = lifts.0 + (lifts.1 - lifts.0) * f64::from(height - step) / f64::from(height);
        area.draw(&Rectangle::new(
            [(left, top + step), (left + 20, top + step + 1)],
            lift_colour(lift, lifts).filled(),
        ))
        .map_err(failed)?;
    }
    area.draw(&Text::new("lift", (left - 4, top - 28), (FONT, 14)))
        .map_err(failed)?;
    for lift in bar_ticks(lifts) {
        let share = (lift - lifts.0) / (lifts.1 - lifts.0).max(1e-12);
        let y = bottom - (share * f64::from(height)) as i32;
        area.draw(&Text::new(
            format!("{lift:.2}"),
            (left + 26, y - 7),
            (FONT, 13),
        ))
        .map_err(failed)?;
    }
    Ok(())
}

/// Support against confidence, one point per rule (at most 20,000 drawn, evenly
/// spread), coloured from blue (lowest lift) to red (highest), with a colour bar.
fn scatter(path: &Path, title: &str, mined: &Mined) -> Result<(), PlotError> {
    register_font()?;
    let max_support = mined
        .rules
        .iter()
        .map(|r| r.support)
        .fold(0.0f64, f64::max)
        .max(1e-6)
        * 1.05;
    let (low_lift, high_lift) = mined
        .rules
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| {
            (lo.min(r.lift), hi.max(r.lift))
        });
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let (plot_area, bar_area) = root.split_horizontally(SIZE.0 - BAR_AREA);
    colour_bar(&bar_area, (low_lift, high_lift))?;
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(
            format!("{title}: {} rules, coloured by lift", mined.rules.len()),
            (FONT, 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_support, 0.0..1.05)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc("support")
        .y_desc("confidence")
        .label_style((FONT, 14))
        .draw()
        .map_err(failed)?;
    let step = (mined.rules.len() / 20_000).max(1);
    chart
        .draw_series(mined.rules.iter().step_by(step).map(|rule| {
            let colour = lift_colour(rule.lift, (low_lift, high_lift));
            Circle::new((rule.support, rule.confidence), 3, colour.mix(0.6).filled())
        }))
        .map_err(failed)?;
    root.present().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bar's ends are the rules' lowest and highest lift, in the colours their
    /// rules are drawn with.
    #[test]
    fn the_colour_bar_spans_the_lifts_in_the_dots_colours() {
        let lifts = (1.2, 9.6);
        let ticks = bar_ticks(lifts);
        assert_eq!(ticks.first(), Some(&1.2));
        assert_eq!(ticks.last(), Some(&9.6));
        assert_eq!(lift_colour(1.2, lifts), RGBColor(0, 40, 255));
        assert_eq!(lift_colour(9.6, lifts), RGBColor(255, 40, 0));
        // One lift for every rule: no division by zero, one colour.
        assert_eq!(lift_colour(2.0, (2.0, 2.0)), RGBColor(0, 40, 255));
    }
}
