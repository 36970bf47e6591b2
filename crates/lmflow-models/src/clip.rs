//! CLIP's vision transformer (`model_type: "clip_vision_model"`), the image encoder of LLaVA.
//!
//! As `transformers`' `CLIPVisionModel`: the image is cut into `patch_size` squares, each
//! projected to `hidden_size` (the patch-embedding convolution, stride = kernel = patch, no
//! bias, computed here as an unfold and one matmul); a learned class embedding is put in front
//! and learned position embeddings added; `pre_layrnorm`; then pre-LN encoder layers
//! (`x + attn(ln1(x))`, `x + mlp(ln2(x))`) with non-causal multi-head attention and
//! `quick_gelu` (or the configured `hidden_act`) in the MLP. `post_layernorm` is only applied to
//! the pooled class token, which LLaVA does not use; it is kept so checkpoints round-trip.
//!
//! [`ClipVisionModel::hidden_states`] returns the states LLaVA selects from
//! (`vision_feature_layer`): index 0 is the input of the first layer (after `pre_layrnorm`),
//! index `i` the output of layer `i`.
//!
//! Tensor names (relative to the tower): `embeddings.{class_embedding, patch_embedding.weight,
//! position_embedding.weight}`, `pre_layrnorm`, `encoder.layers.{i}.{layer_norm1, self_attn.
//! {q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}`, `post_layernorm`.

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};
use lmflow_peft::Linear;

use crate::activation::Activation;
use crate::attention::scaled_dot_product_attention;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::hub::lazy_param;
use crate::hub::{HubModule, HubPath, Init, ParamSlot, TensorVisitor, WeightLayout, lazy_linear};
use crate::layer_norm::{LayerNorm, LayerNormConfig};

/// The `model_type` of a CLIP vision configuration.
pub const CLIP_VISION_MODEL_TYPE: &str = "clip_vision_model";

/// Configuration of a [`ClipVisionModel`] (`CLIPVisionConfig`; absent keys take its defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    /// Width of the patch embeddings and every layer (default 768).
    pub hidden_size: usize,
    /// MLP width (default 3072).
    pub intermediate_size: usize,
    /// Encoder layers (default 12).
    pub num_hidden_layers: usize,
    /// Attention heads (default 12).
    pub num_attention_heads: usize,
    /// Input channels (default 3).
    pub num_channels: usize,
    /// Side of the (square) input image in pixels (default 224).
    pub image_size: usize,
    /// Side of a patch in pixels (default 32).
    pub patch_size: usize,
    /// MLP activation (`hidden_act`, default `quick_gelu`).
    pub hidden_act: Activation,
    /// LayerNorm epsilon (default 1e-5).
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    /// Reads a `vision_config` object (its `model_type` must be `clip_vision_model`).
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the key that is missing, unsupported or inconsistent.
    pub fn from_hf(config: &ModelConfig) -> Result<Self, ModelError> {
        if config.model_type != CLIP_VISION_MODEL_TYPE {
            return Err(ModelError::config(
                &config.path,
                "vision_config.model_type",
                format!(
                    "unsupported vision tower `{}` (supported: {CLIP_VISION_MODEL_TYPE}; SigLIP \
                     and others are not implemented)",
                    config.model_type
                ),
            ));
        }
        let get = |key: &str, default: usize| -> Result<usize, ModelError> {
            Ok(config.usize_opt(key)?.unwrap_or(default))
        };
        let act = config.str_opt("hidden_act")?.unwrap_or("quick_gelu");
        let hidden_act = Activation::from_hf_name(act).ok_or_else(|| {
            ModelError::config(
                &config.path,
                "vision_config.hidden_act",
                format!(
                    "unsupported activation `{act}` (supported: {})",
                    Activation::SUPPORTED
                ),
            )
        })?;
        let out = Self {
            hidden_size: get("hidden_size", 768)?,
            intermediate_size: get("intermediate_size", 3072)?,
            num_hidden_layers: get("num_hidden_layers", 12)?,
            num_attention_heads: get("num_attention_heads", 12)?,
            num_channels: get("num_channels", 3)?,
            image_size: get("image_size", 224)?,
            patch_size: get("patch_size", 32)?,
            hidden_act,
            layer_norm_eps: config.f64_opt("layer_norm_eps")?.unwrap_or(1e-5),
        };
        let bad = |key: &str, msg: &str| Err(ModelError::config(&config.path, key, msg));
        if out.num_attention_heads == 0 || !out.hidden_size.is_multiple_of(out.num_attention_heads)
        {
            return bad(
                "vision_config.num_attention_heads",
                "hidden_size is not a multiple of num_attention_heads",
            );
        }
        if out.patch_size == 0 || !out.image_size.is_multiple_of(out.patch_size) {
            return bad(
                "vision_config.patch_size",
                "image_size is not a multiple of patch_size",
            );
        }
        Ok(out)
    }

    /// Patches per image side.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patches per image (`(image_size / patch_size)²`); the tower's sequence is one longer
    /// (the class token).
    pub fn num_patches(&self) -> usize {
        self.patches_per_side() * self.patches_per_side()
    }

    /// A randomly initialised tower (PyTorch-default linear init, N(0, 0.02) embeddings, unit
    /// norms). Weights are drawn lazily, on first use.
    pub fn init(&self, device: &Device) -> ClipVisionModel {
        let h = self.hidden_size;
        let norm = |size| {
            LayerNormConfig::new(size)
                .with_eps(self.layer_norm_eps)
                .init(device)
        };
        let lin = |i: usize, o: usize| {
            let k = 1.0 / (i as f64).sqrt();
            let init = Init::Random(Distribution::Uniform(-k, k));
            lazy_linear(i, o, device, init, Some(init))
        };
        let embed = Init::Random(Distribution::Normal(0.0, 0.02));
        let (c, p) = (self.num_channels, self.patch_size);
        let positions = self.num_patches() + 1;
        let layers = (0..self.num_hidden_layers)
            .map(|_| ClipEncoderLayer {
                layer_norm1: norm(h),
                self_attn: ClipAttention {
                    q_proj: lin(h, h),
                    k_proj: lin(h, h),
                    v_proj: lin(h, h),
                    out_proj: lin(h, h),
                    num_heads: self.num_attention_heads,
                },
                layer_norm2: norm(h),
                mlp: ClipMlp {
                    fc1: lin(h, self.intermediate_size),
                    fc2: lin(self.intermediate_size, h),
                    act: self.hidden_act,
                },
            })
            .collect();
        ClipVisionModel {
            embeddings: ClipEmbeddings {
                class_embedding: lazy_param([h], device, move |d| embed.tensor([h], d)),
                patch_embedding: lazy_param([h, c, p, p], device, move |d| {
                    embed.tensor([h, c, p, p], d)
                }),
                position_embedding: lazy_param([positions, h], device, move |d| {
                    embed.tensor([positions, h], d)
                }),
                patch_size: p,
            },
            pre_layrnorm: norm(h),
            layers,
            post_layernorm: norm(h),
            config: self.clone(),
        }
    }
}

