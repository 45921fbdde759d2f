//! Neural detectors: dense autoencoder, windowed LSTM autoencoder and dense
//! VAE, trained in Rust with candle, exported as `.tflite` with tract's
//! TFLite writer and run with tract-tflite.
//!
//! The pieces, by feature:
//! - always: [`Architecture`] and [`Params`], the plain description of a
//!   network and its `f32` weights;
//! - `tflite` (default): [`graph`] builds a tract graph of primitive ops
//!   from them (the LSTM unrolled over its window, the anomaly score computed
//!   in the graph), [`tflite`] writes, reads and runs `.tflite` bytes behind
//!   `catch_unwind`, [`detector`] is the [`crate::Detector`] over a pair of
//!   batch-1 / batch-N models, [`bundle`] packs the two into one payload;
//! - `train`: [`train`] fits the networks with candle from our own seeded
//!   RNG in a one-thread rayon pool, [`export`] writes and verifies the
//!   TFLite files against the trainer's forward pass, [`fit`] runs the whole
//!   pipeline (scaler, training, export, calibration) and fine-tunes a shipped model.
//!
//! Every exported graph has one input and two outputs, identified by position
//! (the writer emits no signatures):
//! - input 0: `[B, F]` scaled rows (dense, VAE) or `[B, T, F]` scaled windows (LSTM);
//! - output 0: `[B, 1]` the mean squared reconstruction error (the raw score);
//! - output 1: `[B, F]` the squared reconstruction error per feature (averaged
//!   over the window for the LSTM), the explanation.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use sad_common::ModelKind;

use crate::error::ModelError;

#[cfg(feature = "tflite")]
pub mod bundle;
#[cfg(feature = "tflite")]
pub mod detector;
#[cfg(feature = "train")]
pub mod experiments;
#[cfg(feature = "train")]
pub mod export;
#[cfg(feature = "train")]
pub mod fit;
#[cfg(feature = "tflite")]
pub mod graph;
#[cfg(feature = "train")]
pub mod pretrained;
pub mod rng;
#[cfg(feature = "tflite")]
pub mod tflite;
#[cfg(feature = "train")]
pub mod train;
pub mod window;

#[cfg(feature = "tflite")]
pub use detector::NnDetector;

/// What can go wrong while building, training, exporting or running a neural detector.
#[derive(Debug, Error)]
pub enum NnError {
    /// The architecture or a training parameter is unusable.
    #[error("invalid network: {0}")]
    Invalid(String),
    /// Input data has the wrong shape or is not finite.
    #[error("bad input: {0}")]
    Input(String),
    /// tract failed (or panicked) while building, writing, loading or running a model.
    #[error("tract: {0}")]
    Tract(String),
    /// candle failed while training.
    #[error("training: {0}")]
    Train(String),
    /// The exported model does not reproduce the trainer's forward pass.
    #[error(
        "exported model differs from the trainer by {max_abs_diff:e} (limit {limit:e}) on {output}"
    )]
    Mismatch {
        /// Which output differed.
        output: String,
        /// Largest absolute difference seen.
        max_abs_diff: f64,
        /// Accepted difference.
        limit: f64,
    },
    /// A payload or model file could not be decoded.
    #[error("decode: {0}")]
    Decode(String),
}

impl From<NnError> for ModelError {
    fn from(e: NnError) -> Self {
        match e {
            NnError::Input(m) => ModelError::Invalid(m),
            NnError::Decode(m) => ModelError::Decode(m),
            other => ModelError::Invalid(other.to_string()),
        }
    }
}

impl From<ModelError> for NnError {
    fn from(e: ModelError) -> Self {
        NnError::Input(e.to_string())
    }
}

/// Result type of the neural detectors.
pub type NnResult<T> = std::result::Result<T, NnError>;

