//! Streaming detectors: Half-Space Trees and EWMA z-score.
//!
//! Both learn one event at a time and score it *prequentially*: an event is
//! scored against the state built from the events before it, then learned
//! ([`Detector::update_and_score`](crate::Detector::update_and_score)).
//! They need no training run, so they serve
//!
//! - **warm-up**: a series that has no trained model yet (a new sensor, a new
//!   field) is watched by a streaming detector until enough data has been
//!   sampled to train an Isolation Forest or an autoencoder for it;
//! - **drift**: a series whose normal behaviour keeps moving (slow trends,
//!   regime changes) is better served by a model that forgets the past.
//!
//! Which one to use:
//!
//! - [`EwmaZScore`] is the cheapest (a few flops per feature per event) and
//!   the easiest to explain ("feature 3 is 6 standard deviations from its
//!   recent mean"). It sees each feature on its own, so it catches spikes and
//!   level shifts but not unusual *combinations* of individually normal values.
//!   Warm after [`EwmaParams::warmup`] events.
//! - [`HalfSpaceTrees`] models the joint distribution with random axis-aligned
//!   partitions and window-based mass profiles, so it also catches points in
//!   empty regions between clusters. It costs a few node visits per tree per
//!   event and `n_trees × 2^(height+1) × 12` bytes of nodes in memory (about
//!   20 MB at the defaults). Warm after the first full window. Its scores drop
//!   as the number of features grows; see the `hst` module docs.
//!
//! Before it is warm a detector scores every event 0 and flags nothing.
//!
//! # Persistence
//!
//! `to_bytes` writes a format version byte followed by the postcard encoding
//! of the detector's whole learning state; `from_bytes` checks the version,
//! decodes, validates every field and returns an error (never panics) on
//! truncated, corrupt or foreign bytes. A detector restored from its bytes
//! continues with exactly the scores the saved one would have produced.
//!
//! What survives a restart: everything in the serialised state — parameters,
//! learned statistics, the work-space limits, the threshold and, for
//! Half-Space Trees, the raw events of the reference and current windows
//! (from which the trees and mass profiles are rebuilt deterministically; the
//! trees themselves are regenerated from the seed, which keeps the state at
//! `2 × window_size × n_features × 8` bytes instead of megabytes of nodes).
//! What does not survive: events learned after the last save. The caller
//! decides how often to save; losing a few events only delays adaptation.

pub mod ewma;
pub mod hst;

pub use ewma::{EWMA_DEFAULT_THRESHOLD, EwmaParams, EwmaZScore};
pub use hst::{HST_DEFAULT_THRESHOLD, HalfSpaceTrees, HstParams};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result};

/// Encodes a streaming state as `[version] ++ postcard(state)`.
fn encode_state<T: Serialize>(version: u8, state: &T) -> Vec<u8> {
    // Plain structs of numbers and sequences of known length: postcard's
    // encoder into a growable vector has no failure path for them.
    postcard::to_extend(state, vec![version])
        .expect("postcard encoding of plain data into a vec cannot fail")
}

/// Decodes `[version] ++ postcard(state)`, rejecting other versions and trailing bytes.
fn decode_state<T: DeserializeOwned>(what: &str, version: u8, bytes: &[u8]) -> Result<T> {
    let (&found, body) = bytes
        .split_first()
        .ok_or_else(|| ModelError::Decode(format!("{what} state is empty")))?;
    if found != version {
        return Err(ModelError::Decode(format!(
            "{what} state has format version {found}, expected {version}"
        )));
    }
    let (state, rest) = postcard::take_from_bytes::<T>(body)
        .map_err(|e| ModelError::Decode(format!("{what} state: {e}")))?;
    if !rest.is_empty() {
        return Err(ModelError::Decode(format!(
            "{what} state has {} trailing bytes",
            rest.len()
        )));
    }
    Ok(state)
}

/// Validates a threshold given to `with_threshold`: finite values are clamped
/// to `[0, 1]`, non-finite ones keep `current`.
fn sanitize_threshold(t: f64, current: f64) -> f64 {
    if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        current
    }
}

/// Fixtures shared by the streaming detectors' tests.
#[cfg(test)]
mod test_support {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use crate::detector::{Detector, Score};

    /// `n` rows of `n_features` noisy sines (phase step `step`, one phase per feature).
    pub fn noisy_sines(n: usize, n_features: usize, step: f64, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                (0..n_features)
                    .map(|f| (i as f64 * step + f as f64).sin() + rng.gen_range(-0.2..0.2))
                    .collect()
            })
            .collect()
    }

    /// Scores every row prequentially.
    pub fn run(det: &mut dyn Detector, rows: &[Vec<f64>]) -> Vec<Score> {
        rows.iter()
            .map(|r| det.update_and_score(r).unwrap())
            .collect()
    }
}
