//! Per-window inference latency of the TFLite autoencoders in tract, batch 1
//! and batch N: `cargo bench -p sad-models --features train --bench nn`.
//! Weights are seeded initialisations (latency does not depend on training).
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use sad_models::nn::rng::SeededRng;
use sad_models::nn::tflite::TflitePlan;
use sad_models::nn::{Architecture, Params, export};

const BATCH_N: usize = 64;

fn plan(arch: &Architecture, batch: usize) -> (TflitePlan, Vec<f32>) {
    let params = Params::init(arch, 1).unwrap();
    let mut r = SeededRng::new(2);
    let input: Vec<f32> = (0..arch.sample_len() * batch)
        .map(|_| r.normal() as f32)
        .collect();
    let (bytes, _) = export::export_variant(arch, &params, batch, &input).unwrap();
    (TflitePlan::load(&bytes, arch).unwrap(), input)
}

fn bench(c: &mut Criterion) {
    let models = [
        (
            "dense_ae_f8",
            Architecture::Dense {
                n_features: 8,
                hidden: vec![16],
                latent: 4,
            },
        ),
        (
            "lstm_ae_t32_f4_h32",
            Architecture::Lstm {
                n_features: 4,
                window: 32,
                hidden: 32,
                latent: 8,
            },
        ),
    ];
    let mut g = c.benchmark_group("nn_tract");
    for (name, arch) in &models {
        for batch in [1, BATCH_N] {
            let (p, input) = plan(arch, batch);
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_with_input(
                BenchmarkId::new(*name, format!("batch{batch}")),
                &input,
                |b, x| b.iter(|| p.run(x).unwrap()),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