/// The shape of a neural detector; weights live in [`Params`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Architecture {
    /// Dense autoencoder: `F → hidden… (tanh) → latent (linear) → …hidden (tanh) → F`.
    Dense {
        /// Input features per row.
        n_features: usize,
        /// Widths of the hidden layers of the encoder (the decoder mirrors them).
        hidden: Vec<usize>,
        /// Width of the bottleneck.
        latent: usize,
    },
    /// Dense VAE: as [`Architecture::Dense`] with a mean and a log-variance head;
    /// the exported graph decodes the mean.
    Vae {
        /// Input features per row.
        n_features: usize,
        /// Widths of the hidden layers of the encoder (the decoder mirrors them).
        hidden: Vec<usize>,
        /// Width of the latent space.
        latent: usize,
    },
    /// LSTM autoencoder over windows of `window` steps: encoder LSTM → last
    /// hidden state → latent (tanh) → repeated → decoder LSTM → per-step dense.
    Lstm {
        /// Input features per time step.
        n_features: usize,
        /// Time steps per window (T).
        window: usize,
        /// Hidden units of both LSTMs.
        hidden: usize,
        /// Width of the latent vector.
        latent: usize,
    },
}

impl Architecture {
    /// The detector kind this architecture implements.
    pub fn kind(&self) -> ModelKind {
        match self {
            Architecture::Dense { .. } => ModelKind::Autoencoder,
            Architecture::Vae { .. } => ModelKind::Vae,
            Architecture::Lstm { .. } => ModelKind::Lstm,
        }
    }

    /// Features per row (per time step for the LSTM).
    pub fn n_features(&self) -> usize {
        match self {
            Architecture::Dense { n_features, .. }
            | Architecture::Vae { n_features, .. }
            | Architecture::Lstm { n_features, .. } => *n_features,
        }
    }

    /// Time steps per input sample: the window for the LSTM, 1 otherwise.
    pub fn window(&self) -> usize {
        match self {
            Architecture::Lstm { window, .. } => *window,
            _ => 1,
        }
    }

    /// Values in one input sample (`window * n_features`).
    pub fn sample_len(&self) -> usize {
        self.window() * self.n_features()
    }

    /// Checks that every size is positive and not absurdly large.
    pub fn validate(&self) -> NnResult<()> {
        let sizes: Vec<usize> = match self {
            Architecture::Dense {
                n_features,
                hidden,
                latent,
            }
            | Architecture::Vae {
                n_features,
                hidden,
                latent,
            } => {
                let mut v = vec![*n_features, *latent];
                v.extend(hidden);
                v
            }
            Architecture::Lstm {
                n_features,
                window,
                hidden,
                latent,
            } => vec![*n_features, *window, *hidden, *latent],
        };
        if sizes.iter().any(|&s| s == 0 || s > 4096) {
            return Err(NnError::Invalid(format!(
                "every layer size must be in 1..=4096, got {self:?}"
            )));
        }
        Ok(())
    }

    /// Names and shapes of the trainable parameters, in a fixed order.
    ///
    /// Weight matrices are `[in, out]` (rows times weight), biases `[1, out]`;
    /// LSTM gate blocks are laid out `i, f, g, o` along the `4 * hidden` axis
    /// as in PyTorch, with one bias per gate (PyTorch's two biases summed).
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let mut dense = |name: &str, i: usize, o: usize| {
            out.push((format!("{name}.w"), vec![i, o]));
            out.push((format!("{name}.b"), vec![1, o]));
        };
        match self {
            Architecture::Dense {
                n_features,
                hidden,
                latent,
            }
            | Architecture::Vae {
                n_features,
                hidden,
                latent,
            } => {
                let mut prev = *n_features;
                for (i, &h) in hidden.iter().enumerate() {
                    dense(&format!("enc{i}"), prev, h);
                    prev = h;
                }
                dense("lat", prev, *latent);
                if matches!(self, Architecture::Vae { .. }) {
                    dense("logvar", prev, *latent);
                }
                prev = *latent;
                for (i, &h) in hidden.iter().enumerate().rev() {
                    dense(&format!("dec{i}"), prev, h);
                    prev = h;
                }
                dense("out", prev, *n_features);
            }
            Architecture::Lstm {
                n_features,
                hidden,
                latent,
                ..
            } => {
                let (f, h, l) = (*n_features, *hidden, *latent);
                out.push(("enc.w_ih".into(), vec![f, 4 * h]));
                out.push(("enc.w_hh".into(), vec![h, 4 * h]));
                out.push(("enc.b".into(), vec![1, 4 * h]));
                out.push(("lat.w".into(), vec![h, l]));
                out.push(("lat.b".into(), vec![1, l]));
                out.push(("dec.w_ih".into(), vec![l, 4 * h]));
                out.push(("dec.w_hh".into(), vec![h, 4 * h]));
                out.push(("dec.b".into(), vec![1, 4 * h]));
                out.push(("out.w".into(), vec![h, f]));
                out.push(("out.b".into(), vec![1, f]));
            }
        }
        out
    }

    /// Names of the parameters that appear in the exported (scoring) graph.
    pub fn exported_params(&self) -> Vec<String> {
        self.param_shapes()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !n.starts_with("logvar."))
            .collect()
    }
}

