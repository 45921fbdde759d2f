//! Writing, reading and running `.tflite` bytes with tract, never letting a
//! tract panic bring the process down.
//!
//! tract's writer panics on ops it cannot serialise and tract-tflite can
//! panic on a model it does not support, so every call into them runs under
//! `catch_unwind` and a panic becomes [`NnError::Tract`]. A loaded model is
//! checked against the architecture's input and output shapes before use.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use tract_tflite::internal::*;
use tract_tflite::tflite as fb;

use super::{Architecture, NnError, NnResult, ParamTensor, Params};

fn terr(e: impl std::fmt::Display) -> NnError {
    NnError::Tract(format!("{e:#}"))
}

fn guarded<T>(what: &str, f: impl FnOnce() -> TractResult<T>) -> NnResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(NnError::Tract(format!("{what}: {e:#}"))),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(NnError::Tract(format!("{what} panicked: {msg}")))
        }
    }
}

/// Serialises a graph to `.tflite` bytes with tract's writer.
pub fn write(model: &TypedModel) -> NnResult<Vec<u8>> {
    guarded("write tflite", || {
        let mut buf = Vec::new();
        tract_tflite::tflite().write(model, &mut buf)?;
        Ok(buf)
    })
}

/// A `.tflite` model loaded and optimised by tract, ready to run on one batch size.
#[derive(Debug, Clone)]
pub struct TflitePlan {
    plan: Arc<TypedRunnableModel>,
    input_shape: Vec<usize>,
    batch: usize,
    n_features: usize,
}

impl TflitePlan {
    /// Loads `.tflite` bytes and checks they score `arch`-shaped samples:
    /// one `f32` input `[B, F]` (or `[B, T, F]`), outputs `[B, 1]` and `[B, F]`.
    pub fn load(bytes: &[u8], arch: &Architecture) -> NnResult<TflitePlan> {
        let model = guarded("read tflite", || {
            tract_tflite::tflite().model_for_read(&mut std::io::Cursor::new(bytes))
        })?;
        if model.inputs.len() != 1 || model.outputs.len() < 2 {
            return Err(NnError::Tract(format!(
                "expected 1 input and 2 outputs, found {} and {}",
                model.inputs.len(),
                model.outputs.len()
            )));
        }
        let fact = model.input_fact(0).map_err(terr)?.clone();
        let shape: Vec<usize> = fact
            .shape
            .as_concrete()
            .ok_or_else(|| NnError::Tract("input shape is not concrete".into()))?
            .to_vec();
        let f = arch.n_features();
        let expected_rank = if arch.window() > 1 || matches!(arch, Architecture::Lstm { .. }) {
            3
        } else {
            2
        };
        let ok = fact.datum_type == f32::datum_type()
            && shape.len() == expected_rank
            && shape[0] >= 1
            && shape[shape.len() - 1] == f
            && (expected_rank == 2 || shape[1] == arch.window());
        if !ok {
            return Err(NnError::Tract(format!(
                "input {:?} {shape:?} does not match the architecture ({} steps x {f} features)",
                fact.datum_type,
                arch.window()
            )));
        }
        let batch = shape[0];
        for (i, want) in [[batch, 1], [batch, f]].iter().enumerate() {
            let of = model.output_fact(i).map_err(terr)?;
            let got = of.shape.as_concrete().map(|s| s.to_vec());
            if got.as_deref() != Some(&want[..]) || of.datum_type != f32::datum_type() {
                return Err(NnError::Tract(format!(
                    "output {i} is {:?} {:?}, expected f32 {want:?}",
                    of.datum_type, of.shape
                )));
            }
        }
        let plan = guarded("optimise tflite", || {
            model.into_optimized()?.into_runnable()
        })?;
        Ok(TflitePlan {
            plan,
            input_shape: shape,
            batch,
            n_features: f,
        })
    }

    /// Samples per run.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Runs one full batch of scaled samples (`batch * T * F` values): the
    /// scores (`batch`) and per-feature errors (`batch * F`).
    pub fn run(&self, input: &[f32]) -> NnResult<(Vec<f32>, Vec<f32>)> {
        let n: usize = self.input_shape.iter().product();
        if input.len() != n {
            return Err(NnError::Input(format!(
                "a batch needs {n} values, got {}",
                input.len()
            )));
        }
        let outputs = guarded("run tflite", || {
            let t = Tensor::from_shape(&self.input_shape, input)?;
            self.plan.run(tvec!(t.into()))
        })?;
        let get = |i: usize, len: usize| -> NnResult<Vec<f32>> {
            let v = outputs
                .get(i)
                .ok_or_else(|| NnError::Tract(format!("missing output {i}")))?
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))
                .map_err(terr)?;
            if v.len() != len {
                return Err(NnError::Tract(format!("output {i} has {} values", v.len())));
            }
            Ok(v)
        };
        Ok((get(0, self.batch)?, get(1, self.batch * self.n_features)?))
    }
}

