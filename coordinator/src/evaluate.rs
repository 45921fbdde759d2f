//! The evaluation commands: `anomaly-coordinator eval tabular|nab|skab`.
//!
//! Each command reads labelled data from a path (the shared benchmark folder
//! or the small copies under `tests/data`), runs a detector with the settings
//! on its command line, shows a progress bar on stderr and prints a Markdown
//! table on stdout; `--json FILE` also writes the figures as JSON.
//!
//! | command | protocol | figure |
//! |---|---|---|
//! | `tabular` | fit and score all rows ("all") or 60/40 splits | ROC-AUC, average precision |
//! | `skab` | first 400 rows of each file train, the rest is pooled test | F1, false/missed alarm rates |
//! | `nab` | detector trained on the probationary period or streaming | NAB v1 normalised score, 3 profiles |

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use sad_models::Detector;
use sad_models::data::{self, Tabular};
use sad_models::eval::metrics::{BinaryCounts, average_precision, roc_auc};
use sad_models::eval::nab::{self, NabFileInput, NabProfile};
use sad_models::eval::skab;
use sad_models::features::SeriesFeaturizer;
use sad_models::iforest::{Contamination, IsolationForestParams, MaxSamples};
use sad_models::scaler::fit_standard_scaler;
use sad_models::streaming::{EwmaParams, EwmaZScore, HalfSpaceTrees, HstParams};

/// `eval` subcommands.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// ROC-AUC and average precision of Isolation Forest on tabular CSVs (`x0..,label`).
    Tabular(TabularArgs),
    /// NAB v1 score of a detector on the NAB corpus.
    Nab(NabArgs),
    /// F1, false-alarm and missed-alarm rates with the SKAB protocol.
    Skab(SkabArgs),
}

/// Isolation Forest settings shared by the commands.
#[derive(Debug, Clone, Args)]
pub struct ForestArgs {
    /// Trees in the forest.
    #[arg(long, default_value_t = 100)]
    pub n_estimators: usize,
    /// Rows drawn per tree (capped at the training size).
    #[arg(long, default_value_t = 256)]
    pub max_samples: usize,
}

impl ForestArgs {
    fn params(&self, seed: u64, contamination: Contamination) -> IsolationForestParams {
        IsolationForestParams {
            n_estimators: self.n_estimators,
            max_samples: MaxSamples::Count(self.max_samples),
            contamination,
            max_features: 1.0,
            seed,
        }
    }
}

/// Evaluation protocol for tabular sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum TabularProtocol {
    /// Fit on all rows, score all rows (mean over seeds).
    All,
    /// Fit on a random 60 %, score the other 40 % (mean over splits).
    #[value(name = "60-40")]
    Split6040,
}