/// Patch, class and position embeddings.
#[derive(Module, Debug)]
pub struct ClipEmbeddings {
    /// The class token `[hidden]`.
    pub class_embedding: Param<Tensor<1>>,
    /// The patch-embedding convolution kernel `[hidden, channels, patch, patch]` (no bias).
    pub patch_embedding: Param<Tensor<4>>,
    /// Learned positions `[patches + 1, hidden]` (index 0: the class token).
    pub position_embedding: Param<Tensor<2>>,
    /// Side of a patch in pixels.
    pub patch_size: usize,
}

impl ClipEmbeddings {
    /// Class token followed by one embedding per patch (row-major over the patch grid), plus
    /// positions.
    ///
    /// # Shapes
    /// - pixel_values `[images, channels, size, size]` -> `[images, patches + 1, hidden]`
    pub fn forward(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        let [n, c, height, width] = pixel_values.dims();
        let p = self.patch_size;
        let (gh, gw) = (height / p, width / p);
        let kernel = self.patch_embedding.val();
        let [hidden, ..] = kernel.dims();
        // Pixel values come in f32 from the processor; compute in the model's dtype.
        let pixel_values = pixel_values.cast(kernel.dtype());
        // Unfold: [n, c, gh, p, gw, p] -> [n, gh, gw, c, p, p] -> [n, gh*gw, c*p*p], the
        // (channel, row, column) order of the kernel's flattened input dimension.
        let patches = pixel_values
            .reshape([n, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([n, gh * gw, c * p * p]);
        let patches =
            lmflow_peft::linear::matmul_t(patches, kernel.reshape([hidden, c * p * p]), None);
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, hidden])
            .expand([n, 1, hidden]);
        let x = Tensor::cat(vec![class, patches], 1);
        x + self.position_embedding.val().unsqueeze_dim(0)
    }
}

impl HubModule for ClipEmbeddings {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        v.param(
            &path.pp("class_embedding"),
            ParamSlot::Vector(&mut self.class_embedding),
        )?;
        v.param(
            &path.pp("patch_embedding").pp("weight"),
            ParamSlot::Rank4(&mut self.patch_embedding),
        )?;
        // A plain parameter, not `embedding`: the embedding visitor offers token tables
        // (for `modules_to_save`), not positions.
        v.param(
            &path.pp("position_embedding").pp("weight"),
            ParamSlot::Matrix(&mut self.position_embedding),
        )
    }
}

/// Non-causal multi-head self-attention (all projections with bias).
#[derive(Module, Debug)]
pub struct ClipAttention {
    /// `q_proj` `[hidden, hidden]`.
    pub q_proj: Linear,
    /// `k_proj` `[hidden, hidden]`.
    pub k_proj: Linear,
    /// `v_proj` `[hidden, hidden]`.
    pub v_proj: Linear,
    /// `out_proj` `[hidden, hidden]`.
    pub out_proj: Linear,
    /// Attention heads.
    pub num_heads: usize,
}