/// Reads the network's weights back from `.tflite` bytes written by
/// [`write`] from a [`super::graph::build`] graph (constant tensors keep the
/// parameter names). Parameters absent from the scoring graph (the VAE's
/// log-variance head) are re-initialised from `seed`.
pub fn extract_params(bytes: &[u8], arch: &Architecture, seed: u64) -> NnResult<Params> {
    let model =
        fb::root_as_model(bytes).map_err(|e| NnError::Decode(format!("flatbuffer: {e}")))?;
    let buffers = model
        .buffers()
        .ok_or_else(|| NnError::Decode("no buffers".into()))?;
    let subgraph = model
        .subgraphs()
        .filter(|s| !s.is_empty())
        .map(|s| s.get(0))
        .ok_or_else(|| NnError::Decode("no subgraph".into()))?;
    let tensors = subgraph
        .tensors()
        .ok_or_else(|| NnError::Decode("no tensors".into()))?;
    let fresh = Params::init(arch, seed)?;
    let exported = arch.exported_params();
    let mut out = Vec::new();
    for (name, shape) in arch.param_shapes() {
        if !exported.contains(&name) {
            out.push(fresh.get(&name)?.clone());
            continue;
        }
        let wanted = format!("{name}.0");
        let t = tensors
            .iter()
            .find(|t| t.name() == Some(wanted.as_str()))
            .ok_or_else(|| NnError::Decode(format!("parameter {name} not found in the model")))?;
        let dims: Vec<usize> = t
            .shape()
            .map(|s| s.iter().map(|d| d.max(0) as usize).collect())
            .unwrap_or_default();
        if dims != shape || t.type_() != fb::TensorType::FLOAT32 {
            return Err(NnError::Decode(format!(
                "parameter {name} has shape {dims:?}, expected f32 {shape:?}"
            )));
        }
        let buf_ix = t.buffer() as usize;
        if buf_ix >= buffers.len() {
            return Err(NnError::Decode(format!("parameter {name} has no buffer")));
        }
        let data = buffers
            .get(buf_ix)
            .data()
            .ok_or_else(|| NnError::Decode(format!("parameter {name} has no data")))?;
        let bytes = data.bytes();
        let n: usize = shape.iter().product();
        if bytes.len() != 4 * n {
            return Err(NnError::Decode(format!(
                "parameter {name} has {} bytes, expected {}",
                bytes.len(),
                4 * n
            )));
        }
        let values = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push(ParamTensor {
            name,
            shape,
            data: values,
        });
    }
    let params = Params { tensors: out };
    params.check(arch)?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::graph;

    fn dense() -> Architecture {
        Architecture::Dense {
            n_features: 3,
            hidden: vec![4],
            latent: 2,
        }
    }

    #[test]
    fn garbage_bytes_are_an_error_not_a_crash() {
        let e = TflitePlan::load(b"definitely not a flatbuffer", &dense()).unwrap_err();
        assert!(matches!(e, NnError::Tract(_)), "{e}");
        assert!(extract_params(&[0u8; 3], &dense(), 1).is_err());
    }

    #[test]
    fn a_model_for_another_shape_is_rejected_on_load() {
        let arch = dense();
        let params = Params::init(&arch, 1).unwrap();
        let bytes = write(&graph::build(&arch, &params, 2).unwrap()).unwrap();
        let other = Architecture::Dense {
            n_features: 5,
            hidden: vec![4],
            latent: 2,
        };
        assert!(TflitePlan::load(&bytes, &other).is_err());
        let plan = TflitePlan::load(&bytes, &arch).unwrap();
        assert_eq!(plan.batch(), 2);
        assert!(plan.run(&[0.0; 5]).is_err());
    }

    #[test]
    fn weights_read_back_from_the_file_are_the_ones_written() {
        for arch in [
            dense(),
            Architecture::Lstm {
                n_features: 2,
                window: 3,
                hidden: 3,
                latent: 2,
            },
        ] {
            let mut params = Params::init(&arch, 5).unwrap();
            // distinct biases, as after training (equal constants share a buffer)
            for (k, t) in params.tensors.iter_mut().enumerate() {
                for (j, v) in t.data.iter_mut().enumerate() {
                    *v += (k * 100 + j) as f32 * 1e-3;
                }
            }
            let bytes = write(&graph::build(&arch, &params, 1).unwrap()).unwrap();
            let back = extract_params(&bytes, &arch, 5).unwrap();
            assert_eq!(back, params);
        }
    }
}
