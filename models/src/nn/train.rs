//! Training of the neural detectors with candle.
//!
//! Weights start from [`Params::init`] (our seeded RNG; candle's CPU
//! generator cannot be seeded), mini-batches are shuffled by the same RNG and
//! the VAE's noise comes from it too, so a seed reproduces a model bit for bit
//! on one machine. Training runs in a one-thread rayon pool (two threads were
//! slower on these small tensors), with AdamW, and stops early when the loss
//! on a held-out validation split has not improved for `patience` epochs; the
//! best weights are kept.
//!
//! The forward pass here mirrors [`super::graph`] op for op (same gate
//! layout, same reductions), which is what [`super::export`] checks.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::rng::SeededRng;
use super::{Architecture, NnError, NnResult, ParamTensor, Params};

fn cerr(e: candle_core::Error) -> NnError {
    NnError::Train(e.to_string())
}

/// Hyper-parameters of one training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Maximum passes over the training split.
    pub epochs: usize,
    /// Samples per gradient step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Share of samples held out for early stopping (0 disables it).
    pub validation_fraction: f64,
    /// Epochs without validation improvement before stopping.
    pub patience: usize,
    /// Seed of initialisation, shuffling and VAE noise.
    pub seed: u64,
    /// Weight of the KL term of the VAE loss (per feature).
    pub kl_weight: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 50,
            batch_size: 64,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            validation_fraction: 0.1,
            patience: 5,
            seed: 42,
            kl_weight: 0.05,
        }
    }
}

impl TrainConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> NnResult<()> {
        let ok = self.batch_size > 0
            && self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.weight_decay.is_finite()
            && self.weight_decay >= 0.0
            && (0.0..0.9).contains(&self.validation_fraction)
            && self.kl_weight.is_finite()
            && self.kl_weight >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(NnError::Invalid(format!(
                "bad training configuration {self:?}"
            )))
        }
    }
}

/// What the trainer reports after each epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Maximum number of epochs.
    pub epochs: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Validation reconstruction error (mean squared), if there is a validation split.
    pub val_loss: Option<f64>,
    /// Whether these weights are the best so far.
    pub improved: bool,
}

/// The result of [`train`].
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The best weights (lowest validation loss, or the last epoch's without validation).
    pub params: Params,
    /// Per-epoch reports.
    pub history: Vec<EpochReport>,
    /// Whether training stopped before `epochs`.
    pub stopped_early: bool,
}

impl TrainOutcome {
    /// The manifest metrics of a run: `epochs`, and `val_mse` (the best
    /// validation loss) when there was a validation split.
    pub fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let mut m = std::collections::BTreeMap::new();
        m.insert("epochs".to_string(), self.history.len() as f64);
        if let Some(v) = self
            .history
            .iter()
            .filter_map(|r| r.val_loss)
            .reduce(f64::min)
        {
            m.insert("val_mse".to_string(), v);
        }
        m
    }
}

struct Net<'a> {
    arch: &'a Architecture,
    vars: Vec<(String, Var)>,
}

