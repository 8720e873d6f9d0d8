//! The default pretrained predictor, embedded in the binary so that `aiop predict`, `aiop
//! search --fitness predictor` and the daemon work from a fresh clone with no file at hand.
//!
//! The files live in `search_spaces/predictor/` (weights and sidecar, written by `aiop
//! pretrain`; the command that reproduces them is in `search_spaces/SOURCES.md`). Beside it,
//! in `plain/`, ships its companion pretrained the same way without Eq. 5's FLOPs scaling
//! (plain per-task z-scores): fine-tuning cross-validates both on a task's samples and, by
//! default, blends them, each weighted by how well it ranks the held-out samples
//! (`companion = "weighted"`, [`crate::tuned`]).
//! `base.json` beside them is the [`super::base::BaseSelection`] of the pair (which member
//! predicts each pretraining task without a task model, and its calibration), written by `aiop
//! experiment base --write`.
//! Invariant: [`load`] gives exactly the model `Trained::load("search_spaces/predictor")` gives,
//! [`load_plain`] the one of `search_spaces/predictor/plain`; [`base`] is the pair with that
//! selection, which must have been fitted for exactly these two models.

use std::path::Path;

use candle_core::Device;

use super::base::{Base, BaseSelection};
use super::checkpoint::Trained;
use super::PredictorError;

/// Where the embedded files come from, relative to the repository root (used in messages).
pub const DIR: &str = "search_spaces/predictor";

/// Where the embedded no-transform companion comes from.
pub const PLAIN_DIR: &str = "search_spaces/predictor/plain";

const META: &str = include_str!("../../search_spaces/predictor/model.json");
const WEIGHTS: &[u8] = include_bytes!("../../search_spaces/predictor/model.safetensors");
const BASE_SELECTION: &str = include_str!("../../search_spaces/predictor/base.json");
const PLAIN_META: &str = include_str!("../../search_spaces/predictor/plain/model.json");
const PLAIN_WEIGHTS: &[u8] =
    include_bytes!("../../search_spaces/predictor/plain/model.safetensors");

const PRETRAIN_CONFIG: &str = include_str!("../../search_spaces/predictor/pretrain.json");
const PLAIN_PRETRAIN_CONFIG: &str =
    include_str!("../../search_spaces/predictor/pretrain-plain.json");

/// The pretraining configs of the embedded model and of its companion (`pretrain.json`,
/// `pretrain-plain.json`): what tells which networks each saw.
pub fn pretrain_configs() -> Result<
    (
        super::pretrain::PretrainConfig,
        super::pretrain::PretrainConfig,
    ),
    PredictorError,
> {
    let read = |name: &str, text: &str| {
        serde_json::from_str(text).map_err(|e| PredictorError::Config(format!("{DIR}/{name}: {e}")))
    };
    Ok((
        read("pretrain.json", PRETRAIN_CONFIG)?,
        read("pretrain-plain.json", PLAIN_PRETRAIN_CONFIG)?,
    ))
}

/// The embedded default model on `device`.
pub fn load(device: &Device) -> Result<Trained, PredictorError> {
    Trained::from_bytes(META, WEIGHTS, Path::new(DIR), device)
}

/// The embedded no-transform companion on `device`.
pub fn load_plain(device: &Device) -> Result<Trained, PredictorError> {
    Trained::from_bytes(PLAIN_META, PLAIN_WEIGHTS, Path::new(PLAIN_DIR), device)
}

/// The embedded base selection.
pub fn selection() -> Result<BaseSelection, PredictorError> {
    serde_json::from_str(BASE_SELECTION)
        .map_err(|e| PredictorError::Config(format!("{DIR}/base.json: {e}")))
}

/// The embedded pair with its selection: what base predictions use.
pub fn base(device: &Device) -> Result<Base, PredictorError> {
    Base::with_selection(load(device)?, load_plain(device)?, selection()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor::data::TaskKey;
    use crate::predictor::features::extract;
    use crate::predictor::transform::gflops;
    use crate::spaces::{Arch, SpaceId};

    #[test]
    fn embedded_model_equals_the_files_and_knows_every_pretraining_task() {
        let dev = Device::Cpu;
        let a = load(&dev).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
        let b = Trained::load(&root, &dev).unwrap();
        let key: TaskKey = "nb201/cifar10".parse().unwrap();
        let arch: Arch = Arch::parse(
            SpaceId::Nb201,
            "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
        )
        .unwrap();
        let g = arch.build(key.task).unwrap();
        let f = extract(&g, &a.model.config.features());
        let pa = a.predict(key, &[(&f, gflops(&g))], 1).unwrap();
        let pb = b.predict(key, &[(&f, gflops(&g))], 1).unwrap();
        assert_eq!(pa, pb);
        assert!(pa[0].is_finite());
        assert!(a.meta.stats.len() >= 17, "{:?}", a.meta.stats.keys());
        assert!(a.flops_scaling());
        let c = load_plain(&dev).unwrap();
        let d = Trained::load(&root.join("plain"), &dev).unwrap();
        assert!(!c.flops_scaling());
        let pc = c.predict(key, &[(&f, gflops(&g))], 1).unwrap();
        assert_eq!(pc, d.predict(key, &[(&f, gflops(&g))], 1).unwrap());
        assert!(pc[0].is_finite() && pc[0] != pa[0]);
        assert_eq!(c.meta.stats.len(), a.meta.stats.len());
    }
}
