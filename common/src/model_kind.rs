//! Kinds of detectors, named as in `MODEL_TYPE`.

use serde::{Deserialize, Serialize};

/// Kind of a detector; the string forms are the `MODEL_TYPE` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Isolation Forest (`isolation_forest`).
    IsolationForest,
    /// Dense autoencoder in TFLite (`autoencoder`).
    Autoencoder,
    /// Windowed LSTM autoencoder in TFLite (`lstm`).
    Lstm,
    /// Variational autoencoder in TFLite (`vae`).
    Vae,
    /// Half-Space Trees streaming detector (`half_space_trees`).
    HalfSpaceTrees,
    /// EWMA z-score streaming detector (`ewma`).
    Ewma,
}

impl ModelKind {
    /// All kinds, in a stable order.
    pub const ALL: [ModelKind; 6] = [
        ModelKind::IsolationForest,
        ModelKind::Autoencoder,
        ModelKind::Lstm,
        ModelKind::Vae,
        ModelKind::HalfSpaceTrees,
        ModelKind::Ewma,
    ];

    /// The `MODEL_TYPE` name of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::IsolationForest => "isolation_forest",
            ModelKind::Autoencoder => "autoencoder",
            ModelKind::Lstm => "lstm",
            ModelKind::Vae => "vae",
            ModelKind::HalfSpaceTrees => "half_space_trees",
            ModelKind::Ewma => "ewma",
        }
    }

    /// Whether the detector learns per event instead of being trained in batch.
    pub fn is_streaming(self) -> bool {
        matches!(self, ModelKind::HalfSpaceTrees | ModelKind::Ewma)
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an unknown `MODEL_TYPE` name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown model type {0:?}: expected one of isolation_forest, autoencoder, lstm, vae, half_space_trees, ewma"
)]
pub struct UnknownModelKind(pub String);

impl std::str::FromStr for ModelKind {
    type Err = UnknownModelKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        let kind = match norm.as_str() {
            "isolation_forest" | "iforest" => ModelKind::IsolationForest,
            "autoencoder" | "ae" | "dense_ae" => ModelKind::Autoencoder,
            "lstm" | "lstm_ae" | "lstm_autoencoder" => ModelKind::Lstm,
            "vae" => ModelKind::Vae,
            "half_space_trees" | "hst" => ModelKind::HalfSpaceTrees,
            "ewma" | "ewma_zscore" => ModelKind::Ewma,
            _ => return Err(UnknownModelKind(s.to_string())),
        };
        Ok(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name() {
        for k in ModelKind::ALL {
            assert_eq!(k.as_str().parse::<ModelKind>().unwrap(), k);
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
    }

    #[test]
    fn unknown_names_are_rejected_with_the_choices() {
        let e = "forest".parse::<ModelKind>().unwrap_err();
        assert!(e.to_string().contains("isolation_forest"));
    }
}