impl ClipAttention {
    /// Every position attends to every position (scale `head_dim^-0.5`).
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, hidden] = x.dims();
        let h = self.num_heads;
        let d = hidden / h;
        let split = |t: Tensor<3>| t.reshape([b, s, h, d]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let out = scaled_dot_product_attention(q, k, v, None, (d as f64).powf(-0.5));
        self.out_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, hidden]))
    }
}

impl HubModule for ClipAttention {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        for (name, linear) in [
            ("q_proj", &mut self.q_proj),
            ("k_proj", &mut self.k_proj),
            ("v_proj", &mut self.v_proj),
            ("out_proj", &mut self.out_proj),
        ] {
            v.linear(&path.pp(name), linear, WeightLayout::OutIn)?;
        }
        Ok(())
    }
}

/// `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct ClipMlp {
    /// `fc1` `[intermediate, hidden]`.
    pub fc1: Linear,
    /// `fc2` `[hidden, intermediate]`.
    pub fc2: Linear,
    /// The activation (`hidden_act`).
    #[module(skip)]
    pub act: Activation,
}

impl ClipMlp {
    /// The feed-forward block.
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(self.act.forward(self.fc1.forward(x)))
    }
}

impl HubModule for ClipMlp {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        v.linear(&path.pp("fc1"), &mut self.fc1, WeightLayout::OutIn)?;
        v.linear(&path.pp("fc2"), &mut self.fc2, WeightLayout::OutIn)
    }
}

/// Pre-LN encoder layer.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    /// Norm before attention.
    pub layer_norm1: LayerNorm,
    /// Self-attention.
    pub self_attn: ClipAttention,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm,
    /// Feed-forward block.
    pub mlp: ClipMlp,
}

impl ClipEncoderLayer {
    /// `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

impl HubModule for ClipEncoderLayer {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        self.layer_norm1.visit_tensors(&path.pp("layer_norm1"), v)?;
        self.self_attn.visit_tensors(&path.pp("self_attn"), v)?;
        self.layer_norm2.visit_tensors(&path.pp("layer_norm2"), v)?;
        self.mlp.visit_tensors(&path.pp("mlp"), v)
    }
}

/// CLIP's vision transformer.
#[derive(Module, Debug)]
pub struct ClipVisionModel {
    /// Patch, class and position embeddings.
    pub embeddings: ClipEmbeddings,
    /// Norm applied to the embeddings (transformers' spelling `pre_layrnorm`).
    pub pre_layrnorm: LayerNorm,
    /// Encoder layers (`encoder.layers.{i}`).
    pub layers: Vec<ClipEncoderLayer>,
    /// Norm of the pooled class token (unused by LLaVA; kept for saving).
    pub post_layernorm: LayerNorm,
    /// The configuration.
    #[module(skip)]
    pub config: ClipVisionConfig,
}

impl ClipVisionModel {
    /// The hidden states `0..=layers`: index 0 is the embeddings after `pre_layrnorm`, index
    /// `i` the output of encoder layer `i` (transformers' `hidden_states` tuple). Layers past
    /// `layers` are not run.
    ///
    /// # Shapes
    /// - pixel_values `[images, channels, image_size, image_size]` -> each
    ///   `[images, patches + 1, hidden]`
    ///
    /// # Errors
    /// [`ModelError::Input`] for pixel values of another shape or `layers` beyond the tower.
    pub fn hidden_states(
        &self,
        pixel_values: Tensor<4>,
        layers: usize,
    ) -> Result<Vec<Tensor<3>>, ModelError> {
        let cfg = &self.config;
        let [n, c, h, w] = pixel_values.dims();
        let want = [n, cfg.num_channels, cfg.image_size, cfg.image_size];
        if n == 0 || [n, c, h, w] != want {
            return Err(ModelError::Input(format!(
                "pixel_values has shape {:?}, expected [images >= 1, {}, {}, {}] (the vision \
                 tower's channels and image_size; resize and crop images with the processor)",
                [n, c, h, w],
                cfg.num_channels,
                cfg.image_size,
                cfg.image_size
            )));
        }
        if layers > self.layers.len() {
            return Err(ModelError::Input(format!(
                "hidden state {layers} requested from a vision tower of {} layers",
                self.layers.len()
            )));
        }
        let mut x = self
            .pre_layrnorm
            .forward(self.embeddings.forward(pixel_values));
        let mut states = Vec::with_capacity(layers + 1);
        states.push(x.clone());
        for layer in &self.layers[..layers] {
            x = layer.forward(x);
            states.push(x.clone());
        }
        Ok(states)
    }

    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

impl HubModule for ClipVisionModel {
    fn visit_tensors(
        &mut self,
        path: &HubPath,
        v: &mut dyn TensorVisitor,
    ) -> Result<(), ModelError> {
        self.embeddings.visit_tensors(&path.pp("embeddings"), v)?;
        self.pre_layrnorm
            .visit_tensors(&path.pp("pre_layrnorm"), v)?;
        self.layers
            .visit_tensors(&path.pp("encoder").pp("layers"), v)?;
        self.post_layernorm
            .visit_tensors(&path.pp("post_layernorm"), v)
    }
}
