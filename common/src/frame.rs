//! Binary framing between agent and coordinator: one format version byte, then postcard.
//!
//! ```text
//! [FORMAT_VERSION: u8] ++ postcard(value)
//! ```
//!
//! [`decode`] never panics and never allocates more than a small multiple of
//! its input on arbitrary bytes: it checks, in order, empty input, the
//! version byte, the type's frame cap ([`Wire::MAX_BYTES`]), postcard
//! decoding (claimed lengths are not trusted for preallocation), trailing
//! bytes, and finally the type's `validate` rules.

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::wire::{
    Ack, Alert, AlertBatch, Event, FeatureVector, Heartbeat, LabelCounts, ModelBundle,
    ModelManifest, Samples, WireError, limits,
};

/// Version of the frame layout; the first byte of every frame.
pub const FORMAT_VERSION: u8 = 1;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The input had no bytes at all.
    #[error("empty frame")]
    Empty,
    /// The version byte is not [`FORMAT_VERSION`].
    #[error("unknown frame format version {version} (this build speaks version {FORMAT_VERSION})")]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// The frame is larger than the type's cap.
    #[error("{what} frame of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// Type name.
        what: &'static str,
        /// Frame length.
        len: usize,
        /// The type's [`Wire::MAX_BYTES`].
        max: usize,
    },
    /// Postcard could not encode or decode the value.
    #[error("cannot {op} {what}: {source}")]
    Postcard {
        /// `encode` or `decode`.
        op: &'static str,
        /// Type name.
        what: &'static str,
        /// The postcard error.
        #[source]
        source: postcard::Error,
    },
    /// Bytes were left after the value.
    #[error("{what} frame has {count} trailing bytes")]
    Trailing {
        /// Type name.
        what: &'static str,
        /// Number of unread bytes.
        count: usize,
    },
    /// The value decoded but breaks the wire rules.
    #[error("invalid {what}: {source}")]
    Invalid {
        /// Type name.
        what: &'static str,
        /// The broken rule.
        #[source]
        source: WireError,
    },
}

/// A type that travels in frames: a name for messages, a frame cap and validation rules.
pub trait Wire: Serialize + DeserializeOwned {
    /// Type name used in error messages.
    const NAME: &'static str;
    /// Largest accepted frame, version byte included.
    const MAX_BYTES: usize;
    /// Checks the value against the wire rules (caps, ids, finiteness).
    fn validate(&self) -> Result<(), WireError>;
}

macro_rules! impl_wire {
    ($($ty:ident => $max:expr),* $(,)?) => {$(
        impl Wire for $ty {
            const NAME: &'static str = stringify!($ty);
            const MAX_BYTES: usize = $max;
            fn validate(&self) -> Result<(), WireError> {
                $ty::validate(self)
            }
        }
    )*};
}

impl_wire! {
    Event => limits::MAX_EVENT_FRAME_BYTES,
    FeatureVector => limits::MAX_FEATURE_VECTOR_FRAME_BYTES,
    Alert => limits::MAX_ALERT_FRAME_BYTES,
    AlertBatch => limits::MAX_ALERT_BATCH_FRAME_BYTES,
    Ack => limits::MAX_ACK_FRAME_BYTES,
    Heartbeat => limits::MAX_HEARTBEAT_FRAME_BYTES,
    Samples => limits::MAX_SAMPLES_FRAME_BYTES,
    LabelCounts => limits::MAX_HEARTBEAT_FRAME_BYTES,
    ModelManifest => limits::MAX_MANIFEST_FRAME_BYTES,
    ModelBundle => limits::MAX_BUNDLE_FRAME_BYTES,
}

/// Encodes any serialisable value as `[FORMAT_VERSION] ++ postcard(value)`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    postcard::to_extend(value, vec![FORMAT_VERSION]).map_err(|source| FrameError::Postcard {
        op: "encode",
        what: std::any::type_name::<T>(),
        source,
    })
}

