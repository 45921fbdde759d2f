//! The loaders and protocols on the full benchmark folder `../shared/data`
//! beside the checkout. Each test returns early (and says so) when that
//! folder is absent, as in a bare clone; the committed excerpts in
//! `tests/data` are covered by `eval_data.rs`.

use std::path::PathBuf;

use sad_models::data::{load_nab_corpus, load_skab_dir, load_tabular};
use sad_models::eval::nab::{NabFileInput, NabProfile, optimize_threshold};
use sad_models::eval::skab::{SKAB_TRAIN_ROWS, pooled_counts, split};

fn shared(sub: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(sub);
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("skipped: {} not present", p.display());
        None
    }
}

#[test]
fn full_nab_corpus_has_58_series_365558_rows_and_116_windows() {
    let Some(dir) = shared("nab") else { return };
    let corpus = load_nab_corpus(dir).unwrap();
    assert_eq!(corpus.series.len(), 58);
    assert_eq!(corpus.n_rows(), 365_558);
    assert_eq!(corpus.n_windows(), 116);
    // The null detector (constant 0.5) normalises to exactly 0.
    let scores: Vec<Vec<f64>> = corpus
        .series
        .iter()
        .map(|s| vec![0.5; s.n_rows()])
        .collect();
    let inputs: Vec<NabFileInput> = corpus
        .series
        .iter()
        .zip(&scores)
        .map(|(s, v)| NabFileInput::from_series(s, v))
        .collect();
    let r = optimize_threshold(&inputs, NabProfile::Standard).unwrap();
    // NAB's published null baseline: -116 (every window missed), perfect 116.
    assert_eq!((r.null_score, r.perfect_score), (-116.0, 116.0));
    assert_eq!(r.normalized_score, 0.0);
}

#[test]
fn full_skab_valve1_splits_and_pools_under_the_leaderboard_protocol() {
    let Some(dir) = shared("skab") else { return };
    let d = load_skab_dir(dir).unwrap();
    assert_eq!(d.files.len(), 16);
    assert_eq!(d.files[0].name, "valve1/0.csv");
    assert_eq!(d.files[0].n_features, 8);
    assert!(d.anomaly_free.as_ref().is_some_and(|f| !f.labelled));
    // Predicting "anomaly" everywhere gives recall 1 and FAR 1 on the pool.
    let all: Vec<Vec<bool>> = d
        .files
        .iter()
        .map(|f| vec![true; split(f).unwrap().n_test()])
        .collect();
    let c = pooled_counts(&d.files, &all).unwrap();
    let test_rows: usize = d.files.iter().map(|f| f.n_rows() - SKAB_TRAIN_ROWS).sum();
    assert_eq!(c.total() as usize, test_rows);
    assert_eq!((c.tn, c.fn_), (0, 0));
    assert!(c.tp > 0 && c.fp > 0);
    assert_eq!(c.false_alarm_rate(), 1.0);
}

#[test]
fn full_odds_sets_match_the_readme_table() {
    let Some(dir) = shared("tabular") else { return };
    for (file, rows, dims) in [
        ("cardio.csv", 1831, 21),
        ("shuttle.csv", 49_097, 9),
        ("satellite.csv", 6435, 36),
        ("pendigits.csv", 6870, 16),
        ("pima.csv", 768, 8),
        ("thyroid.csv", 3772, 6),
        ("mammography.csv", 11_183, 6),
    ] {
        let t = load_tabular(dir.join(file)).unwrap();
        assert_eq!((t.n_rows(), t.n_features), (rows, dims), "{file}");
    }
}
