//! The loaders and the NAB scorer on the real files committed under
//! `tests/data/` (NAB excerpt, ODDS sets), so they run without `../shared`.

use std::path::PathBuf;

use sad_models::data::{load_nab_corpus, load_numeric_csv, load_tabular};
use sad_models::eval::nab::{
    NabFileInput, NabProfile, optimize_threshold, probationary_length, score_at_threshold,
};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("data")
}

#[test]
fn committed_nab_corpus_loads_with_nab_window_rows() {
    let corpus = load_nab_corpus(data_dir().join("nab")).unwrap();
    let got: Vec<_> = corpus
        .series
        .iter()
        .map(|s| (s.name.as_str(), s.n_rows(), s.windows.clone()))
        .collect();
    // Row indices as NAB finds them (`timestamps.index(...)` of each window end).
    assert_eq!(
        got,
        vec![
            (
                "artificialWithAnomaly/art_daily_jumpsup.csv",
                4032,
                vec![(2787, 3189)]
            ),
            (
                "realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv",
                4032,
                vec![(1171, 1371), (2830, 3030)]
            ),
            (
                "realKnownCause/ambient_temperature_system_failure.csv",
                7267,
                vec![(3540, 3902), (5999, 6361)]
            ),
            (
                "realKnownCause/machine_temperature_system_failure.csv",
                22695,
                vec![(2126, 2692), (3703, 4269), (16057, 16623), (19232, 19798)]
            ),
        ]
    );
    assert_eq!(corpus.n_windows(), 9);
    let jumps = &corpus.series[0];
    assert_eq!(jumps.timestamps.len(), jumps.values.len());
    // 5-minute sampling.
    assert_eq!(jumps.timestamps[1] - jumps.timestamps[0], 300);
}

#[test]
fn committed_odds_sets_load_with_their_published_shapes() {
    for (file, rows, dims, anomalies) in [
        ("pima.csv", 768, 8, 268),
        ("thyroid.csv", 3772, 6, 93),
        ("cardio.csv", 1831, 21, 176),
    ] {
        let t = load_tabular(data_dir().join("odds").join(file)).unwrap();
        assert_eq!(t.n_rows(), rows, "{file}");
        assert_eq!(t.n_features, dims, "{file}");
        assert_eq!(t.x.len(), rows * dims, "{file}");
        assert_eq!(t.labels.iter().filter(|&&l| l).count(), anomalies, "{file}");
        assert_eq!(t.feature_names[0], "x0");
    }
}

/// The `numenta` detector's published scores for three committed series,
/// scored at NAB's thresholds (`config/thresholds.json`).
struct Published {
    file: &'static str,
    /// (profile, threshold, score, tp, tn, fp, fn) from
    /// `results/numenta/numenta_<profile>_scores.csv`.
    rows: [(NabProfile, f64, f64, usize, usize, usize, usize); 3],
}

const STD_THRESHOLD: f64 = 0.5421876907348634;
const LOW_FP_THRESHOLD: f64 = 0.5751955032348636;

const PUBLISHED: [Published; 3] = [
    Published {
        file: "artificialWithAnomaly/art_daily_jumpsup.csv",
        rows: [
            (
                NabProfile::Standard,
                STD_THRESHOLD,
                0.86067182427,
                5,
                3025,
                0,
                398,
            ),
            (
                NabProfile::RewardLowFp,
                LOW_FP_THRESHOLD,
                0.86067182427,
                4,
                3025,
                0,
                399,
            ),
            (
                NabProfile::RewardLowFn,
                STD_THRESHOLD,
                0.86067182427,
                5,
                3025,
                0,
                398,
            ),
        ],
    },
    Published {
        file: "realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv",
        rows: [
            (
                NabProfile::Standard,
                STD_THRESHOLD,
                1.72310160415,
                6,
                3026,
                0,
                396,
            ),
            (
                NabProfile::RewardLowFp,
                LOW_FP_THRESHOLD,
                1.72310160415,
                6,
                3026,
                0,
                396,
            ),
            (
                NabProfile::RewardLowFn,
                STD_THRESHOLD,
                1.72310160415,
                6,
                3026,
                0,
                396,
            ),
        ],
    },
    Published {
        file: "realKnownCause/ambient_temperature_system_failure.csv",
        rows: [
            (
                NabProfile::Standard,
                STD_THRESHOLD,
                -0.758599859273,
                3,
                5785,
                6,
                723,
            ),
            (
                NabProfile::RewardLowFp,
                LOW_FP_THRESHOLD,
                -0.758599859273,
                3,
                5788,
                3,
                723,
            ),
            (
                NabProfile::RewardLowFn,
                STD_THRESHOLD,
                -1.75859985927,
                3,
                5785,
                6,
                723,
            ),
        ],
    },
];

fn numenta_scores(name: &str) -> Vec<f64> {
    let (category, file) = name.split_once('/').unwrap();
    let path = data_dir()
        .join("nab/results/numenta")
        .join(category)
        .join(format!("numenta_{file}"));
    load_numeric_csv(path, b',').unwrap().values
}

#[test]
fn nab_scorer_reproduces_the_per_file_scores_nab_published_for_numenta() {
    let corpus = load_nab_corpus(data_dir().join("nab")).unwrap();
    for published in &PUBLISHED {
        let series = corpus.get(published.file).unwrap();
        let scores = numenta_scores(published.file);
        let input = [NabFileInput::from_series(series, &scores)];
        for &(profile, threshold, score, tp, tn, fp, fn_) in &published.rows {
            let r = score_at_threshold(&input, profile, threshold).unwrap();
            let file = &r.per_file[0].score;
            // NAB printed 12 significant digits.
            assert!(
                (file.raw_score - score).abs() < 1e-10,
                "{} {profile:?}: {} vs {score}",
                published.file,
                file.raw_score
            );
            let c = file.counts;
            assert_eq!(
                (c.tp, c.tn, c.fp, c.fn_),
                (tp, tn, fp, fn_),
                "{} {profile:?}",
                published.file
            );
            assert_eq!(
                c.total,
                series.n_rows() - probationary_length(series.n_rows())
            );
        }
    }
}

#[test]
fn optimised_threshold_scores_at_least_as_well_as_nab_published_threshold() {
    let corpus = load_nab_corpus(data_dir().join("nab")).unwrap();
    let scores: Vec<(usize, Vec<f64>)> = PUBLISHED
        .iter()
        .map(|p| {
            let i = corpus.series.iter().position(|s| s.name == p.file).unwrap();
            (i, numenta_scores(p.file))
        })
        .collect();
    let inputs: Vec<NabFileInput> = scores
        .iter()
        .map(|(i, s)| NabFileInput::from_series(&corpus.series[*i], s))
        .collect();
    let at = score_at_threshold(&inputs, NabProfile::Standard, STD_THRESHOLD).unwrap();
    let best = optimize_threshold(&inputs, NabProfile::Standard).unwrap();
    // 0.86067182427 + 1.72310160415 - 0.758599859273 = 1.825173569147.
    assert!((at.raw_score - 1.825173569147).abs() < 1e-9);
    assert!(best.raw_score >= at.raw_score - 1e-12);
    assert!(best.normalized_score > 0.0 && best.normalized_score <= 100.0);
    // Five windows: perfect 5, null -5.
    assert_eq!((best.perfect_score, best.null_score), (5.0, -5.0));
}
