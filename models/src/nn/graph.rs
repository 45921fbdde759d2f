//! Builds the scoring graph of a network as a tract `TypedModel` made only of
//! primitive ops that tract's TFLite writer serialises and that tract-tflite
//! and LiteRT read back: BATCH_MATMUL, ADD, SUB, MUL, TANH, LOGISTIC, RESHAPE,
//! SLICE, CONCATENATION and SUM.
//!
//! The LSTM is unrolled over its window: one matrix product projects the
//! inputs of all steps, then each step slices its projection, adds the
//! recurrent product and applies the gates. The score is the mean squared
//! reconstruction error, computed as a SUM times `1/N` (tract-tflite does not
//! read MEAN reliably). Shapes are concrete: a graph is built for one batch size.

use tract_tflite::internal::tract_core::ops::array::{Slice, TypedConcat};
use tract_tflite::internal::tract_core::ops::einsum::EinSum;
use tract_tflite::internal::tract_core::ops::math::{add, mul, sub, tanh};
use tract_tflite::internal::tract_core::ops::nn::{Reduce, Reducer, sigmoid};
use tract_tflite::internal::*;

use super::{Architecture, NnError, NnResult, Params};

fn terr(e: impl std::fmt::Display) -> NnError {
    NnError::Tract(format!("{e:#}"))
}

/// Name of the input of every exported graph.
pub const INPUT_NAME: &str = "input";

struct Builder<'p> {
    model: TypedModel,
    params: &'p Params,
    consts: usize,
}

impl Builder<'_> {
    fn param(&mut self, name: &str) -> TractResult<OutletId> {
        let t = self.params.get(name).map_err(|e| format_err!("{e}"))?;
        let tensor = Tensor::from_shape(&t.shape, &t.data)?;
        self.model.add_const(name, tensor)
    }

    fn konst(&mut self, shape: &[usize], value: f32) -> TractResult<OutletId> {
        self.consts += 1;
        let n: usize = shape.iter().product();
        let tensor = Tensor::from_shape(shape, &vec![value; n])?;
        self.model.add_const(format!("k{}", self.consts), tensor)
    }

    fn one(
        &mut self,
        name: &str,
        op: impl Into<Box<dyn TypedOp>>,
        inputs: &[OutletId],
    ) -> TractResult<OutletId> {
        Ok(self.model.wire_node(name, op, inputs)?[0])
    }

    /// `x [B, in] · w [in, out] + b [1, out]`.
    fn dense(&mut self, name: &str, x: OutletId) -> TractResult<OutletId> {
        let w = self.param(&format!("{name}.w"))?;
        let b = self.param(&format!("{name}.b"))?;
        let mm = self.one(
            &format!("{name}.matmul"),
            EinSum::new("mk,kn->mn".parse()?, f32::datum_type()),
            &[x, w],
        )?;
        self.one(&format!("{name}.bias"), add(), &[mm, b])
    }

    fn matmul(&mut self, name: &str, x: OutletId, w: OutletId) -> TractResult<OutletId> {
        self.one(
            name,
            EinSum::new("mk,kn->mn".parse()?, f32::datum_type()),
            &[x, w],
        )
    }

    fn reshape(&mut self, name: &str, x: OutletId, to: &[usize]) -> TractResult<OutletId> {
        let from = self.model.outlet_fact(x)?.shape.to_tvec();
        let to: TVec<TDim> = to.iter().map(|d| d.to_dim()).collect();
        self.one(name, AxisOp::Reshape(0, from, to), &[x])
    }

    fn slice(
        &mut self,
        name: &str,
        x: OutletId,
        axis: usize,
        start: usize,
        end: usize,
    ) -> TractResult<OutletId> {
        self.one(name, Slice::new(axis, start, end), &[x])
    }

    /// One LSTM step; `proj` is the input projection plus bias `[B, 4H]`.
    fn lstm_step(
        &mut self,
        name: &str,
        proj: OutletId,
        state: Option<(OutletId, OutletId)>,
        w_hh: OutletId,
        hidden: usize,
    ) -> TractResult<(OutletId, OutletId)> {
        let gates = match state {
            Some((h, _)) => {
                let rec = self.matmul(&format!("{name}.rec"), h, w_hh)?;
                self.one(&format!("{name}.gates"), add(), &[proj, rec])?
            }
            None => proj,
        };
        let h = hidden;
        let i = self.slice(&format!("{name}.i_pre"), gates, 1, 0, h)?;
        let i = self.one(&format!("{name}.i"), sigmoid(), &[i])?;
        let f = self.slice(&format!("{name}.f_pre"), gates, 1, h, 2 * h)?;
        let g = self.slice(&format!("{name}.g_pre"), gates, 1, 2 * h, 3 * h)?;
        let g = self.one(&format!("{name}.g"), tanh(), &[g])?;
        let o = self.slice(&format!("{name}.o_pre"), gates, 1, 3 * h, 4 * h)?;
        let o = self.one(&format!("{name}.o"), sigmoid(), &[o])?;
        let ig = self.one(&format!("{name}.ig"), mul(), &[i, g])?;
        let c = match state {
            Some((_, c_prev)) => {
                let f = self.one(&format!("{name}.f"), sigmoid(), &[f])?;
                let fc = self.one(&format!("{name}.fc"), mul(), &[f, c_prev])?;
                self.one(&format!("{name}.c"), add(), &[fc, ig])?
            }
            None => ig,
        };
        let tc = self.one(&format!("{name}.tanh_c"), tanh(), &[c])?;
        let h_new = self.one(&format!("{name}.h"), mul(), &[o, tc])?;
        Ok((h_new, c))
    }
}

