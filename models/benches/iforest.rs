//! Isolation Forest scoring benchmarks.
//!
//! A forest of 100 trees (max_samples 256) fitted on 10,000 rows of 4
//! features ~ N(mu = (1.2, 3.4, 5.6, 7.8), 1), seeded; then batch
//! `score_samples` over 100,000 rows, one-row `score_samples`, and one row
//! through `Detector::score` (calibrated). `scripts/bench-iforest` runs this
//! and the scikit-learn counterpart back to back.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sad_models::Detector;
use sad_models::iforest::{IsolationForest, IsolationForestParams};

const MU: [f64; 4] = [1.2, 3.4, 5.6, 7.8];

/// `n` rows ~ N(MU, 1) by Box–Muller, seeded.
fn normal_rows(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * MU.len());
    while out.len() < n * MU.len() {
        let u1: f64 = 1.0 - rng.r#gen::<f64>();
        let u2: f64 = rng.r#gen();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        for z in [r * theta.cos(), r * theta.sin()] {
            if out.len() < n * MU.len() {
                let f = out.len() % MU.len();
                out.push(MU[f] + z);
            }
        }
    }
    out
}

fn forest() -> IsolationForest {
    let train = normal_rows(10_000, 1);
    IsolationForestParams {
        n_estimators: 100,
        seed: 7,
        ..Default::default()
    }
    .fit(&train, MU.len())
    .expect("fit")
}

fn bench(c: &mut Criterion) {
    let forest = forest();
    let rows = normal_rows(100_000, 2);
    let n = rows.len() / MU.len();

    let mut group = c.benchmark_group("iforest");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(20);
    let mut out = Vec::with_capacity(n);
    group.bench_function("score_samples_batch_100k", |b| {
        b.iter(|| {
            forest
                .score_samples_into(black_box(&rows), &mut out)
                .expect("score");
            black_box(out.last().copied())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("iforest_single_row");
    group.throughput(Throughput::Elements(1));
    let singles: Vec<&[f64]> = rows.chunks_exact(MU.len()).take(2_000).collect();
    let mut i = 0;
    group.bench_function("score_samples_one_row", |b| {
        b.iter(|| {
            i = (i + 1) % singles.len();
            forest
                .score_samples_into(black_box(singles[i]), &mut out)
                .expect("score");
            black_box(out[0])
        })
    });
    group.bench_function("detector_score_one_row", |b| {
        b.iter(|| {
            i = (i + 1) % singles.len();
            black_box(Detector::score(&forest, black_box(singles[i])).expect("score"))
        })
    });
    group.finish();

    c.bench_function("iforest_fit_100_trees_10k_rows", |b| {
        let train = normal_rows(10_000, 1);
        b.iter(|| {
            IsolationForestParams {
                n_estimators: 100,
                seed: 7,
                ..Default::default()
            }
            .fit(black_box(&train), MU.len())
            .expect("fit")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