/// Arguments of `eval tabular`.
#[derive(Debug, Args)]
pub struct TabularArgs {
    /// A CSV file or a folder of them (e.g. ../shared/data/tabular).
    pub path: PathBuf,
    /// Seeds (protocol all) or splits (protocol 60-40) to average over.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// Evaluation protocol.
    #[arg(long, value_enum, default_value_t = TabularProtocol::All)]
    pub protocol: TabularProtocol,
    #[command(flatten)]
    /// Forest settings.
    pub forest: ForestArgs,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Streaming or batch detector evaluated on series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesDetector {
    /// Isolation Forest trained on the training part, on window features.
    IsolationForest,
    /// Half-Space Trees, learning as it scores.
    Hst,
    /// EWMA z-score, learning as it scores.
    Ewma,
}

/// Arguments of `eval nab`.
#[derive(Debug, Args)]
pub struct NabArgs {
    /// The NAB folder holding `data/` and `labels/` (e.g. ../shared/data/nab).
    pub path: PathBuf,
    /// Detector to evaluate.
    #[arg(long, value_enum, default_value_t = SeriesDetector::IsolationForest)]
    pub detector: SeriesDetector,
    /// Readings in the window statistics of the series features.
    #[arg(long, default_value_t = 12)]
    pub window: usize,
    /// Share of training rows the calibration places above 0.5 (Isolation Forest).
    #[arg(long, default_value_t = 0.01)]
    pub contamination: f64,
    /// Random seed of the detector.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    /// Forest settings.
    pub forest: ForestArgs,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Arguments of `eval skab`.
#[derive(Debug, Args)]
pub struct SkabArgs {
    /// The SKAB folder holding `valve1/` and `anomaly-free/` (e.g. ../shared/data/skab).
    pub path: PathBuf,
    /// Random seed of the forest.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    /// Forest settings.
    pub forest: ForestArgs,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs one `eval` subcommand and prints its table.
pub fn run(cmd: &EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Tabular(a) => {
            let rows = eval_tabular(a)?;
            print!("{}", tabular_table(&rows, a));
            write_json(a.json.as_deref(), &rows)
        }
        EvalCommand::Nab(a) => {
            let report = eval_nab(a)?;
            print!("{}", nab_table(&report));
            write_json(a.json.as_deref(), &report)
        }
        EvalCommand::Skab(a) => {
            let report = eval_skab(a)?;
            print!("{}", skab_table(&report));
            write_json(a.json.as_deref(), &report)
        }
    }
}

fn write_json<T: Serialize>(path: Option<&Path>, value: &T) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value)?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// scikit-learn's Isolation Forest ROC-AUC ("all", "60/40") on the ODDS sets,
/// from `../shared/data/README.md`.
pub const SKLEARN_REFERENCE_AUC: [(&str, f64, f64); 7] = [
    ("cardio", 0.932, 0.926),
    ("shuttle", 0.997, 0.997),
    ("satellite", 0.696, 0.706),
    ("pendigits", 0.940, 0.945),
    ("pima", 0.670, 0.672),
    ("thyroid", 0.978, 0.978),
    ("mammography", 0.859, 0.864),
];

/// Result of `eval tabular` for one file.
#[derive(Debug, Clone, Serialize)]
pub struct TabularResult {
    /// File stem, e.g. `cardio`.
    pub name: String,
    /// Rows in the file.
    pub rows: usize,
    /// Features per row.
    pub dims: usize,
    /// Share of anomalies, in percent.
    pub anomaly_pct: f64,
    /// ROC-AUC per seed or split.
    pub auc: Vec<f64>,
    /// Mean ROC-AUC.
    pub auc_mean: f64,
    /// Standard deviation of the ROC-AUC over seeds.
    pub auc_std: f64,
    /// Mean average precision.
    pub ap_mean: f64,
    /// scikit-learn's reference ROC-AUC for this protocol, where known.
    pub sklearn_auc: Option<f64>,
}

fn csv_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("read folder {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no .csv files in {}", path.display());
    }
    Ok(files)
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Gathers the rows at `idx` of a row-major matrix.
fn gather(x: &[f64], d: usize, idx: &[usize]) -> Vec<f64> {
    let mut out = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        out.extend_from_slice(&x[i * d..(i + 1) * d]);
    }
    out
}

