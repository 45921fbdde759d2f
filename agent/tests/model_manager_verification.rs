//! The model manager refuses every bad bundle with its own error, keeps the
//! running model, swaps good ones under load and reloads them offline.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sad_agent::metrics::AgentMetrics;
use sad_agent::model_manager::{ModelManager, ModelManagerError, OfferOutcome};
use sad_common::frame;
use support::{forest, other_key, signed, signed_frame, signing_key, wait_until};

fn manager(dir: &std::path::Path) -> ModelManager {
    ModelManager::open(dir, Some(signing_key().verifying_key()), None).unwrap()
}

/// A manager running `m` version 2.
fn running_v2(dir: &std::path::Path) -> ModelManager {
    let mgr = manager(dir);
    let out = mgr.offer(&signed_frame("m", 2, &signing_key())).unwrap();
    assert_eq!(
        out,
        OfferOutcome::Installed {
            name: "m".into(),
            version: 2,
            previous: None
        }
    );
    mgr
}

fn assert_still_v2(mgr: &ModelManager) {
    assert_eq!(mgr.version_of("m"), Some(2), "the running model changed");
}

#[test]
fn a_signed_newer_bundle_is_installed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = AgentMetrics::new().unwrap();
    let mgr = ModelManager::open(
        dir.path(),
        Some(signing_key().verifying_key()),
        Some(metrics.clone()),
    )
    .unwrap();
    assert!(mgr.current().models.is_empty());
    mgr.offer(&signed_frame("m", 1, &signing_key())).unwrap();
    let out = mgr.offer(&signed_frame("m", 3, &signing_key())).unwrap();
    assert_eq!(
        out,
        OfferOutcome::Installed {
            name: "m".into(),
            version: 3,
            previous: Some(1)
        }
    );
    let st = mgr.statuses();
    assert_eq!(st.len(), 1);
    assert_eq!((st[0].name.as_str(), st[0].version), ("m", 3));
    assert!(dir.path().join("m.bundle").exists());
    assert_eq!(
        metrics.model_updates.with_label_values(&["accepted"]).get(),
        2
    );
    assert_eq!(metrics.model_version.with_label_values(&["m"]).get(), 3);
}

#[test]
fn a_tampered_payload_is_rejected_and_the_running_model_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = running_v2(dir.path());
    let (m, p) = forest("m", 3, 3, 3);
    let mut b = signed(m, p, &signing_key());
    let last = b.payload.len() - 1;
    b.payload[last] ^= 0x55;
    let err = mgr.offer(&frame::encode(&b).unwrap()).unwrap_err();
    assert!(
        matches!(err, ModelManagerError::PayloadMismatch(_)),
        "{err}"
    );
    assert_still_v2(&mgr);
}

#[test]
fn a_tampered_manifest_fails_the_signature_check() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = running_v2(dir.path());
    let (m, p) = forest("m", 3, 3, 3);
    let mut b = signed(m, p, &signing_key());
    b.manifest.threshold = 0.99;
    let err = mgr.offer(&frame::encode(&b).unwrap()).unwrap_err();
    assert!(matches!(err, ModelManagerError::BadSignature(_)), "{err}");
    assert_still_v2(&mgr);
}

#[test]
fn a_bundle_signed_by_another_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = running_v2(dir.path());
    let err = mgr.offer(&signed_frame("m", 3, &other_key())).unwrap_err();
    assert!(matches!(err, ModelManagerError::BadSignature(_)), "{err}");
    assert_eq!(err.reason(), "signature");
    assert_still_v2(&mgr);
}

#[test]
fn an_older_version_is_refused_and_the_same_version_is_already_current() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = running_v2(dir.path());
    let err = mgr
        .offer(&signed_frame("m", 1, &signing_key()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelManagerError::OlderVersion {
                offered: 1,
                running: 2,
                ..
            }
        ),
        "{err}"
    );
    let same = mgr.offer(&signed_frame("m", 2, &signing_key())).unwrap();
    assert_eq!(
        same,
        OfferOutcome::AlreadyCurrent {
            name: "m".into(),
            version: 2
        }
    );
    assert_still_v2(&mgr);
}

#[test]
fn a_truncated_bundle_is_rejected_as_undecodable() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = running_v2(dir.path());
    let f = signed_frame("m", 3, &signing_key());
    for cut in [1, 10, f.len() / 2, f.len() - 1] {
        let err = mgr.offer(&f[..cut]).unwrap_err();
        assert!(
            matches!(err, ModelManagerError::Decode(_)),
            "cut {cut}: {err}"
        );
    }
    assert_still_v2(&mgr);
}