impl Net<'_> {
    fn p(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("missing parameter {name}")))
    }

    fn dense(&self, name: &str, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(self.p(&format!("{name}.w"))?)?
            .broadcast_add(self.p(&format!("{name}.b"))?)
    }

    fn lstm_step(
        &self,
        prefix: &str,
        proj: &Tensor,
        state: Option<(Tensor, Tensor)>,
        h: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let gates = match &state {
            Some((hp, _)) => (proj + hp.matmul(self.p(&format!("{prefix}.w_hh"))?)?)?,
            None => proj.clone(),
        };
        let i = candle_nn::ops::sigmoid(&gates.narrow(1, 0, h)?)?;
        let g = gates.narrow(1, 2 * h, h)?.tanh()?;
        let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * h, h)?)?;
        let ig = (i * g)?;
        let c = match state {
            Some((_, cp)) => {
                let f = candle_nn::ops::sigmoid(&gates.narrow(1, h, h)?)?;
                ((f * cp)? + ig)?
            }
            None => ig,
        };
        let hn = (o * c.tanh()?)?;
        Ok((hn, c))
    }

    /// Reconstruction of `x`; for the VAE in training, with `noise` the
    /// reparameterised sample and the (mu, logvar) pair for the KL term.
    fn forward(
        &self,
        x: &Tensor,
        noise: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, Option<(Tensor, Tensor)>)> {
        match self.arch {
            Architecture::Dense { hidden, .. } | Architecture::Vae { hidden, .. } => {
                let mut y = x.clone();
                for i in 0..hidden.len() {
                    y = self.dense(&format!("enc{i}"), &y)?.tanh()?;
                }
                let mu = self.dense("lat", &y)?;
                let (z, stats) = match (self.arch, noise) {
                    (Architecture::Vae { .. }, Some(eps)) => {
                        let logvar = self.dense("logvar", &y)?;
                        let std = (&logvar * 0.5)?.exp()?;
                        ((&mu + (eps * std)?)?, Some((mu, logvar)))
                    }
                    _ => (mu, None),
                };
                let mut y = z;
                for i in (0..hidden.len()).rev() {
                    y = self.dense(&format!("dec{i}"), &y)?.tanh()?;
                }
                Ok((self.dense("out", &y)?, stats))
            }
            Architecture::Lstm {
                n_features,
                window,
                hidden,
                ..
            } => {
                let (f, t_len, h) = (*n_features, *window, *hidden);
                let b = x.dim(0)?;
                let proj = x
                    .reshape((b * t_len, f))?
                    .matmul(self.p("enc.w_ih")?)?
                    .broadcast_add(self.p("enc.b")?)?
                    .reshape((b, t_len, 4 * h))?;
                let mut state = None;
                for t in 0..t_len {
                    let p = proj.narrow(1, t, 1)?.reshape((b, 4 * h))?;
                    state = Some(self.lstm_step("enc", &p, state, h)?);
                }
                let h_last = state
                    .map(|s| s.0)
                    .ok_or_else(|| candle_core::Error::Msg("empty window".into()))?;
                let z = self.dense("lat", &h_last)?.tanh()?;
                let zp = z
                    .matmul(self.p("dec.w_ih")?)?
                    .broadcast_add(self.p("dec.b")?)?;
                let mut state = None;
                let mut hs = Vec::with_capacity(t_len);
                for _ in 0..t_len {
                    let s = self.lstm_step("dec", &zp, state, h)?;
                    hs.push(s.0.reshape((b, 1, h))?);
                    state = Some(s);
                }
                let hseq = Tensor::cat(&hs, 1)?.reshape((b * t_len, h))?;
                let recon = self.dense("out", &hseq)?.reshape((b, t_len, f))?;
                Ok((recon, None))
            }
        }
    }

    /// Scores and per-feature errors of the mean path, as in the exported graph.
    fn score(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (recon, _) = self.forward(x, None)?;
        let sq = (recon - x)?.sqr()?;
        let per_feature = match self.arch {
            Architecture::Lstm { .. } => sq.mean(1)?,
            _ => sq,
        };
        let score = per_feature.mean(1)?;
        Ok((score, per_feature))
    }

    fn snapshot(&self) -> NnResult<Params> {
        let tensors = self
            .vars
            .iter()
            .map(|(name, v)| {
                Ok(ParamTensor {
                    name: name.clone(),
                    shape: v.as_tensor().dims().to_vec(),
                    data: v
                        .as_tensor()
                        .flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(cerr)?,
                })
            })
            .collect::<NnResult<Vec<_>>>()?;
        Ok(Params { tensors })
    }
}

fn net<'a>(arch: &'a Architecture, params: &Params) -> NnResult<Net<'a>> {
    params.check(arch)?;
    let vars = arch
        .param_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let t = params.get(&name)?;
            let tensor = Tensor::from_vec(t.data.clone(), shape, &Device::Cpu).map_err(cerr)?;
            Ok((name, Var::from_tensor(&tensor).map_err(cerr)?))
        })
        .collect::<NnResult<Vec<_>>>()?;
    Ok(Net { arch, vars })
}

fn sample_tensor(arch: &Architecture, data: Vec<f32>, n: usize) -> candle_core::Result<Tensor> {
    match arch {
        Architecture::Lstm {
            n_features, window, ..
        } => Tensor::from_vec(data, (n, *window, *n_features), &Device::Cpu),
        _ => Tensor::from_vec(data, (n, arch.n_features()), &Device::Cpu),
    }
}

fn check_samples(arch: &Architecture, samples: &[f32]) -> NnResult<usize> {
    let s = arch.sample_len();
    if samples.is_empty() || !samples.len().is_multiple_of(s) {
        return Err(NnError::Input(format!(
            "{} values are not a whole number of samples of {s}",
            samples.len()
        )));
    }
    if samples.iter().any(|v| !v.is_finite()) {
        return Err(NnError::Input("samples contain non-finite values".into()));
    }
    Ok(samples.len() / s)
}

