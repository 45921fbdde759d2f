//! The payload of a neural model bundle: the architecture and the batch-1 and
//! batch-N `.tflite` files, postcard-encoded behind a format version byte.
//!
//! The manifest around it (name, version, parent, scaler, window,
//! calibration, threshold, training data and metrics, sha256 of these bytes)
//! is the common `ModelManifest`; the `.tflite` files inside are plain
//! TFLite flatbuffers that any TFLite runtime opens.

use serde::{Deserialize, Serialize};

use super::{Architecture, NnError, NnResult};

/// Format version of [`NnPayload::to_bytes`].
pub const PAYLOAD_VERSION: u8 = 1;

/// A neural detector's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NnPayload {
    /// The network's shape (sizes, window), JSON inside the postcard
    /// (its internally tagged form needs a self-describing format).
    #[serde(with = "arch_json")]
    pub arch: Architecture,
    /// N of the batch-N model.
    pub batch: u32,
    /// The batch-1 `.tflite` bytes.
    pub tflite_batch1: Vec<u8>,
    /// The batch-N `.tflite` bytes.
    pub tflite_batch_n: Vec<u8>,
}

impl NnPayload {
    /// Version byte followed by the postcard encoding.
    pub fn to_bytes(&self) -> NnResult<Vec<u8>> {
        let mut out = vec![PAYLOAD_VERSION];
        out.extend(
            postcard::to_allocvec(self)
                .map_err(|e| NnError::Decode(format!("encode payload: {e}")))?,
        );
        Ok(out)
    }

    /// Decodes [`NnPayload::to_bytes`] output; refuses unknown versions.
    pub fn from_bytes(bytes: &[u8]) -> NnResult<NnPayload> {
        match bytes.split_first() {
            Some((&PAYLOAD_VERSION, rest)) => {
                let p: NnPayload = postcard::from_bytes(rest)
                    .map_err(|e| NnError::Decode(format!("payload: {e}")))?;
                p.arch.validate()?;
                Ok(p)
            }
            Some((v, _)) => Err(NnError::Decode(format!("unknown payload version {v}"))),
            None => Err(NnError::Decode("empty payload".into())),
        }
    }
}

mod arch_json {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Architecture;

    pub fn serialize<S: Serializer>(a: &Architecture, s: S) -> Result<S::Ok, S::Error> {
        let json = serde_json::to_string(a).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&json)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Architecture, D::Error> {
        let json = String::deserialize(d)?;
        serde_json::from_str(&json).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_rejects_other_versions() {
        let p = NnPayload {
            arch: Architecture::Lstm {
                n_features: 2,
                window: 4,
                hidden: 3,
                latent: 1,
            },
            batch: 8,
            tflite_batch1: vec![1, 2, 3],
            tflite_batch_n: vec![4, 5],
        };
        let b = p.to_bytes().unwrap();
        assert_eq!(NnPayload::from_bytes(&b).unwrap(), p);
        let mut bad = b.clone();
        bad[0] = 9;
        assert!(NnPayload::from_bytes(&bad).is_err());
        assert!(NnPayload::from_bytes(&b[..3]).is_err());
        assert!(NnPayload::from_bytes(&[]).is_err());
    }
}