/// Builds the scoring graph of `arch` with `params` for batches of `batch`
/// samples: input 0 is the scaled sample, output 0 the score `[B, 1]`,
/// output 1 the per-feature squared error `[B, F]`.
pub fn build(arch: &Architecture, params: &Params, batch: usize) -> NnResult<TypedModel> {
    arch.validate()?;
    params.check(arch)?;
    if batch == 0 || batch > 65_536 {
        return Err(NnError::Invalid(format!(
            "batch must be in 1..=65536, got {batch}"
        )));
    }
    build_inner(arch, params, batch).map_err(terr)
}

fn build_inner(arch: &Architecture, params: &Params, batch: usize) -> TractResult<TypedModel> {
    let mut b = Builder {
        model: TypedModel::default(),
        params,
        consts: 0,
    };
    let f = arch.n_features();
    let (score, per_feature) = match arch {
        Architecture::Dense { hidden, .. } | Architecture::Vae { hidden, .. } => {
            let x = b.model.add_source(INPUT_NAME, f32::fact([batch, f]))?;
            let mut y = x;
            for i in 0..hidden.len() {
                y = b.dense(&format!("enc{i}"), y)?;
                y = b.one(&format!("enc{i}.tanh"), tanh(), &[y])?;
            }
            y = b.dense("lat", y)?;
            for i in (0..hidden.len()).rev() {
                y = b.dense(&format!("dec{i}"), y)?;
                y = b.one(&format!("dec{i}.tanh"), tanh(), &[y])?;
            }
            let recon = b.dense("out", y)?;
            let diff = b.one("err.diff", sub(), &[recon, x])?;
            let sq = b.one("err.sq", mul(), &[diff, diff])?;
            let sum = b.one("score.sum", Reduce::new(tvec!(1), Reducer::Sum), &[sq])?;
            let k = b.konst(&[1, 1], 1.0 / f as f32)?;
            let score = b.one("score", mul(), &[sum, k])?;
            (score, sq)
        }
        Architecture::Lstm { window, hidden, .. } => {
            let (t_len, h) = (*window, *hidden);
            let x = b
                .model
                .add_source(INPUT_NAME, f32::fact([batch, t_len, f]))?;
            // encoder: one projection of all steps
            let x2 = b.reshape("enc.flat", x, &[batch * t_len, f])?;
            let w_ih = b.param("enc.w_ih")?;
            let proj = b.matmul("enc.proj", x2, w_ih)?;
            let bias = b.param("enc.b")?;
            let proj = b.one("enc.proj_bias", add(), &[proj, bias])?;
            let proj = b.reshape("enc.proj3", proj, &[batch, t_len, 4 * h])?;
            let w_hh = b.param("enc.w_hh")?;
            let mut state = None;
            for t in 0..t_len {
                let p = b.slice(&format!("enc.t{t}.slice"), proj, 1, t, t + 1)?;
                let p = b.reshape(&format!("enc.t{t}.proj"), p, &[batch, 4 * h])?;
                state = Some(b.lstm_step(&format!("enc.t{t}"), p, state, w_hh, h)?);
            }
            let h_last = state
                .map(|s| s.0)
                .ok_or_else(|| format_err!("empty window"))?;
            let z = b.dense("lat", h_last)?;
            let z = b.one("lat.tanh", tanh(), &[z])?;
            // decoder: the repeated latent has the same projection at every step
            let w_ih = b.param("dec.w_ih")?;
            let zp = b.matmul("dec.proj", z, w_ih)?;
            let bias = b.param("dec.b")?;
            let zp = b.one("dec.proj_bias", add(), &[zp, bias])?;
            let w_hh = b.param("dec.w_hh")?;
            let mut state = None;
            let mut hs = Vec::with_capacity(t_len);
            for t in 0..t_len {
                let s = b.lstm_step(&format!("dec.t{t}"), zp, state, w_hh, h)?;
                hs.push(b.reshape(&format!("dec.t{t}.h3"), s.0, &[batch, 1, h])?);
                state = Some(s);
            }
            let hseq = if hs.len() == 1 {
                hs[0]
            } else {
                b.one("dec.seq", TypedConcat { axis: 1 }, &hs)?
            };
            let hflat = b.reshape("dec.flat", hseq, &[batch * t_len, h])?;
            let recon = b.dense("out", hflat)?;
            let recon = b.reshape("recon", recon, &[batch, t_len, f])?;
            let diff = b.one("err.diff", sub(), &[recon, x])?;
            let sq = b.one("err.sq", mul(), &[diff, diff])?;
            let per_t = b.one("err.sum_t", Reduce::new(tvec!(1), Reducer::Sum), &[sq])?;
            let kt = b.konst(&[1, 1, f], 1.0 / t_len as f32)?;
            let per_t = b.one("err.mean_t", mul(), &[per_t, kt])?;
            let per_feature = b.reshape("err.per_feature", per_t, &[batch, f])?;
            let sum = b.one(
                "score.sum",
                Reduce::new(tvec!(1), Reducer::Sum),
                &[per_feature],
            )?;
            let kf = b.konst(&[1, 1], 1.0 / f as f32)?;
            let score = b.one("score", mul(), &[sum, kf])?;
            (score, per_feature)
        }
    };
    b.model.select_output_outlets(&[score, per_feature])?;
    Ok(b.model)
}
