//! Unit tests of the Isolation Forest.

use linfa::traits::{Fit, Predict};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::stored::{StoredForest, StoredNode};
use super::*;

/// `n` rows of `nf` standard normal-ish features (sum of uniforms), seeded.
fn gaussian(n: usize, nf: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * nf)
        .map(|_| (0..12).map(|_| rng.r#gen::<f64>()).sum::<f64>() - 6.0)
        .collect()
}

fn small_forest(contamination: Contamination) -> (IsolationForest, Vec<f64>) {
    let rows = gaussian(500, 3, 7);
    let params = IsolationForestParams {
        n_estimators: 50,
        contamination,
        ..Default::default()
    };
    (params.fit(&rows, 3).unwrap(), rows)
}

/// ROC-AUC of `scores` (higher = more anomalous) for binary `labels`.
fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in &idx[i..=j] {
            if labels[*k] {
                rank_sum += avg;
            }
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

#[test]
fn average_path_length_matches_sklearn() {
    assert_eq!(average_path_length(0), 0.0);
    assert_eq!(average_path_length(1), 0.0);
    assert_eq!(average_path_length(2), 1.0);
    assert_eq!(average_path_length(3), 1.207392357589623);
    assert_eq!(average_path_length(256), 10.244770920119917);
    assert_eq!(average_path_length(100_000), 22.180282259643523);
}

#[test]
fn percentile_matches_numpy_bit_for_bit() {
    let mut a = vec![0.3, -1.0, 2.5, 7.0, 4.25, -3.5, 0.1];
    a.sort_by(f64::total_cmp);
    assert_eq!(numpy_percentile_sorted(&a, 5.0), -2.75);
    assert_eq!(numpy_percentile_sorted(&a, 50.0), 0.3);
    assert_eq!(numpy_percentile_sorted(&a, 95.0), 6.174999999999998);
    assert_eq!(numpy_percentile_sorted(&a, 100.0 * 0.07), -2.45);
    assert_eq!(
        numpy_percentile_sorted(&a, 100.0 * 0.3),
        -0.12000000000000022
    );
    assert_eq!(numpy_percentile_sorted(&a, 100.0), 7.0);
}

#[test]
fn depth_limit_is_ceil_log2_of_max_samples() {
    assert_eq!(depth_limit(1), 1);
    assert_eq!(depth_limit(2), 1);
    assert_eq!(depth_limit(3), 2);
    assert_eq!(depth_limit(256), 8);
    assert_eq!(depth_limit(257), 9);
}

#[test]
fn fitted_trees_respect_sample_size_depth_and_leaf_rules() {
    let rows = gaussian(1000, 4, 1);
    let forest = IsolationForestParams {
        n_estimators: 20,
        ..Default::default()
    }
    .fit(&rows, 4)
    .unwrap();
    assert_eq!(forest.max_samples(), 256);
    for tree in &forest.stored.trees {
        assert_eq!(tree[0].n_samples, 256);
        let mut depth = vec![0u32; tree.len()];
        for (i, node) in tree.iter().enumerate() {
            assert!(depth[i] <= 8);
            if node.is_leaf() {
                assert!(depth[i] == 8 || node.n_samples == 1);
            } else {
                let (l, r) = (node.left as usize, node.right as usize);
                assert_eq!(l, i + 1, "left child follows its parent (depth first)");
                assert_eq!(tree[l].n_samples + tree[r].n_samples, node.n_samples);
                depth[l] = depth[i] + 1;
                depth[r] = depth[i] + 1;
            }
        }
    }
}

#[test]
fn same_seed_gives_the_same_forest_and_another_seed_does_not() {
    let rows = gaussian(400, 3, 2);
    let p = IsolationForestParams {
        n_estimators: 30,
        seed: 42,
        ..Default::default()
    };
    let a = p.fit(&rows, 3).unwrap();
    let b = p.fit(&rows, 3).unwrap();
    assert_eq!(a.to_bytes(), b.to_bytes());
    let c = IsolationForestParams { seed: 43, ..p }
        .fit(&rows, 3)
        .unwrap();
    assert_ne!(a.to_bytes(), c.to_bytes());
}

#[test]
fn round_trip_through_bytes_and_json_keeps_scores_identical() {
    let (forest, rows) = small_forest(Contamination::Fraction(0.1));
    let forest = forest.with_threshold(0.7);
    let back = IsolationForest::from_bytes(&forest.to_bytes()).unwrap();
    let json = serde_json::to_string(&forest).unwrap();
    let from_json: IsolationForest = serde_json::from_str(&json).unwrap();
    let want = forest.score_samples(&rows).unwrap();
    assert_eq!(back.score_samples(&rows).unwrap(), want);
    assert_eq!(back.offset(), forest.offset());
    assert_eq!(Detector::threshold(&back), 0.7);
    assert_eq!(Detector::calibration(&back), Detector::calibration(&forest));
    // The trees survive JSON exactly (f32 thresholds, integers); serde_json's
    // default float parser may move an f64 (offset, calibration) by one ulp.
    assert_eq!(from_json.score_samples(&rows).unwrap(), want);
    assert!((from_json.offset() - forest.offset()).abs() <= 1e-15);
    assert_eq!(Detector::threshold(&from_json), 0.7);
}

#[test]
fn wrong_dimensions_and_non_finite_values_are_errors() {
    let (forest, _) = small_forest(Contamination::Auto);
    assert!(matches!(
        forest.score_samples(&[1.0, 2.0]),
        Err(ModelError::Dimension { .. })
    ));
    assert!(matches!(
        forest.score_samples(&[1.0, f64::NAN, 3.0]),
        Err(ModelError::NonFinite { feature: 1 })
    ));
    assert!(matches!(
        Detector::score(&forest, &[1.0, 2.0, f64::INFINITY]),
        Err(ModelError::NonFinite { feature: 2 })
    ));
    assert!(forest.contributions(&[1.0]).is_err());
    let p = IsolationForestParams::default();
    assert!(p.fit(&[1.0, 2.0, 3.0], 2).is_err());
    assert!(p.fit(&[], 2).is_err());
    assert!(p.fit(&[1.0, f64::NAN], 2).is_err());
    assert!(p.fit(&[1.0, 2.0], 0).is_err());
}

#[test]
fn invalid_parameters_are_rejected() {
    let rows = gaussian(50, 2, 3);
    let bad = [
        IsolationForestParams {
            n_estimators: 0,
            ..Default::default()
        },
        IsolationForestParams {
            max_samples: MaxSamples::Count(0),
            ..Default::default()
        },
        IsolationForestParams {
            max_samples: MaxSamples::Fraction(1.5),
            ..Default::default()
        },
        IsolationForestParams {
            max_samples: MaxSamples::Fraction(0.001),
            ..Default::default()
        },
        IsolationForestParams {
            contamination: Contamination::Fraction(0.0),
            ..Default::default()
        },
        IsolationForestParams {
            contamination: Contamination::Fraction(0.6),
            ..Default::default()
        },
        IsolationForestParams {
            max_features: 0.0,
            ..Default::default()
        },
    ];
    for p in bad {
        assert!(
            matches!(p.fit(&rows, 2), Err(ModelError::Invalid(_))),
            "{p:?}"
        );
    }
}

#[test]
fn max_samples_follows_sklearn_semantics() {
    let rows = gaussian(100, 2, 4);
    let fit = |m| {
        IsolationForestParams {
            n_estimators: 3,
            max_samples: m,
            ..Default::default()
        }
        .fit(&rows, 2)
        .unwrap()
        .max_samples()
    };
    assert_eq!(fit(MaxSamples::Auto), 100);
    assert_eq!(fit(MaxSamples::Count(1000)), 100);
    assert_eq!(fit(MaxSamples::Count(10)), 10);
    assert_eq!(fit(MaxSamples::Fraction(0.25)), 25);
}

#[test]
fn an_obvious_outlier_scores_higher_than_every_inlier() {
    let (forest, rows) = small_forest(Contamination::Auto);
    let outlier = [8.0, -8.0, 8.0];
    let raw_out = Detector::raw_score(&forest, &outlier).unwrap();
    let mut raw = Vec::new();
    forest.raw_score_batch(&rows, &mut raw).unwrap();
    assert!(raw.iter().all(|r| *r < raw_out));
    assert!(raw_out > 0.5 && raw_out <= 1.0);
    assert_eq!(forest.predict(&outlier).unwrap(), vec![-1]);
    assert!(Detector::score(&forest, &outlier).unwrap().is_anomaly);
    assert!(
        !Detector::score(&forest, &[0.0, 0.0, 0.0])
            .unwrap()
            .is_anomaly
    );
}

#[test]
fn contamination_fraction_flags_about_that_share_of_training_rows() {
    for c in [0.02, 0.1, 0.25] {
        let (forest, rows) = small_forest(Contamination::Fraction(c));
        let flagged = forest
            .predict(&rows)
            .unwrap()
            .iter()
            .filter(|p| **p == -1)
            .count();
        let share = flagged as f64 / 500.0;
        assert!((share - c).abs() <= 0.01, "c {c}: flagged {share}");
        let calibrated = forest
            .score_batch(&rows)
            .unwrap()
            .iter()
            .filter(|s| s.is_anomaly)
            .count();
        assert_eq!(calibrated, flagged, "threshold 0.5 decides like predict");
    }
}

#[test]
fn calibration_centre_is_minus_offset_and_agrees_with_fit_calibration() {
    let (forest, rows) = small_forest(Contamination::Fraction(0.1));
    let mut raw = Vec::new();
    forest.raw_score_batch(&rows, &mut raw).unwrap();
    let reference = crate::detector::fit_calibration(&raw, 0.1).unwrap();
    let (
        Calibration::Logistic { center, scale },
        Calibration::Logistic {
            center: rc,
            scale: rs,
        },
    ) = (*Detector::calibration(&forest), reference)
    else {
        panic!("logistic calibrations expected");
    };
    assert_eq!(center, -forest.offset());
    assert!((center - rc).abs() < 1e-12 && (scale - rs).abs() < 1e-9);

    let (auto, _) = small_forest(Contamination::Auto);
    assert_eq!(auto.offset(), -0.5);
    assert!(matches!(
        Detector::calibration(&auto),
        Calibration::Logistic { center, .. } if *center == 0.5
    ));
}

#[test]
fn max_features_below_one_gives_trees_on_feature_subsets() {
    let nf = 6;
    let mut rows = gaussian(600, nf, 5);
    for r in 0..20 {
        rows[r * nf + (r % nf)] += 9.0;
    }
    let forest = IsolationForestParams {
        n_estimators: 60,
        max_features: 0.5,
        ..Default::default()
    }
    .fit(&rows, nf)
    .unwrap();
    for tree in &forest.stored.trees {
        let mut used: Vec<u32> = tree
            .iter()
            .filter(|n| !n.is_leaf())
            .map(|n| n.feature)
            .collect();
        used.sort_unstable();
        used.dedup();
        assert!(used.len() <= 3, "a tree used {used:?}");
    }
    let labels: Vec<bool> = (0..600).map(|r| r < 20).collect();
    let scores: Vec<f64> = forest
        .score_samples(&rows)
        .unwrap()
        .iter()
        .map(|s| -s)
        .collect();
    assert!(roc_auc(&scores, &labels) > 0.9);
}

#[test]
fn contributions_name_the_feature_a_row_is_outlying_in() {
    let nf = 5;
    let rows = gaussian(2000, nf, 6);
    let forest = IsolationForestParams::default().fit(&rows, nf).unwrap();
    for j in 0..nf {
        for sign in [-1.0, 1.0] {
            let mut row = vec![0.1; nf];
            row[j] = sign * 6.0;
            let top = Detector::explain(&forest, &row, 1).unwrap();
            assert_eq!(top[0].feature, j, "row {row:?}");
        }
    }
}

#[test]
fn contributions_sum_to_the_expected_path_saving() {
    let (forest, rows) = small_forest(Contamination::Auto);
    let c_root = average_path_length(forest.max_samples() as u64);
    for row in rows.chunks_exact(3).take(50) {
        let total: f64 = forest.contributions(row).unwrap().iter().sum();
        let mean_path = forest.flat.path_sum_one(row) / forest.n_estimators() as f64;
        assert!((total - (c_root - mean_path)).abs() < 1e-9);
    }
}

#[test]
fn linfa_dataset_fit_and_predict_give_sklearn_scores() {
    let rows = gaussian(300, 2, 8);
    let records = ndarray::Array2::from_shape_vec((300, 2), rows.clone()).unwrap();
    let dataset = linfa::Dataset::new(records.clone(), ndarray::Array1::<f64>::zeros(300));
    let params = IsolationForestParams {
        n_estimators: 20,
        ..Default::default()
    };
    let via_linfa: IsolationForest = Fit::<_, _, ModelError>::fit(&params, &dataset).unwrap();
    let direct = params.fit(&rows, 2).unwrap();
    assert_eq!(via_linfa.to_bytes(), direct.to_bytes());
    let predicted: ndarray::Array1<f64> = Predict::predict(&via_linfa, &records);
    assert_eq!(predicted.to_vec(), direct.score_samples(&rows).unwrap());
    let wrong = ndarray::Array2::<f64>::zeros((4, 3));
    let nan: ndarray::Array1<f64> = Predict::predict(&via_linfa, &wrong);
    assert!(nan.iter().all(|v| v.is_nan()));
}

fn tiny_stored() -> StoredForest {
    let leaf = |n| StoredNode {
        feature: 0,
        threshold: 0.0,
        left: 0,
        right: 0,
        n_samples: n,
    };
    StoredForest {
        n_features: 2,
        max_samples: 4,
        offset: -0.5,
        contamination: Contamination::Auto,
        calibration: Calibration::Logistic {
            center: 0.5,
            scale: 0.1,
        },
        threshold: 0.5,
        trees: vec![vec![
            StoredNode {
                feature: 1,
                threshold: 0.5,
                left: 1,
                right: 2,
                n_samples: 4,
            },
            leaf(3),
            leaf(1),
        ]],
    }
}

#[test]
fn hand_built_tree_scores_by_the_formula() {
    let forest = IsolationForest::from_stored(tiny_stored()).unwrap();
    let c4 = average_path_length(4);
    let left = 1.0 + average_path_length(3);
    let right = 1.0;
    let s = forest.score_samples(&[0.0, 0.5, 0.0, 0.6]).unwrap();
    assert_eq!(s[0], -(2f64.powf(-(left / c4))));
    assert_eq!(s[1], -(2f64.powf(-(right / c4))));
}

#[test]
fn structurally_broken_forests_are_rejected() {
    let mut cases = Vec::new();
    let mut s = tiny_stored();
    s.trees[0][0].left = 0;
    s.trees[0][0].right = 2;
    cases.push(("child before parent", s));
    let mut s = tiny_stored();
    s.trees[0][0].right = 7;
    cases.push(("child out of range", s));
    let mut s = tiny_stored();
    s.trees[0][0].feature = 2;
    cases.push(("feature out of range", s));
    let mut s = tiny_stored();
    s.trees[0][0].threshold = f32::NAN;
    cases.push(("nan threshold", s));
    let mut s = tiny_stored();
    s.trees[0][0].right = 1;
    cases.push(("same child twice", s));
    let mut s = tiny_stored();
    let extra = s.trees[0][2];
    s.trees[0].push(extra);
    cases.push(("unreachable node", s));
    let mut s = tiny_stored();
    s.trees.clear();
    cases.push(("no trees", s));
    let mut s = tiny_stored();
    s.offset = f64::INFINITY;
    cases.push(("infinite offset", s));
    let mut s = tiny_stored();
    s.n_features = 0;
    cases.push(("no features", s));
    for (what, s) in cases {
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert!(IsolationForest::from_bytes(&bytes).is_err(), "{what}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn truncated_bytes_never_decode(cut in 0usize..10_000) {
        let (forest, _) = small_forest(Contamination::Auto);
        let bytes = forest.to_bytes();
        let cut = cut % bytes.len();
        prop_assert!(IsolationForest::from_bytes(&bytes[..cut]).is_err());
    }

    #[test]
    fn bit_flipped_bytes_never_panic_and_decode_only_to_usable_forests(
        flips in proptest::collection::vec((0usize..100_000, 0u8..8), 1..4)
    ) {
        let forest = IsolationForest::from_stored(tiny_stored()).unwrap();
        let mut bytes = forest.to_bytes();
        for (pos, bit) in flips {
            let n = bytes.len();
            bytes[pos % n] ^= 1 << bit;
        }
        // A flip in a threshold or count can leave a valid forest; structure
        // flips must be caught. Either way nothing panics and a decoded
        // forest scores finite values.
        if let Ok(f) = IsolationForest::from_bytes(&bytes) {
            let row = vec![0.25; f.n_features()];
            let s = f.score_samples(&row).unwrap();
            prop_assert!(s[0].is_finite() && s[0] < 0.0);
        }
    }

    #[test]
    fn random_bytes_are_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        prop_assert!(IsolationForest::from_bytes(&bytes).is_err());
    }
}

/// Quality parity with scikit-learn on the ODDS sets in `../shared/data`
/// (reference AUC "all" from its README); skipped when the folder is absent.
#[test]
fn fit_quality_matches_sklearn_auc_on_odds_sets() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tabular");
    if !dir.exists() {
        eprintln!("skipping: {} not found", dir.display());
        return;
    }
    for (file, reference) in [
        ("thyroid.csv", 0.978),
        ("cardio.csv", 0.932),
        ("pima.csv", 0.670),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let mut lines = text.lines();
        let nf = lines.next().unwrap().split(',').count() - 1;
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for line in lines.filter(|l| !l.is_empty()) {
            let v: Vec<f64> = line.split(',').map(|x| x.parse().unwrap()).collect();
            rows.extend_from_slice(&v[..nf]);
            labels.push(v[nf] == 1.0);
        }
        let mut auc = 0.0;
        for seed in 0..5 {
            let forest = IsolationForestParams {
                seed,
                ..Default::default()
            }
            .fit(&rows, nf)
            .unwrap();
            let raw: Vec<f64> = forest
                .score_samples(&rows)
                .unwrap()
                .iter()
                .map(|s| -s)
                .collect();
            auc += roc_auc(&raw, &labels) / 5.0;
        }
        eprintln!("{file}: AUC {auc:.4} (sklearn {reference})");
        assert!(
            auc > reference - 0.015,
            "{file}: AUC {auc} vs sklearn {reference}"
        );
    }
}

/// A random tree in stored form (pre-order, so children follow parents),
/// splitting on thresholds drawn from `cuts`.
fn random_tree(
    rng: &mut ChaCha8Rng,
    nf: u32,
    cuts: &[f32],
    max_depth: u32,
    depth: u32,
    nodes: &mut Vec<StoredNode>,
) -> u32 {
    let i = nodes.len() as u32;
    let n_samples = rng.gen_range(1..300);
    nodes.push(StoredNode {
        feature: 0,
        threshold: 0.0,
        left: 0,
        right: 0,
        n_samples,
    });
    // The first levels always split, so the forest reaches its depth bound.
    if depth < max_depth && (depth < 2 || rng.gen_bool(0.8)) {
        let left = random_tree(rng, nf, cuts, max_depth, depth + 1, nodes);
        let right = random_tree(rng, nf, cuts, max_depth, depth + 1, nodes);
        nodes[i as usize] = StoredNode {
            feature: rng.gen_range(0..nf),
            threshold: cuts[rng.gen_range(0..cuts.len())],
            left,
            right,
            n_samples,
        };
    }
    i
}

/// Values that hit thresholds exactly, fall just beside them, or are extreme.
fn probe_value(rng: &mut ChaCha8Rng, cuts: &[f32]) -> f64 {
    let c = cuts[rng.gen_range(0..cuts.len())];
    let t = f64::from(c);
    match rng.gen_range(0..8) {
        0 | 1 => t,
        2 => f64::from_bits(t.to_bits() + 1),
        3 => f64::from(f32::from_bits(c.to_bits() ^ 1)),
        4 => [f64::MAX, -f64::MAX, f64::from(f32::MAX), 0.0, -0.0, 1e-300][rng.gen_range(0..6)],
        _ => rng.gen_range(-10.0..10.0),
    }
}

/// Depth of the subtree at `i` of a stored tree.
fn tree_depth(tree: &[StoredNode], i: usize) -> u32 {
    let n = tree[i];
    if n.is_leaf() {
        0
    } else {
        1 + tree_depth(tree, n.left as usize).max(tree_depth(tree, n.right as usize))
    }
}

#[test]
fn packed_walks_equal_the_plain_walk_on_random_forests_and_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut cuts: Vec<f32> = (0..40).map(|_| rng.gen_range(-5.0f32..5.0)).collect();
    cuts.extend([0.0, -0.0, f32::MAX, -f32::MAX, f32::MIN_POSITIVE, 1e-40]);
    // Depths 0..=12 cover every complete-layout size and the node-walk
    // fallback (> 10); widths cover narrow, wide and too-wide rows.
    for (case, max_depth) in (0..=12).chain([8, 8, 8, 10, 11]).enumerate() {
        let nf = [1, 4, 4, 5, 8, 9, 33, 64, 65][case % 9];
        let n_trees = rng.gen_range(1..30);
        let trees = (0..n_trees)
            .map(|_| {
                let mut nodes = Vec::new();
                random_tree(&mut rng, nf, &cuts, max_depth, 0, &mut nodes);
                nodes
            })
            .collect();
        let mut stored = tiny_stored();
        stored.n_features = nf;
        stored.trees = trees;
        let depth = stored.trees.iter().map(|t| tree_depth(t, 0)).max().unwrap();
        let flat = stored.validate_and_flatten().unwrap();
        assert_eq!(
            flat.is_complete(),
            depth <= flat::COMPLETE_MAX_DEPTH && nf <= 64,
            "case {case}"
        );
        for n in [1, 7, 8, 9, 100, 513, 1100] {
            let rows: Vec<f64> = (0..n * nf as usize)
                .map(|_| probe_value(&mut rng, &cuts))
                .collect();
            let want = flat.path_sums_reference(&rows, nf as usize);
            let mut got = Vec::new();
            flat.path_sums(&rows, nf as usize, &mut got);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "case {case}, {n} rows");
            let one: Vec<f64> = rows
                .chunks_exact(nf as usize)
                .map(|r| flat.path_sum_one(r))
                .collect();
            assert_eq!(bits(&one), bits(&want), "case {case}, one by one");
            let nodes = flat.clone().without_complete();
            got.clear();
            nodes.path_sums(&rows, nf as usize, &mut got);
            assert_eq!(bits(&got), bits(&want), "case {case}, node walks");
        }
    }
}

#[test]
fn fitted_forests_use_the_complete_layout_up_to_depth_ten() {
    let rows = gaussian(3_000, 3, 5);
    for (max_samples, complete) in [(256, true), (1024, true), (1025, false)] {
        let forest = IsolationForestParams {
            n_estimators: 20,
            max_samples: MaxSamples::Count(max_samples),
            ..Default::default()
        }
        .fit(&rows, 3)
        .unwrap();
        assert_eq!(forest.flat.is_complete(), complete, "{max_samples}");
        let mut got = Vec::new();
        forest.flat.path_sums(&rows, 3, &mut got);
        assert_eq!(got, forest.flat.path_sums_reference(&rows, 3));
    }
}