/// One named parameter tensor, row-major `f32`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamTensor {
    /// Parameter name, as in [`Architecture::param_shapes`].
    pub name: String,
    /// Shape (`[in, out]` or `[1, out]`).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// The weights of a network, one tensor per name of [`Architecture::param_shapes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// The tensors, in [`Architecture::param_shapes`] order.
    pub tensors: Vec<ParamTensor>,
}

impl Params {
    /// Seeded initialisation: Glorot-uniform weights, near-zero biases, LSTM forget-gate bias 1.
    pub fn init(arch: &Architecture, seed: u64) -> NnResult<Params> {
        arch.validate()?;
        let mut rng = rng::SeededRng::new(seed);
        let hidden = match arch {
            Architecture::Lstm { hidden, .. } => *hidden,
            _ => 0,
        };
        let tensors = arch
            .param_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let data = if name.ends_with(".b") {
                    // small distinct biases: equal constant tensors would share one
                    // buffer in the exported file and lose their names
                    let mut b: Vec<f32> = (0..n).map(|_| rng.uniform(-1e-3, 1e-3) as f32).collect();
                    if name == "enc.b" || name == "dec.b" {
                        for v in &mut b[hidden..2 * hidden] {
                            *v += 1.0;
                        }
                    }
                    b
                } else {
                    let limit = (6.0 / (shape[0] + shape[1]) as f64).sqrt();
                    (0..n).map(|_| rng.uniform(-limit, limit) as f32).collect()
                };
                ParamTensor { name, shape, data }
            })
            .collect();
        Ok(Params { tensors })
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> NnResult<&ParamTensor> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| NnError::Invalid(format!("missing parameter {name}")))
    }

    /// Checks that every parameter of `arch` is present with its shape and finite values.
    pub fn check(&self, arch: &Architecture) -> NnResult<()> {
        for (name, shape) in arch.param_shapes() {
            let t = self.get(&name)?;
            if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
                return Err(NnError::Invalid(format!(
                    "parameter {name} has shape {:?}, expected {shape:?}",
                    t.shape
                )));
            }
            if t.data.iter().any(|v| !v.is_finite()) {
                return Err(NnError::Invalid(format!("parameter {name} is not finite")));
            }
        }
        Ok(())
    }

    /// Total number of scalar parameters.
    pub fn count(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialisation_is_reproducible_for_a_seed_and_differs_across_seeds() {
        let arch = Architecture::Lstm {
            n_features: 3,
            window: 8,
            hidden: 4,
            latent: 2,
        };
        let a = Params::init(&arch, 7).unwrap();
        let b = Params::init(&arch, 7).unwrap();
        let c = Params::init(&arch, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        a.check(&arch).unwrap();
        assert!(
            a.get("enc.b").unwrap().data[4..8]
                .iter()
                .all(|b| (b - 1.0).abs() < 1e-2)
        );
    }

    #[test]
    fn vae_has_a_log_variance_head_that_is_not_exported() {
        let arch = Architecture::Vae {
            n_features: 5,
            hidden: vec![4],
            latent: 2,
        };
        let names: Vec<String> = arch.param_shapes().into_iter().map(|p| p.0).collect();
        assert!(names.contains(&"logvar.w".to_string()));
        assert!(!arch.exported_params().contains(&"logvar.w".to_string()));
    }

    #[test]
    fn zero_sized_layers_are_rejected() {
        let arch = Architecture::Dense {
            n_features: 4,
            hidden: vec![0],
            latent: 2,
        };
        assert!(matches!(arch.validate(), Err(NnError::Invalid(_))));
    }
}