/// Runs `eval tabular`: Isolation Forest ROC-AUC and AP per file.
pub fn eval_tabular(args: &TabularArgs) -> Result<Vec<TabularResult>> {
    let files = csv_files(&args.path)?;
    let pb = bar(files.len() as u64 * args.seeds, "tabular");
    let mut results = Vec::new();
    for file in files {
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        pb.set_message(name.clone());
        let t: Tabular = data::load_tabular(&file)?;
        let n = t.labels.len();
        let d = t.n_features;
        let (mut aucs, mut aps) = (Vec::new(), Vec::new());
        for seed in 0..args.seeds {
            let params = args.forest.params(seed, Contamination::Auto);
            let (fit_rows, test_idx): (Vec<f64>, Vec<usize>) = match args.protocol {
                TabularProtocol::All => (t.x.clone(), (0..n).collect()),
                TabularProtocol::Split6040 => {
                    let mut idx: Vec<usize> = (0..n).collect();
                    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
                    let cut = n * 6 / 10;
                    (gather(&t.x, d, &idx[..cut]), idx[cut..].to_vec())
                }
            };
            let forest = params
                .fit(&fit_rows, d)
                .with_context(|| format!("fit isolation forest on {name}"))?;
            let test = gather(&t.x, d, &test_idx);
            let scores: Vec<f64> = forest
                .score_samples(&test)?
                .into_iter()
                .map(|s| -s)
                .collect();
            let labels: Vec<bool> = test_idx.iter().map(|&i| t.labels[i]).collect();
            aucs.push(roc_auc(&scores, &labels)?);
            aps.push(average_precision(&scores, &labels)?);
            pb.inc(1);
        }
        let (auc_mean, auc_std) = mean_std(&aucs);
        let sklearn_auc =
            SKLEARN_REFERENCE_AUC
                .iter()
                .find(|r| r.0 == name)
                .map(|r| match args.protocol {
                    TabularProtocol::All => r.1,
                    TabularProtocol::Split6040 => r.2,
                });
        results.push(TabularResult {
            name,
            rows: n,
            dims: d,
            anomaly_pct: 100.0 * t.labels.iter().filter(|&&l| l).count() as f64 / n.max(1) as f64,
            auc: aucs,
            auc_mean,
            auc_std,
            ap_mean: mean_std(&aps).0,
            sklearn_auc,
        });
    }
    pb.finish_and_clear();
    Ok(results)
}

fn tabular_table(rows: &[TabularResult], args: &TabularArgs) -> String {
    let mut s = format!(
        "Isolation Forest (n_estimators={}, max_samples={}), protocol {:?}, {} seeds\n\n",
        args.forest.n_estimators, args.forest.max_samples, args.protocol, args.seeds
    );
    s.push_str(
        "| file | rows | dims | anomaly % | ROC-AUC (ours) | sd | scikit-learn | diff | AP |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let (sk, diff) = match r.sklearn_auc {
            Some(v) => (format!("{v:.3}"), format!("{:+.3}", r.auc_mean - v)),
            None => ("-".into(), "-".into()),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.3} | {:.3} | {} | {} | {:.3} |\n",
            r.name, r.rows, r.dims, r.anomaly_pct, r.auc_mean, r.auc_std, sk, diff, r.ap_mean
        ));
    }
    s
}

/// Result of `eval nab`.
#[derive(Debug, Clone, Serialize)]
pub struct NabReport {
    /// Detector evaluated.
    pub detector: SeriesDetector,
    /// Series scored.
    pub files: usize,
    /// Rows scored.
    pub rows: usize,
    /// One entry per profile: name, optimised threshold, normalised score.
    pub profiles: Vec<NabProfileResult>,
}

/// NAB figures for one profile.
#[derive(Debug, Clone, Serialize)]
pub struct NabProfileResult {
    /// Profile name (`standard`, `reward_low_FP_rate`, `reward_low_FN_rate`).
    pub profile: String,
    /// Threshold that maximised the corpus score.
    pub threshold: f64,
    /// Normalised score: null detector 0, perfect detector 100.
    pub score: f64,
    /// Labelled windows with a detection at that threshold.
    pub windows_detected: usize,
    /// Labelled windows without one.
    pub windows_missed: usize,
    /// False positives (outside windows, after the probationary period).
    pub fp: usize,
}

/// Anomaly scores in `[0, 1]` of one univariate series under a detector.
pub fn series_scores(values: &[f64], args: &NabArgs) -> Result<Vec<f64>> {
    let feats = SeriesFeaturizer::featurize(args.window, values);
    let d = sad_models::features::SERIES_FEATURE_NAMES.len();
    let scores = match args.detector {
        SeriesDetector::IsolationForest => {
            let train = nab::probationary_length(values.len()).max(2);
            let params = args
                .forest
                .params(args.seed, Contamination::Fraction(args.contamination));
            let forest = params.fit(&feats[..train * d], d)?;
            forest
                .score_batch(&feats)?
                .into_iter()
                .map(|s| s.score)
                .collect()
        }
        SeriesDetector::Hst => {
            let mut det = HalfSpaceTrees::new(
                HstParams {
                    seed: args.seed,
                    ..HstParams::default()
                },
                d,
            )?;
            stream_scores(&mut det, &feats, d)?
        }
        SeriesDetector::Ewma => {
            let mut det = EwmaZScore::new(EwmaParams::default(), d)?;
            stream_scores(&mut det, &feats, d)?
        }
    };
    Ok(scores)
}

