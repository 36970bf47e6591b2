//! Checks and defaults of a [`ForwardInput`] shared by every architecture, so that a bad input
//! is a [`ModelError::Input`] whatever the model, never a panic inside a kernel.

use burn::tensor::{Int, Tensor};

use crate::attention::{MaskSpec, attention_bias};
use crate::error::ModelError;
use crate::model::ForwardInput;

/// Checks the input of a forward pass after `past` cached positions and returns
/// `[batch, seq]`: non-empty `input_ids` inside `0..vocab_size`, and `position_ids`,
/// `attention_mask` (`[batch, past + seq]`) and `segment_ids` of matching shapes.
///
/// # Errors
/// [`ModelError::Input`] naming the offending tensor.
pub fn check_input(
    input: &ForwardInput,
    vocab_size: usize,
    past: usize,
) -> Result<[usize; 2], ModelError> {
    let [b, s] = input.input_ids.dims();
    if s == 0 || b == 0 {
        return Err(ModelError::Input("empty input_ids".into()));
    }
    check_ids(&input.input_ids, vocab_size, "input_ids")?;
    let expect = |what: &str, dims: [usize; 2], want: [usize; 2]| {
        if dims == want {
            Ok(())
        } else {
            Err(ModelError::Input(format!(
                "{what} has shape {dims:?}, expected {want:?}"
            )))
        }
    };
    if let Some(p) = &input.position_ids {
        expect("position_ids", p.dims(), [b, s])?;
    }
    if let Some(m) = &input.attention_mask {
        expect(
            "attention_mask ([batch, past + seq])",
            m.dims(),
            [b, past + s],
        )?;
    }
    if let Some(seg) = &input.segment_ids {
        expect("segment_ids", seg.dims(), [b, s])?;
    }
    Ok([b, s])
}

/// The given `position_ids`, or `past + 0..seq` for every row (`transformers`' default).
pub fn positions_or_default(input: &ForwardInput, past: usize) -> Tensor<2, Int> {
    let [b, s] = input.input_ids.dims();
    match &input.position_ids {
        Some(p) => p.clone(),
        None => Tensor::<1, Int>::arange(past as i64..(past + s) as i64, &input.input_ids.device())
            .reshape([1, s])
            .expand([b, s]),
    }
}

/// The additive attention bias of a forward pass with an optional sliding window, or `None`
/// when nothing can be masked (one new token, no padding mask, no segments, window wider than
/// the keys).
pub fn mask_bias(
    input: &ForwardInput,
    past: usize,
    sliding_window: Option<usize>,
) -> Result<Option<Tensor<4>>, ModelError> {
    let [batch, seq] = input.input_ids.dims();
    let needs_mask = seq > 1
        || input.attention_mask.is_some()
        || input.segment_ids.is_some()
        || sliding_window.is_some_and(|w| w < past + seq);
    if !needs_mask {
        return Ok(None);
    }
    let spec = MaskSpec {
        attention_mask: input.attention_mask.as_ref(),
        segment_ids: input.segment_ids.as_ref(),
        sliding_window,
    };
    attention_bias(batch, seq, past, &spec, &input.input_ids.device()).map(Some)
}

/// Checks that every id lies in `0..limit` (one small device read).
///
/// # Errors
/// [`ModelError::Input`] with the range found.
pub fn check_ids(ids: &Tensor<2, Int>, limit: usize, what: &str) -> Result<(), ModelError> {
    if ids.dims().iter().product::<usize>() == 0 {
        return Ok(());
    }
    let bounds = Tensor::cat(vec![ids.clone().min(), ids.clone().max()], 0)
        .into_data()
        .convert::<i64>();
    let (min, max) = match bounds.as_slice::<i64>() {
        Ok(&[min, max]) => (min, max),
        _ => return Err(ModelError::Input(format!("{what}: could not read the ids"))),
    };
    if min < 0 || max >= limit as i64 {
        return Err(ModelError::Input(format!(
            "{what} must lie in 0..{limit}, found values in {min}..={max}"
        )));
    }
    Ok(())
}
