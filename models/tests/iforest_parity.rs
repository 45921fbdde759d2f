//! Scoring parity with scikit-learn 1.9.1: trees exported by
//! `scripts/sklearn_golden.py` score exactly like scikit-learn.
//!
//! Regenerate the golden with `/opt/sad-venv/bin/python scripts/sklearn_golden.py`.

use sad_models::Detector;
use sad_models::iforest::IsolationForest;
use sad_models::iforest::sklearn::{SklearnExport, SklearnTree};
use serde::Deserialize;

const GOLDEN: &str = include_str!("data/iforest_golden.json");

#[derive(Deserialize)]
struct Golden {
    sklearn_version: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    model: Model,
    test: TestRows,
}

/// Floats are repr strings in the golden, parsed exactly with `str::parse`.
#[derive(Deserialize)]
struct Model {
    n_features: usize,
    max_samples: usize,
    offset: String,
    contamination: Option<String>,
    train_score_samples: Vec<String>,
    trees: Vec<Tree>,
}

#[derive(Deserialize)]
struct Tree {
    feature: Vec<i64>,
    threshold: Vec<String>,
    children_left: Vec<i64>,
    children_right: Vec<i64>,
    n_node_samples: Vec<i64>,
    estimator_features: Option<Vec<usize>>,
}

#[derive(Deserialize)]
struct TestRows {
    rows: Vec<Vec<String>>,
    score_samples: Vec<String>,
    decision_function: Vec<String>,
    predict: Vec<i8>,
}

fn f(s: &str) -> f64 {
    s.parse().expect("golden float")
}

fn fs(v: &[String]) -> Vec<f64> {
    v.iter().map(|s| f(s)).collect()
}

fn export(m: &Model) -> SklearnExport {
    SklearnExport {
        n_features: m.n_features,
        max_samples: m.max_samples,
        offset: f(&m.offset),
        contamination: m.contamination.as_deref().map(f),
        train_score_samples: fs(&m.train_score_samples),
        trees: m
            .trees
            .iter()
            .map(|t| SklearnTree {
                feature: t.feature.clone(),
                threshold: fs(&t.threshold),
                children_left: t.children_left.clone(),
                children_right: t.children_right.clone(),
                n_node_samples: t.n_node_samples.clone(),
                estimator_features: t.estimator_features.clone(),
            })
            .collect(),
    }
}

fn golden() -> Golden {
    let g: Golden = serde_json::from_str(GOLDEN).expect("golden parses");
    assert_eq!(g.sklearn_version, "1.9.1");
    assert!(g.cases.len() >= 2);
    g
}

fn flat_rows(rows: &[Vec<String>]) -> Vec<f64> {
    rows.iter().flat_map(|r| fs(r)).collect()
}

#[test]
fn score_samples_and_decision_function_match_sklearn_to_1e_9() {
    for case in golden().cases {
        let forest = IsolationForest::from_sklearn_export(&export(&case.model)).unwrap();
        let rows = flat_rows(&case.test.rows);
        let scores = forest.score_samples(&rows).unwrap();
        let decision = forest.decision_function(&rows).unwrap();
        let want_s = fs(&case.test.score_samples);
        let want_d = fs(&case.test.decision_function);
        assert_eq!(scores.len(), want_s.len(), "{}", case.name);
        let mut worst = 0f64;
        for (i, (got, want)) in scores.iter().zip(&want_s).enumerate() {
            assert!(
                (got - want).abs() <= 1e-9,
                "{} row {i}: score {got} vs sklearn {want}",
                case.name
            );
            worst = worst.max((got - want).abs());
        }
        for (i, (got, want)) in decision.iter().zip(&want_d).enumerate() {
            assert!(
                (got - want).abs() <= 1e-9,
                "{} row {i}: decision {got} vs sklearn {want}",
                case.name
            );
        }
        // Same float operations in the same order: in practice bit-identical.
        assert!(worst <= 1e-15, "{}: worst difference {worst}", case.name);
    }
}

#[test]
fn predict_equals_sklearn_on_every_row() {
    for case in golden().cases {
        let forest = IsolationForest::from_sklearn_export(&export(&case.model)).unwrap();
        let rows = flat_rows(&case.test.rows);
        assert_eq!(
            forest.predict(&rows).unwrap(),
            case.test.predict,
            "{}",
            case.name
        );
    }
}

#[test]
fn single_row_scoring_matches_the_batch_path_bit_for_bit() {
    for case in golden().cases {
        let forest = IsolationForest::from_sklearn_export(&export(&case.model)).unwrap();
        let rows = flat_rows(&case.test.rows);
        let batch = forest.score_samples(&rows).unwrap();
        for (row, want) in rows.chunks_exact(forest.n_features()).zip(&batch) {
            let raw = Detector::raw_score(&forest, row).unwrap();
            assert_eq!((-raw).to_bits(), want.to_bits());
        }
    }
}

#[test]
fn rows_on_thresholds_follow_the_float32_cast() {
    // The golden's last rows sit on split thresholds or their f32 neighbours;
    // comparing in f64 without the cast would mis-route some of them.
    let g = golden();
    let case = &g.cases[0];
    let forest = IsolationForest::from_sklearn_export(&export(&case.model)).unwrap();
    let rows = flat_rows(&case.test.rows);
    let nf = forest.n_features();
    let want = fs(&case.test.score_samples);
    let got = forest.score_samples(&rows).unwrap();
    let on_threshold = 120;
    let start = want.len() - on_threshold;
    for i in start..want.len() {
        assert!((got[i] - want[i]).abs() <= 1e-12, "row {i}");
    }
    // At least one of these rows has a value that rounds up across its f64
    // threshold when cast to f32 (so the cast matters for this data).
    let thresholds: Vec<f64> = case
        .model
        .trees
        .iter()
        .flat_map(|t| fs(&t.threshold))
        .collect();
    let crosses = rows[start * nf..].iter().any(|&x| {
        thresholds
            .iter()
            .any(|&t| x <= t && f64::from(x as f32) > t)
    });
    assert!(crosses, "golden rows no longer exercise the f32 cast");
}

#[test]
fn offset_is_numpys_percentile_of_the_training_scores() {
    let g = golden();
    let case = g
        .cases
        .iter()
        .find(|c| c.model.contamination.is_some())
        .expect("a case with a contamination fraction");
    let c = f(case.model.contamination.as_deref().unwrap());
    let train = fs(&case.model.train_score_samples);
    let offset = sad_models::iforest::offset_for_contamination(&train, c);
    assert_eq!(offset.to_bits(), f(&case.model.offset).to_bits());
}

#[test]
fn detector_decisions_at_threshold_half_equal_sklearn_predict() {
    for case in golden().cases {
        let forest = IsolationForest::from_sklearn_export(&export(&case.model)).unwrap();
        let rows = flat_rows(&case.test.rows);
        let scored = forest.score_batch(&rows).unwrap();
        for (i, (s, p)) in scored.iter().zip(&case.test.predict).enumerate() {
            assert_eq!(s.is_anomaly, *p == -1, "{} row {i}", case.name);
        }
    }
}
