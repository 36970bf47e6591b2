//! `--dtype` shared by every subcommand that loads weights (`generate`, `chat`, `serve`, `eval`,
//! `finetune`, `merge`, `bench`).

use burn::tensor::FloatDType;

/// Float dtype the model weights are stored in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float.
    #[default]
    F32,
    /// bfloat16 (2 bytes per weight; the CPU backend multiplies through f32).
    Bf16,
    /// float16.
    F16,
}

impl Dtype {
    /// The Burn float dtype.
    pub fn float(self) -> FloatDType {
        match self {
            Dtype::F32 => FloatDType::F32,
            Dtype::Bf16 => FloatDType::BF16,
            Dtype::F16 => FloatDType::F16,
        }
    }

    /// The name given on the command line (`f32`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }
}
