//! [`WeightsIo`] for LoRA runs: the adapter in Hugging Face PEFT's folder layout.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use lmflow_peft::inject::delete_adapter;
use lmflow_peft::trainable::set_trainable_by_path;
use lmflow_peft::{LinearVisitor, LoraConfig, load_adapter, save_adapter};

use crate::error::Result;
use crate::trainer::WeightsIo;

/// Saves adapter `name` as `adapter_config.json` + `adapter_model.safetensors` (what PEFT's
/// `save_pretrained` writes) and restores it on resume.
pub struct LoraWeights {
    config: LoraConfig,
    name: String,
    device: Device,
}

impl LoraWeights {
    /// Adapter checkpoints of adapter `name` configured by `config`, restored onto `device`.
    pub fn new(config: LoraConfig, name: impl Into<String>, device: Device) -> Self {
        Self {
            config,
            name: name.into(),
            device,
        }
    }
}

/// Any model whose linear layers carry adapters: a [`CausalLm`](lmflow_models::CausalLm), a
/// vision-language model, ...
impl<M: Module + LinearVisitor> WeightsIo<M> for LoraWeights {
    fn save(&self, model: &M, dir: &Path) -> Result<()> {
        // `save_adapter` walks the layers mutably; a clone shares the tensors, not copies them.
        let mut view = model.clone();
        save_adapter(&mut view, &self.config, &self.name, dir)?;
        Ok(())
    }

    fn load(&self, mut model: M, dir: &Path) -> Result<M> {
        delete_adapter(&mut model, &self.name)?;
        load_adapter(&mut model, dir, &self.name, &self.device)?;
        // The reloaded adapter trains again; every other parameter keeps its flag.
        Ok(set_trainable_by_path(model, |path| {
            path.contains("adapters.").then_some(true)
        }))
    }
}
