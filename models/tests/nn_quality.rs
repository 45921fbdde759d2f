//! Opt-in quality figures of the neural detectors on the shared labelled data
//! (`../shared/data`, beside the checkout). Ignored by default (minutes in a
//! release build); run with
//! `cargo test --release -p sad-models --features train --test nn_quality -- --ignored --nocapture --test-threads 1`.
#![cfg(feature = "train")]

use std::path::PathBuf;

use sad_models::nn::experiments::{NnKind, nab_lstm, skab_counts, tabular_auc};

fn shared() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    p.is_dir().then_some(p)
}

#[test]
#[ignore = "minutes in release; prints the ROC-AUC table for docs/QUALITY.md"]
fn dense_autoencoder_and_vae_rank_tabular_anomalies_above_chance() {
    let Some(root) = shared() else { return };
    let sets = [
        "cardio",
        "shuttle",
        "satellite",
        "pendigits",
        "pima",
        "thyroid",
        "mammography",
    ];
    println!("| set | dense AE | VAE |");
    for set in sets {
        let path = root.join("tabular").join(format!("{set}.csv"));
        let ae = tabular_auc(&path, NnKind::Dense, 30, 0).unwrap();
        let vae = tabular_auc(&path, NnKind::Vae, 30, 0).unwrap();
        println!("| {set} | {ae:.3} | {vae:.3} |");
        assert!(ae > 0.5 && vae > 0.5, "{set}: {ae} {vae}");
    }
}

#[test]
#[ignore = "minutes in release; prints SKAB F1 for docs/QUALITY.md"]
fn skab_f1_of_the_neural_detectors() {
    let Some(root) = shared() else { return };
    let data = sad_models::data::load_skab_dir(root.join("skab")).unwrap();
    for (name, kind, window) in [
        ("lstm-ae T=16", NnKind::Lstm, 16),
        ("dense AE", NnKind::Dense, 1),
        ("VAE", NnKind::Vae, 1),
    ] {
        let c = skab_counts(&data.files, kind, window, 40, 0.01, 0).unwrap();
        println!(
            "skab {name}: F1 {:.3} FAR {:.3} MAR {:.3} ({c:?})",
            c.f1(),
            c.false_alarm_rate(),
            c.missed_alarm_rate()
        );
    }
}

#[test]
#[ignore = "minutes in release; prints the NAB standard score of the LSTM-AE"]
fn nab_standard_score_of_the_lstm_autoencoder() {
    let Some(root) = shared() else { return };
    let r = nab_lstm(&root.join("nab"), 32, 15, 0, false).unwrap();
    println!(
        "nab lstm-ae T=32: standard {:.1} (threshold {:.3}, counts {:?})",
        r.normalized_score, r.threshold, r.counts
    );
    let r = nab_lstm(&root.join("nab"), 32, 15, 0, true).unwrap();
    println!(
        "nab lstm-ae T=32, rising edges: standard {:.1} (threshold {:.3}, counts {:?})",
        r.normalized_score, r.threshold, r.counts
    );
}