#[test]
fn garbage_bytes_are_rejected_as_undecodable() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = running_v2(dir.path());
    for junk in [
        &b""[..],
        &b"\x01"[..],
        &b"\x02hello"[..],
        &b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        &[0x01; 4096][..],
    ] {
        let err = mgr.offer(junk).unwrap_err();
        assert!(matches!(err, ModelManagerError::Decode(_)), "{err}");
    }
    assert_still_v2(&mgr);
}

#[test]
fn a_payload_the_model_library_cannot_parse_is_rejected_after_verification() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = running_v2(dir.path());
    let (mut m, _) = forest("m", 3, 3, 3);
    let payload = b"signed but not a forest".to_vec();
    m.payload_sha256 = sad_common::wire::sha256_hex(&payload);
    m.payload_len = payload.len() as u64;
    let b = signed(m, payload, &signing_key());
    let err = mgr.offer(&frame::encode(&b).unwrap()).unwrap_err();
    assert!(matches!(err, ModelManagerError::Build { .. }), "{err}");
    assert_still_v2(&mgr);
}

#[test]
fn without_a_pinned_key_remote_bundles_are_refused_but_local_ones_install() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = ModelManager::open(dir.path(), None, None).unwrap();
    let err = mgr
        .offer(&signed_frame("m", 1, &signing_key()))
        .unwrap_err();
    assert!(
        matches!(err, ModelManagerError::NoPinnedKey { .. }),
        "{err}"
    );
    let (m, p) = forest("m", 1, 3, 1);
    mgr.install_local(m, p).unwrap();
    assert_eq!(mgr.version_of("m"), Some(1));

    let pinned = manager(tempfile::tempdir().unwrap().path());
    let (m, p) = forest("m", 1, 3, 1);
    let err = pinned.install_local(m, p).unwrap_err();
    assert!(
        matches!(err, ModelManagerError::UnsignedRefused { .. }),
        "{err}"
    );
}

#[test]
fn a_newer_bundle_swaps_in_while_another_thread_keeps_scoring() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = running_v2(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let scored = Arc::new(AtomicU64::new(0));
    let max_seen = Arc::new(AtomicU64::new(0));
    let scorer = {
        let (mgr, stop, scored, max_seen) =
            (mgr.clone(), stop.clone(), scored.clone(), max_seen.clone());
        std::thread::spawn(move || {
            let row = [0.1, 0.5, 0.9];
            while !stop.load(Ordering::Relaxed) {
                let set = mgr.current();
                let m = set.models.get("m").expect("a model is always running");
                let s = m.detector.score(&row).expect("scoring never fails");
                assert!((0.0..=1.0).contains(&s.score));
                max_seen.fetch_max(m.manifest.version, Ordering::Relaxed);
                scored.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    assert!(wait_until(Duration::from_secs(30), || scored
        .load(Ordering::Relaxed)
        > 100));
    for v in 3..=6 {
        mgr.offer(&signed_frame("m", v, &signing_key())).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(30), || max_seen.load(Ordering::Relaxed)
            == 6),
        "the scorer never saw the new model"
    );
    stop.store(true, Ordering::Relaxed);
    scorer.join().expect("the scorer thread did not panic");
}

#[test]
fn a_restart_loads_the_persisted_model_offline() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mgr = running_v2(dir.path());
        mgr.offer(&signed_frame("other", 5, &signing_key()))
            .unwrap();
    }
    let mgr = manager(dir.path());
    assert_still_v2(&mgr);
    assert_eq!(mgr.version_of("other"), Some(5));
    let set = mgr.current();
    set.models["m"].detector.score(&[0.1, 0.2, 0.3]).unwrap();
    // And still refuses downgrades after the restart.
    assert!(mgr.offer(&signed_frame("m", 1, &signing_key())).is_err());
}

#[test]
fn a_corrupt_persisted_bundle_is_skipped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mgr = running_v2(dir.path());
        mgr.offer(&signed_frame("other", 1, &signing_key()))
            .unwrap();
    }
    std::fs::write(dir.path().join("other.bundle"), b"\x01broken").unwrap();
    std::fs::write(dir.path().join(".m.bundle.tmp"), b"half written").unwrap();
    // A bundle signed by another key, planted in the directory, is not trusted either.
    std::fs::write(
        dir.path().join("planted.bundle"),
        signed_frame("planted", 1, &other_key()),
    )
    .unwrap();
    let mgr = manager(dir.path());
    assert_still_v2(&mgr);
    assert_eq!(mgr.version_of("other"), None);
    assert_eq!(mgr.version_of("planted"), None);
    assert!(!dir.path().join(".m.bundle.tmp").exists());
}