/// The trainer's own forward pass on scaled samples: scores (`n`) and
/// per-feature squared errors (`n * F`), computed with candle.
pub fn forward(
    arch: &Architecture,
    params: &Params,
    samples: &[f32],
) -> NnResult<(Vec<f32>, Vec<f32>)> {
    let n = check_samples(arch, samples)?;
    let net = net(arch, params)?;
    let x = sample_tensor(arch, samples.to_vec(), n).map_err(cerr)?;
    let (score, per_feature) = net.score(&x).map_err(cerr)?;
    Ok((
        score.to_vec1::<f32>().map_err(cerr)?,
        per_feature
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(cerr)?,
    ))
}

/// Trains `arch` on scaled samples (row-major, `n * sample_len`), from `init`
/// (fine-tuning) or from a fresh seeded initialisation, calling `progress`
/// after every epoch.
pub fn train(
    arch: &Architecture,
    samples: &[f32],
    init: Option<&Params>,
    cfg: &TrainConfig,
    progress: &mut (dyn FnMut(&EpochReport) + Send),
) -> NnResult<TrainOutcome> {
    arch.validate()?;
    cfg.validate()?;
    let n = check_samples(arch, samples)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| NnError::Train(format!("thread pool: {e}")))?;
    pool.install(|| train_inner(arch, samples, n, init, cfg, progress))
}

fn gather(samples: &[f32], s: usize, idx: &[usize]) -> Vec<f32> {
    let mut v = Vec::with_capacity(idx.len() * s);
    for &i in idx {
        v.extend_from_slice(&samples[i * s..(i + 1) * s]);
    }
    v
}