fn stream_scores(det: &mut dyn Detector, feats: &[f64], d: usize) -> Result<Vec<f64>> {
    feats
        .chunks_exact(d)
        .map(|row| Ok(det.update_and_score(row)?.score))
        .collect()
}

/// Runs `eval nab`: scores every series, then optimises the threshold per profile.
pub fn eval_nab(args: &NabArgs) -> Result<NabReport> {
    let corpus = data::load_nab_corpus(&args.path)?;
    let pb = bar(corpus.series.len() as u64, "nab");
    let mut scored = Vec::with_capacity(corpus.series.len());
    for s in &corpus.series {
        pb.set_message(s.name.clone());
        let scores = series_scores(&s.values, args).with_context(|| format!("score {}", s.name))?;
        scored.push(scores);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let inputs: Vec<NabFileInput> = corpus
        .series
        .iter()
        .zip(&scored)
        .map(|(s, scores)| NabFileInput::from_series(s, scores))
        .collect();
    let mut profiles = Vec::new();
    for profile in [
        NabProfile::Standard,
        NabProfile::RewardLowFp,
        NabProfile::RewardLowFn,
    ] {
        let r = nab::optimize_threshold(&inputs, profile)?;
        profiles.push(NabProfileResult {
            profile: profile.name().to_string(),
            threshold: r.threshold,
            score: r.normalized_score,
            windows_detected: r.counts.windows_detected,
            windows_missed: r.counts.windows_missed,
            fp: r.counts.fp,
        });
    }
    Ok(NabReport {
        detector: args.detector,
        files: inputs.len(),
        rows: inputs.iter().map(|i| i.n_rows).sum(),
        profiles,
    })
}

fn nab_table(r: &NabReport) -> String {
    let mut s = format!(
        "NAB v1, detector {:?}, {} files, {} rows\n\n| profile | score | threshold | windows detected | windows missed | FP |\n|---|---|---|---|---|---|\n",
        r.detector, r.files, r.rows
    );
    for p in &r.profiles {
        s.push_str(&format!(
            "| {} | {:.1} | {:.4} | {} | {} | {} |\n",
            p.profile, p.score, p.threshold, p.windows_detected, p.windows_missed, p.fp
        ));
    }
    s
}

/// Result of `eval skab`.
#[derive(Debug, Clone, Serialize)]
pub struct SkabReport {
    /// Files evaluated.
    pub files: usize,
    /// Pooled test points.
    pub test_points: u64,
    /// F1 of the pooled test points.
    pub f1: f64,
    /// False-alarm rate FP / (FP + TN).
    pub far: f64,
    /// Missed-alarm rate FN / (FN + TP).
    pub mar: f64,
    /// The pooled confusion counts.
    pub counts: BinaryCounts,
}

/// Runs `eval skab`: Isolation Forest per file on the SKAB protocol.
pub fn eval_skab(args: &SkabArgs) -> Result<SkabReport> {
    let data = data::load_skab_dir(&args.path)?;
    let pb = bar(data.files.len() as u64, "skab");
    let mut counts = BinaryCounts::default();
    for f in &data.files {
        pb.set_message(f.name.clone());
        let split = skab::split(f)?;
        let d = split.n_features;
        let scaler = fit_standard_scaler(split.train, d)?;
        let forest = args
            .forest
            .params(args.seed, Contamination::Auto)
            .fit(&scaler.transform(split.train), d)
            .with_context(|| format!("fit on {}", f.name))?;
        let preds: Vec<bool> = forest
            .score_batch(&scaler.transform(split.test))?
            .iter()
            .map(|s| s.is_anomaly)
            .collect();
        counts.add(&BinaryCounts::from_predictions(&preds, split.test_labels)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(SkabReport {
        files: data.files.len(),
        test_points: counts.total(),
        f1: counts.f1(),
        far: counts.false_alarm_rate(),
        mar: counts.missed_alarm_rate(),
        counts,
    })
}

fn skab_table(r: &SkabReport) -> String {
    format!(
        "SKAB protocol (first 400 rows of each file train), Isolation Forest, {} files, {} test points\n\n| F1 | FAR | MAR |\n|---|---|---|\n| {:.3} | {:.3} | {:.3} |\n",
        r.files, r.test_points, r.f1, r.far, r.mar
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(path: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path)
    }

    fn forest() -> ForestArgs {
        ForestArgs {
            n_estimators: 50,
            max_samples: 256,
        }
    }

    #[test]
    fn tabular_eval_reproduces_the_scikit_learn_auc_on_the_bundled_thyroid_set() {
        let args = TabularArgs {
            path: repo("tests/data/odds/thyroid.csv"),
            seeds: 2,
            protocol: TabularProtocol::All,
            forest: forest(),
            json: None,
        };
        let rows = eval_tabular(&args).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.name.as_str(), r.rows, r.dims), ("thyroid", 3772, 6));
        assert_eq!(r.sklearn_auc, Some(0.978));
        assert!((r.auc_mean - 0.978).abs() < 0.02, "auc {}", r.auc_mean);
        assert!(tabular_table(&rows, &args).contains("| thyroid | 3772 | 6 |"));
    }

    #[test]
    fn split_protocol_scores_only_held_out_rows() {
        let args = TabularArgs {
            path: repo("tests/data/odds/pima.csv"),
            seeds: 1,
            protocol: TabularProtocol::Split6040,
            forest: forest(),
            json: None,
        };
        let r = &eval_tabular(&args).unwrap()[0];
        assert_eq!(r.sklearn_auc, Some(0.672));
        assert!(r.auc_mean > 0.55 && r.auc_mean < 0.8, "auc {}", r.auc_mean);
    }

    #[test]
    fn nab_eval_scores_every_profile_on_the_bundled_corpus() {
        for detector in [
            SeriesDetector::IsolationForest,
            SeriesDetector::Hst,
            SeriesDetector::Ewma,
        ] {
            let args = NabArgs {
                path: repo("tests/data/nab"),
                detector,
                window: 12,
                contamination: 0.01,
                seed: 0,
                forest: forest(),
                json: None,
            };
            let r = eval_nab(&args).unwrap();
            assert_eq!((r.files, r.profiles.len()), (4, 3));
            for p in &r.profiles {
                assert!(
                    p.score.is_finite() && p.score <= 100.0,
                    "{detector:?} {p:?}"
                );
                assert_eq!(
                    p.windows_detected + p.windows_missed,
                    9,
                    "{detector:?} {p:?}"
                );
            }
        }
    }

    #[test]
    fn a_folder_without_csv_files_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = csv_files(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no .csv files"), "{e}");
    }

    #[test]
    fn series_scores_stay_in_the_unit_interval() {
        let values: Vec<f64> = (0..2000)
            .map(|i| (i as f64 * 0.1).sin() + if i == 1500 { 9.0 } else { 0.0 })
            .collect();
        let args = NabArgs {
            path: PathBuf::new(),
            detector: SeriesDetector::IsolationForest,
            window: 12,
            contamination: 0.01,
            seed: 0,
            forest: forest(),
            json: None,
        };
        let s = series_scores(&values, &args).unwrap();
        assert_eq!(s.len(), values.len());
        assert!(s.iter().all(|v| (0.0..=1.0).contains(v)));
        let spike = s[1500];
        assert!(
            s.iter().filter(|&&v| v >= spike).count() <= 3,
            "spike score {spike}"
        );
    }
}