/// Validates and encodes a wire value, refusing frames the receiver would reject as too large.
pub fn encode_checked<T: Wire>(value: &T) -> Result<Vec<u8>, FrameError> {
    value.validate().map_err(|source| FrameError::Invalid {
        what: T::NAME,
        source,
    })?;
    let bytes = encode(value)?;
    if bytes.len() > T::MAX_BYTES {
        return Err(FrameError::TooLarge {
            what: T::NAME,
            len: bytes.len(),
            max: T::MAX_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes and validates a frame produced by [`encode`].
pub fn decode<T: Wire>(frame: &[u8]) -> Result<T, FrameError> {
    let (&version, body) = frame.split_first().ok_or(FrameError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(FrameError::UnknownVersion { version });
    }
    if frame.len() > T::MAX_BYTES {
        return Err(FrameError::TooLarge {
            what: T::NAME,
            len: frame.len(),
            max: T::MAX_BYTES,
        });
    }
    let (value, rest): (T, &[u8]) =
        postcard::take_from_bytes(body).map_err(|source| FrameError::Postcard {
            op: "decode",
            what: T::NAME,
            source,
        })?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing {
            what: T::NAME,
            count: rest.len(),
        });
    }
    value.validate().map_err(|source| FrameError::Invalid {
        what: T::NAME,
        source,
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_kind::ModelKind;
    use crate::wire::tests::{sample_alert, sample_heartbeat, sample_manifest};
    use crate::wire::{FeatureContribution, ModelStatus, Severity, limits};
    use proptest::prelude::*;

    fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(v: &T) {
        let bytes = encode(v).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: T = decode(&bytes).unwrap();
        assert_eq!(&back, v);
        assert_eq!(encode_checked(v).unwrap(), bytes);
    }

    fn sample_batch() -> AlertBatch {
        AlertBatch {
            agent_id: "edge-01".into(),
            alerts: vec![sample_alert(1), sample_alert(2)],
        }
    }

    fn sample_bundle() -> ModelBundle {
        let payload = b"\x00\x01postcard forest\xff".to_vec();
        ModelBundle {
            manifest: sample_manifest(&payload),
            payload,
            signature: vec![9; 64],
        }
    }

    #[test]
    fn every_wire_type_round_trips_through_a_frame() {
        round_trip(&Event {
            series: "s1".into(),
            ts_ms: -5,
            values: vec![1.0, -2.5],
            label: None,
        });
        round_trip(&FeatureVector {
            names: vec!["a".into(), "b".into()],
            values: vec![0.5, 1e300],
        });
        round_trip(&sample_alert(7));
        round_trip(&sample_batch());
        round_trip(&Ack {
            agent_id: "edge-01".into(),
            up_to_seq: u64::MAX,
        });
        round_trip(&sample_heartbeat());
        round_trip(&Heartbeat {
            group: None,
            score_summary: None,
            online: false,
            ..sample_heartbeat()
        });
        round_trip(&Samples {
            agent_id: "edge-01".into(),
            model: "iforest-main".into(),
            feature_names: vec!["temp".into(), "vibration".into()],
            rows: vec![vec![1.0, 2.0], vec![3.0, 4.0]],
        });
        round_trip(&sample_manifest(b"x"));
        round_trip(&sample_bundle());
    }

    #[test]
    fn bundle_payload_is_stored_as_raw_bytes() {
        let mut bundle = sample_bundle();
        bundle.payload = vec![0xAB; 100_000];
        bundle.manifest.payload_len = 100_000;
        bundle.manifest.payload_sha256 = crate::wire::sha256_hex(&bundle.payload);
        let bytes = encode(&bundle).unwrap();
        // One byte per payload byte plus the manifest, not a varint per element.
        assert!(bytes.len() < 101_000, "{}", bytes.len());
        assert_eq!(decode::<ModelBundle>(&bytes).unwrap(), bundle);
    }

    #[test]
    fn a_maximal_alert_fits_its_frame_cap() {
        let mut a = sample_alert(u64::MAX);
        a.agent_id = "a".repeat(limits::MAX_ID_BYTES);
        a.model = "m".repeat(limits::MAX_ID_BYTES);
        a.series = "s".repeat(limits::MAX_SERIES_BYTES);
        a.values = vec![1.0; limits::MAX_VALUES];
        a.explanation = vec![
            FeatureContribution {
                feature: "f".repeat(limits::MAX_NAME_BYTES),
                weight: 1.0,
            };
            limits::MAX_EXPLANATION
        ];
        let bytes = encode_checked(&a).unwrap();
        assert!(bytes.len() <= limits::MAX_ALERT_FRAME_BYTES);
        assert_eq!(decode::<Alert>(&bytes).unwrap(), a);
    }

    #[test]
    fn empty_input_is_rejected() {
        assert!(matches!(decode::<Ack>(&[]), Err(FrameError::Empty)));
    }

    #[test]
    fn wrong_version_byte_names_the_version() {
        let mut bytes = encode(&sample_alert(1)).unwrap();
        bytes[0] = 7;
        let e = decode::<Alert>(&bytes).unwrap_err();
        assert!(matches!(e, FrameError::UnknownVersion { version: 7 }));
        assert!(e.to_string().contains("version 7"), "{e}");
    }

    #[test]
    fn frames_over_the_type_cap_are_rejected_before_parsing() {
        let mut bytes = vec![FORMAT_VERSION];
        bytes.resize(limits::MAX_ACK_FRAME_BYTES + 1, 0);
        let e = decode::<Ack>(&bytes).unwrap_err().to_string();
        assert_eq!(e, "Ack frame of 257 bytes exceeds the cap of 256 bytes");
    }

    #[test]
    fn encode_checked_refuses_invalid_values() {
        let mut a = sample_alert(1);
        a.score = f64::NAN;
        let e = encode_checked(&a).unwrap_err().to_string();
        assert_eq!(e, "invalid Alert: score is not finite");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&sample_alert(1)).unwrap();
        bytes.extend_from_slice(&[0, 0]);
        let e = decode::<Alert>(&bytes).unwrap_err().to_string();
        assert_eq!(e, "Alert frame has 2 trailing bytes");
    }

    #[test]
    fn postcard_errors_name_the_type() {
        let e = decode::<Heartbeat>(&[FORMAT_VERSION, 3, b'a'])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot decode Heartbeat"), "{e}");
    }

    #[test]
    fn decoded_values_are_validated() {
        let mut a = sample_alert(1);
        a.agent_id = "bad/agent".into();
        let bytes = encode(&a).unwrap();
        let e = decode::<Alert>(&bytes).unwrap_err();
        assert!(
            matches!(e, FrameError::Invalid { what: "Alert", .. }),
            "{e}"
        );
    }

    #[test]
    fn a_huge_claimed_length_on_short_input_fails_fast() {
        // agent_id "a", then a varint claiming u64::MAX alerts, then nothing.
        let mut bytes = vec![FORMAT_VERSION, 1, b'a'];
        bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        assert!(matches!(
            decode::<AlertBatch>(&bytes),
            Err(FrameError::Postcard { .. })
        ));
        // The same for nested vectors of floats and for a bundle's byte payload.
        let mut bytes = vec![FORMAT_VERSION, 1, b'a', 1, b'm', 0];
        bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        assert!(decode::<Samples>(&bytes).is_err());
        let mut bundle = encode(&sample_bundle()).unwrap();
        let manifest_len = encode(&sample_bundle().manifest).unwrap().len() - 1;
        bundle.truncate(1 + manifest_len);
        bundle.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 1, 2, 3]);
        assert!(decode::<ModelBundle>(&bundle).is_err());
    }

    #[test]
    fn collections_over_their_cap_stop_decoding_early() {
        // 16 MiB of empty rows would be 24 times larger in memory; the cap stops it.
        let mut bytes = vec![FORMAT_VERSION, 1, b'a', 1, b'm', 0];
        let rows = limits::MAX_SAMPLE_ROWS + 1;
        bytes.extend_from_slice(&[0x91, 0x4E]); // varint 10_001
        bytes.resize(bytes.len() + rows, 0);
        assert_eq!(rows, 0x4E * 128 + 0x11);
        assert!(matches!(
            decode::<Samples>(&bytes),
            Err(FrameError::Postcard {
                what: "Samples",
                ..
            })
        ));
        // Exactly at the cap the frame decodes (rows of width 0 match 0 feature names).
        let mut ok = vec![FORMAT_VERSION, 1, b'a', 1, b'm', 0, 0x90, 0x4E];
        ok.resize(ok.len() + limits::MAX_SAMPLE_ROWS, 0);
        assert_eq!(
            decode::<Samples>(&ok).unwrap().rows.len(),
            limits::MAX_SAMPLE_ROWS
        );

        let json = format!(
            r#"{{"series":"s","ts_ms":0,"values":[{}0]}}"#,
            "0,".repeat(limits::MAX_VALUES)
        );
        let e = serde_json::from_str::<Event>(&json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 4096 items"), "{e}");
    }

    /// Decoding must return an error or a value that passes validation.
    fn decodes_safely<T: Wire>(bytes: &[u8]) {
        if let Ok(v) = decode::<T>(bytes) {
            assert!(v.validate().is_ok());
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_of_a_valid_frame_is_handled() {
        type Check = fn(&[u8]);
        let frames: Vec<(Vec<u8>, Check)> = vec![
            (
                encode(&sample_batch()).unwrap(),
                decodes_safely::<AlertBatch>,
            ),
            (
                encode(&sample_heartbeat()).unwrap(),
                decodes_safely::<Heartbeat>,
            ),
            (
                encode(&sample_bundle()).unwrap(),
                decodes_safely::<ModelBundle>,
            ),
        ];
        for (frame, check) in frames {
            for len in 0..frame.len() {
                check(&frame[..len]);
            }
            for bit in 0..frame.len() * 8 {
                let mut flipped = frame.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                check(&flipped);
            }
        }
    }

    #[test]
    fn a_flipped_payload_bit_fails_the_hash_check() {
        let bundle = sample_bundle();
        let mut bytes = encode(&bundle).unwrap();
        let last = bytes.len() - 70; // inside the payload, before the 64-byte signature
        bytes[last] ^= 0x10;
        let e = decode::<ModelBundle>(&bytes).unwrap_err().to_string();
        assert!(e.contains("sha256"), "{e}");
    }

    fn id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.-]{1,32}"
    }

    fn finite() -> impl Strategy<Value = f64> {
        prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO
    }

    fn kind() -> impl Strategy<Value = ModelKind> {
        prop::sample::select(ModelKind::ALL.to_vec())
    }

    fn severity() -> impl Strategy<Value = Severity> {
        prop::sample::select(Severity::ALL.to_vec())
    }

    fn alert_for(agent: String) -> impl Strategy<Value = Alert> {
        (
            (any::<u64>(), "[^\\p{Cc}]{1,40}", any::<i64>(), id(), kind()),
            (any::<u64>(), 0.0..=1.0f64, finite(), finite(), severity()),
            (
                any::<u64>(),
                prop::collection::vec(("[a-z_]{1,12}", finite()), 0..5),
                prop::collection::vec(finite(), 0..16),
                any::<Option<bool>>(),
            ),
        )
            .prop_map(
                move |(
                    (seq, series, ts_ms, model, model_kind),
                    (model_version, score, raw_score, threshold, severity),
                    (episode_id, explanation, values, label),
                )| Alert {
                    agent_id: agent.clone(),
                    seq,
                    series,
                    ts_ms,
                    model,
                    model_kind,
                    model_version,
                    score,
                    raw_score,
                    threshold,
                    severity,
                    episode_id,
                    explanation: explanation
                        .into_iter()
                        .map(|(feature, weight)| FeatureContribution { feature, weight })
                        .collect(),
                    values,
                    label,
                },
            )
    }

    fn batch() -> impl Strategy<Value = AlertBatch> {
        id().prop_flat_map(|agent| {
            prop::collection::vec(alert_for(agent.clone()), 0..6).prop_map(move |alerts| {
                AlertBatch {
                    agent_id: agent.clone(),
                    alerts,
                }
            })
        })
    }

    proptest! {
        #[test]
        fn arbitrary_alerts_round_trip(a in id().prop_flat_map(alert_for)) {
            let bytes = encode_checked(&a).unwrap();
            prop_assert_eq!(decode::<Alert>(&bytes).unwrap(), a);
        }

        #[test]
        fn arbitrary_batches_round_trip(b in batch()) {
            let bytes = encode_checked(&b).unwrap();
            prop_assert_eq!(decode::<AlertBatch>(&bytes).unwrap(), b);
        }

        #[test]
        fn arbitrary_events_round_trip(
            series in "[^\\p{Cc}]{1,60}",
            ts_ms in any::<i64>(),
            values in prop::collection::vec(finite(), 0..64),
            label in any::<Option<bool>>(),
        ) {
            let e = Event { series, ts_ms, values, label };
            let bytes = encode_checked(&e).unwrap();
            prop_assert_eq!(decode::<Event>(&bytes).unwrap(), e);
        }

        #[test]
        fn events_with_any_floats_decode_only_when_finite(
            values in prop::collection::vec(any::<f64>(), 0..8),
        ) {
            let e = Event { series: "s".into(), ts_ms: 0, values, label: None };
            let ok = e.values.iter().all(|v| v.is_finite());
            prop_assert_eq!(decode::<Event>(&encode(&e).unwrap()).is_ok(), ok);
        }

        #[test]
        fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = vec![FORMAT_VERSION];
            bytes.extend_from_slice(&body);
            decodes_safely::<Event>(&bytes);
            decodes_safely::<FeatureVector>(&bytes);
            decodes_safely::<Alert>(&bytes);
            decodes_safely::<AlertBatch>(&bytes);
            decodes_safely::<Ack>(&bytes);
            decodes_safely::<Heartbeat>(&bytes);
            decodes_safely::<Samples>(&bytes);
            decodes_safely::<ModelManifest>(&bytes);
            decodes_safely::<ModelBundle>(&bytes);
            decodes_safely::<Alert>(&body);
        }

        #[test]
        fn mutated_batches_never_panic(
            b in batch(),
            cut in any::<prop::sample::Index>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let frame = encode(&b).unwrap();
            decodes_safely::<AlertBatch>(&frame[..cut.index(frame.len())]);
            let mut mutated = frame.clone();
            for (at, mask) in flips {
                let i = at.index(mutated.len());
                mutated[i] ^= mask;
            }
            decodes_safely::<AlertBatch>(&mutated);
        }
    }

    #[test]
    fn heartbeat_model_kinds_survive_the_frame() {
        for kind in ModelKind::ALL {
            let hb = Heartbeat {
                models: vec![ModelStatus {
                    name: "m".into(),
                    kind,
                    version: 2,
                }],
                ..sample_heartbeat()
            };
            round_trip(&hb);
        }
    }
}
