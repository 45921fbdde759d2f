//! `anomaly-coordinator demo`: the README's first command.
//!
//! Replays the labelled NAB series bundled in `tests/data/nab` through the
//! detectors, as a fleet of agents would: each series is one stream, scored
//! point by point with the Isolation Forest trained on its probationary
//! period (the first 15 %) and, for comparison, Half-Space Trees learning as
//! they go. It prints alerts as they are raised, with their top contributing
//! features, and then precision (alerts inside a labelled window) and recall
//! (windows with at least one alert) per series.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use sad_models::Detector;
use sad_models::data;
use sad_models::features::{SERIES_FEATURE_NAMES, SeriesFeaturizer};
use sad_models::iforest::{Contamination, IsolationForestParams, MaxSamples};
use sad_models::streaming::{HalfSpaceTrees, HstParams};

use sad_models::eval::nab::probationary_length;

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// NAB-layout folder to replay (defaults to the copy bundled with the repository).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Alerts printed per series (all are counted).
    #[arg(long, default_value_t = 5)]
    pub show: usize,
    /// Share of training rows the calibration places above the threshold.
    #[arg(long, default_value_t = 0.01)]
    pub contamination: f64,
}

/// Where the bundled NAB copy lives in a checkout.
pub fn bundled_nab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/nab")
}

/// Precision and recall of one detector on one series.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SeriesOutcome {
    /// Alerts raised after the training period.
    pub alerts: usize,
    /// Alerts that fell inside a labelled window.
    pub alerts_in_windows: usize,
    /// Labelled windows.
    pub windows: usize,
    /// Windows with at least one alert.
    pub windows_hit: usize,
}

impl SeriesOutcome {
    /// Share of alerts inside labelled windows (1 when there are no alerts).
    pub fn precision(&self) -> f64 {
        if self.alerts == 0 {
            1.0
        } else {
            self.alerts_in_windows as f64 / self.alerts as f64
        }
    }

    /// Share of windows with an alert (1 when there are no windows).
    pub fn recall(&self) -> f64 {
        if self.windows == 0 {
            1.0
        } else {
            self.windows_hit as f64 / self.windows as f64
        }
    }
}

/// Counts alerts against windows, ignoring rows before `start`.
pub fn outcome(flags: &[bool], windows: &[(usize, usize)], start: usize) -> SeriesOutcome {
    let mut o = SeriesOutcome {
        windows: windows.len(),
        ..Default::default()
    };
    let mut hit = vec![false; windows.len()];
    for (i, _) in flags.iter().enumerate().skip(start).filter(|(_, f)| **f) {
        o.alerts += 1;
        if let Some(w) = windows.iter().position(|&(a, b)| (a..=b).contains(&i)) {
            o.alerts_in_windows += 1;
            hit[w] = true;
        }
    }
    o.windows_hit = hit.iter().filter(|h| **h).count();
    o
}

/// Runs the demo and prints what it sees.
pub fn run(args: &DemoArgs) -> Result<()> {
    let dir = args.data.clone().unwrap_or_else(bundled_nab_dir);
    let corpus = data::load_nab_corpus(&dir)
        .with_context(|| format!("load the demo data from {}", dir.display()))?;
    println!(
        "demo: replaying {} labelled series from {}\n",
        corpus.series.len(),
        dir.display()
    );
    let d = SERIES_FEATURE_NAMES.len();
    let mut summary = Vec::new();
    for s in &corpus.series {
        let train = probationary_length(s.values.len()).max(2);
        let feats = SeriesFeaturizer::featurize(12, &s.values);
        let forest = IsolationForestParams {
            max_samples: MaxSamples::Count(256),
            contamination: Contamination::Fraction(args.contamination),
            ..IsolationForestParams::default()
        }
        .fit(&feats[..train * d], d)?;
        let mut hst = HalfSpaceTrees::new(HstParams::default(), d)?;
        println!(
            "== {} ({} points, {} labelled windows)",
            s.name,
            s.values.len(),
            s.windows.len()
        );
        let mut if_flags = Vec::with_capacity(s.values.len());
        let mut hst_flags = Vec::with_capacity(s.values.len());
        let mut shown = 0;
        for (i, row) in feats.chunks_exact(d).enumerate() {
            let sc = forest.score(row)?;
            hst_flags.push(hst.update_and_score(row)?.is_anomaly);
            if_flags.push(sc.is_anomaly);
            if sc.is_anomaly && i >= train && shown < args.show {
                shown += 1;
                let why: Vec<String> = forest
                    .explain(row, 2)?
                    .iter()
                    .map(|c| format!("{}={:.2}", SERIES_FEATURE_NAMES[c.feature], c.weight))
                    .collect();
                let in_window = s.windows.iter().any(|&(a, b)| (a..=b).contains(&i));
                println!(
                    "  alert row {i:>5} value {:>10.3} score {:.3} top [{}]{}",
                    s.values[i],
                    sc.score,
                    why.join(", "),
                    if in_window {
                        "  (inside a labelled window)"
                    } else {
                        ""
                    }
                );
            }
        }
        let o_if = outcome(&if_flags, &s.windows, train);
        let o_hst = outcome(&hst_flags, &s.windows, train);
        summary.push((s.name.clone(), o_if, o_hst));
    }
    println!("\n| series | detector | alerts | precision | recall |\n|---|---|---|---|---|");
    for (name, o_if, o_hst) in &summary {
        for (det, o) in [("isolation_forest", o_if), ("half_space_trees", o_hst)] {
            println!(
                "| {name} | {det} | {} | {:.2} | {:.2} ({}/{}) |",
                o.alerts,
                o.precision(),
                o.recall(),
                o.windows_hit,
                o.windows
            );
        }
    }
    println!(
        "\nprecision = alerts inside labelled windows / alerts; recall = windows with an alert / windows"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_counts_alerts_in_and_out_of_windows_after_training() {
        let mut flags = vec![false; 20];
        for i in [1, 6, 7, 15] {
            flags[i] = true;
        }
        let o = outcome(&flags, &[(5, 8), (12, 13)], 3);
        assert_eq!(
            o,
            SeriesOutcome {
                alerts: 3,
                alerts_in_windows: 2,
                windows: 2,
                windows_hit: 1
            }
        );
        assert!((o.precision() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(o.recall(), 0.5);
    }
}
