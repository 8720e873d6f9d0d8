//! Seeded weight initialisation: a `VarBuilder` backend that creates missing variables in a
//! [`VarMap`] from our own [`Rng`] (candle's CPU generator cannot be seeded), plus PyTorch-style
//! layer constructors.
//!
//! Invariants: the values of a model's initial weights depend only on the seed and the order in
//! which the model's constructor asks for its variables (fixed by the code), never on a global
//! generator; [`linear`] initialises like `torch.nn.Linear` (weight and bias uniform in
//! ±1/√fan_in), not like `candle_nn::linear` (Kaiming normal); [`embedding`] like
//! `torch.nn.Embedding` (standard normal). Variables already in the map are returned unchanged,
//! so a model built over a loaded map uses the loaded weights.

use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Embedding, Init, Linear, VarBuilder, VarMap};

use crate::rng::Rng;

/// A [`VarMap`] backend that draws new variables from a seeded [`Rng`].
pub struct SeededVars {
    map: VarMap,
    rng: Mutex<Rng>,
}

/// A standard normal draw (Box–Muller).
pub fn normal(rng: &mut Rng) -> f64 {
    let u1 = 1.0 - rng.next_f64(); // (0, 1]
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn values(init: Init, shape: &Shape, rng: &mut Rng) -> candle_core::Result<Vec<f32>> {
    let n = shape.elem_count();
    Ok(match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => (0..n)
            .map(|_| (lo + (up - lo) * rng.next_f64()) as f32)
            .collect(),
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| (mean + stdev * normal(rng)) as f32)
            .collect(),
        Init::Kaiming { .. } => {
            candle_core::bail!("SeededVars: Kaiming initialisation is not supported")
        }
    })
}

impl SimpleBackend for SeededVars {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.map.data().lock().expect("VarMap lock poisoned");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape());
            }
            return Ok(v.as_tensor().clone());
        }
        let vals = {
            let mut rng = self.rng.lock().expect("rng lock poisoned");
            values(h, &s, &mut rng)?
        };
        let t = Tensor::from_vec(vals, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.map.data().lock().expect("VarMap lock poisoned");
        match data.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no variable {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .contains_key(name)
    }
}

/// A `VarBuilder` (f32) that creates missing variables of `map` from `seed`.
pub fn var_builder(map: &VarMap, seed: u64, dev: &Device) -> VarBuilder<'static> {
    let backend = SeededVars {
        map: map.clone(),
        rng: Mutex::new(Rng::new(seed)),
    };
    VarBuilder::from_backend(Box::new(backend), DType::F32, dev.clone())
}

/// `torch.nn.Linear(in, out, bias)`: weight `[out, in]` and bias uniform in ±1/√in.
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    vb: VarBuilder,
) -> candle_core::Result<Linear> {
    let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let w = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let b = if bias {
        Some(vb.get_with_hints(out_dim, "bias", init)?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

/// `torch.nn.Embedding(n, dim)`: standard normal rows.
pub fn embedding(n: usize, dim: usize, vb: VarBuilder) -> candle_core::Result<Embedding> {
    let w = vb.get_with_hints(
        (n, dim),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
    )?;
    Ok(Embedding::new(w, dim))
}

/// All variables of a map, sorted by name (a `VarMap` iterates in hash order; sorting makes
/// every reduction over variables, like a gradient norm, repeatable).
pub fn sorted_vars(map: &VarMap) -> Vec<(String, Var)> {
    let data = map.data().lock().expect("VarMap lock poisoned");
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights() {
        let dev = Device::Cpu;
        let draw = |seed| {
            let m = VarMap::new();
            let vb = var_builder(&m, seed, &dev);
            let l = linear(4, 3, true, vb.pp("l")).unwrap();
            l.weight().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        let w = draw(1);
        assert!(w.iter().all(|x| x.abs() <= 0.5));
    }

    #[test]
    fn normal_draws_have_unit_moments() {
        let mut r = Rng::new(5);
        let xs: Vec<f64> = (0..20_000).map(|_| normal(&mut r)).collect();
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64;
        assert!(m.abs() < 0.03 && (v - 1.0).abs() < 0.05, "{m} {v}");
    }
}