fn train_inner(
    arch: &Architecture,
    samples: &[f32],
    n: usize,
    init: Option<&Params>,
    cfg: &TrainConfig,
    progress: &mut (dyn FnMut(&EpochReport) + Send),
) -> NnResult<TrainOutcome> {
    let s = arch.sample_len();
    let mut rng = SeededRng::new(cfg.seed);
    let start = match init {
        Some(p) => p.clone(),
        None => Params::init(arch, cfg.seed)?,
    };
    let net = net(arch, &start)?;
    let mut opt = AdamW::new(
        net.vars.iter().map(|(_, v)| v.clone()).collect(),
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..ParamsAdamW::default()
        },
    )
    .map_err(cerr)?;

    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let n_val = if n >= 20 {
        ((n as f64) * cfg.validation_fraction).round() as usize
    } else {
        0
    };
    let (val_idx, train_idx) = order.split_at(n_val);
    let mut train_idx = train_idx.to_vec();
    let val = if n_val > 0 {
        Some(sample_tensor(arch, gather(samples, s, val_idx), n_val).map_err(cerr)?)
    } else {
        None
    };
    let latent = match arch {
        Architecture::Vae { latent, .. } => *latent,
        _ => 0,
    };
    let n_features = arch.n_features() as f64;

    let mut best = (f64::INFINITY, start);
    let mut history = Vec::new();
    let mut since_best = 0;
    let mut stopped_early = false;
    for epoch in 1..=cfg.epochs {
        rng.shuffle(&mut train_idx);
        let mut total = 0.0;
        let mut steps = 0usize;
        for chunk in train_idx.chunks(cfg.batch_size) {
            let b = chunk.len();
            let x = sample_tensor(arch, gather(samples, s, chunk), b).map_err(cerr)?;
            let noise = if latent > 0 {
                let eps: Vec<f32> = (0..b * latent).map(|_| rng.normal() as f32).collect();
                Some(Tensor::from_vec(eps, (b, latent), &Device::Cpu).map_err(cerr)?)
            } else {
                None
            };
            let step = || -> candle_core::Result<Tensor> {
                let (recon, stats) = net.forward(&x, noise.as_ref())?;
                let mse = (recon - &x)?.sqr()?.mean_all()?;
                match stats {
                    Some((mu, logvar)) => {
                        // KL(q(z|x) || N(0, I)) per sample, scaled per feature
                        let kl = ((logvar.exp()? + mu.sqr()?)? - logvar)?
                            .affine(1.0, -1.0)?
                            .sum(1)?
                            .mean_all()?
                            .affine(0.5 * cfg.kl_weight / n_features, 0.0)?;
                        mse + kl
                    }
                    None => Ok(mse),
                }
            };
            let loss = step().map_err(cerr)?;
            let value = loss
                .to_dtype(DType::F64)
                .and_then(|l| l.to_scalar::<f64>())
                .map_err(cerr)?;
            if !value.is_finite() {
                return Err(NnError::Train(format!("loss diverged at epoch {epoch}")));
            }
            opt.backward_step(&loss).map_err(cerr)?;
            total += value;
            steps += 1;
        }
        let train_loss = total / steps.max(1) as f64;
        let val_loss = match &val {
            Some(v) => Some(
                net.score(v)
                    .and_then(|(sc, _)| sc.mean_all())
                    .and_then(|m| m.to_dtype(DType::F64))
                    .and_then(|m| m.to_scalar::<f64>())
                    .map_err(cerr)?,
            ),
            None => None,
        };
        let monitored = val_loss.unwrap_or(train_loss);
        let improved = monitored < best.0 * (1.0 - 1e-4) || val_loss.is_none();
        if improved {
            best = (monitored, net.snapshot()?);
            since_best = 0;
        } else {
            since_best += 1;
        }
        let report = EpochReport {
            epoch,
            epochs: cfg.epochs,
            train_loss,
            val_loss,
            improved,
        };
        progress(&report);
        history.push(report);
        if val_loss.is_some() && since_best >= cfg.patience {
            stopped_early = epoch < cfg.epochs;
            break;
        }
    }
    Ok(TrainOutcome {
        params: best.1,
        history,
        stopped_early,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, f: usize, seed: u64) -> Vec<f32> {
        // rows on a 1-d manifold: easy to reconstruct through a small bottleneck
        let mut r = SeededRng::new(seed);
        (0..n)
            .flat_map(|_| {
                let t = r.uniform(-1.0, 1.0);
                (0..f)
                    .map(|j| ((j as f64 + 1.0) * t).sin() as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn cfg(epochs: usize) -> TrainConfig {
        TrainConfig {
            epochs,
            batch_size: 32,
            learning_rate: 1e-2,
            patience: 100,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn training_reduces_the_reconstruction_error() {
        let arch = Architecture::Dense {
            n_features: 4,
            hidden: vec![8],
            latent: 2,
        };
        let x = toy(256, 4, 1);
        let before = forward(&arch, &Params::init(&arch, 42).unwrap(), &x)
            .unwrap()
            .0;
        let out = train(&arch, &x, None, &cfg(15), &mut |_| {}).unwrap();
        let after = forward(&arch, &out.params, &x).unwrap().0;
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        assert!(
            mean(&after) < 0.5 * mean(&before),
            "{} vs {}",
            mean(&after),
            mean(&before)
        );
    }

    #[test]
    fn the_same_seed_trains_the_same_weights() {
        let arch = Architecture::Vae {
            n_features: 3,
            hidden: vec![4],
            latent: 2,
        };
        let x = toy(64, 3, 2);
        let a = train(&arch, &x, None, &cfg(2), &mut |_| {}).unwrap();
        let b = train(&arch, &x, None, &cfg(2), &mut |_| {}).unwrap();
        assert_eq!(a.params, b.params);
        let c = train(
            &arch,
            &x,
            None,
            &TrainConfig { seed: 7, ..cfg(2) },
            &mut |_| {},
        )
        .unwrap();
        assert_ne!(a.params, c.params);
    }

    #[test]
    fn early_stopping_ends_training_when_validation_stalls() {
        let arch = Architecture::Dense {
            n_features: 3,
            hidden: vec![],
            latent: 1,
        };
        let x = toy(100, 3, 3);
        let c = TrainConfig {
            epochs: 200,
            patience: 2,
            learning_rate: 0.05,
            ..cfg(200)
        };
        let mut seen = 0;
        let out = train(&arch, &x, None, &c, &mut |_| seen += 1).unwrap();
        assert!(out.stopped_early, "ran {} epochs", out.history.len());
        assert_eq!(seen, out.history.len());
        assert!(out.history.iter().all(|r| r.val_loss.is_some()));
    }

    #[test]
    fn lstm_forward_gives_one_score_per_window() {
        let arch = Architecture::Lstm {
            n_features: 2,
            window: 4,
            hidden: 3,
            latent: 2,
        };
        let x = toy(5 * 4, 2, 4);
        let (s, pf) = forward(&arch, &Params::init(&arch, 1).unwrap(), &x).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(pf.len(), 10);
        assert!(train(&arch, &x[..7], None, &cfg(1), &mut |_| {}).is_err());
    }
}
