//! [`WeightsIo`] for full fine-tuning: the whole model as a Hub-layout folder.

use std::path::Path;

use burn::tensor::{Device, FloatDType};
use lmflow_models::{CausalLm, ModelConfig, WeightSource};

use crate::error::Result;
use crate::trainer::WeightsIo;

/// Saves and restores every weight of the model as `config.json` + `model.safetensors`
/// (Hub names), the layout `transformers` loads.
pub struct FullModelWeights {
    config: ModelConfig,
    device: Device,
}

impl FullModelWeights {
    /// Full-model checkpoints for a model of `config`, restored onto `device`.
    pub fn new(config: ModelConfig, device: Device) -> Self {
        Self { config, device }
    }
}

impl WeightsIo for FullModelWeights {
    fn save(&self, model: &CausalLm, dir: &Path) -> Result<()> {
        model.save(dir, &self.config)?;
        Ok(())
    }

    fn load(&self, model: CausalLm, dir: &Path) -> Result<CausalLm> {
        // Free the current weights before reading the saved ones: one copy at a time.
        drop(model);
        let source = WeightSource::open(dir, &self.device, FloatDType::F32)?;
        Ok(CausalLm::load(&self.config, &source)?)
    }
}
