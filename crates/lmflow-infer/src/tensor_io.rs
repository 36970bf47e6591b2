//! Moving token ids and score rows between the host and the device.

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};

use crate::error::{InferError, Result};

/// `[rows, cols]` ids as an int tensor.
pub fn ids_tensor(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let cols = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), cols]), device)
}

/// Reads a `[rows, cols]` float tensor back as f32 rows (casting half precision first).
pub fn float_rows(t: Tensor<2>, name: &'static str) -> Result<Vec<Vec<f32>>> {
    let [rows, cols] = t.dims();
    let data = t.cast(FloatDType::F32).into_data();
    let flat = data
        .try_into_vec_as::<f32>()
        .map_err(|e| InferError::Tensor {
            name,
            reason: format!("{e:?}"),
        })?;
    if flat.len() != rows * cols {
        return Err(InferError::Tensor {
            name,
            reason: format!("expected {} values, read {}", rows * cols, flat.len()),
        });
    }
    Ok(flat.chunks(cols.max(1)).map(<[f32]>::to_vec).collect())
}

/// Reads an int tensor back as u32 values (row-major).
pub fn int_values(t: Tensor<2, Int>, name: &'static str) -> Result<Vec<u32>> {
    let data = t.into_data();
    let flat = data
        .try_into_vec_as::<i64>()
        .map_err(|e| InferError::Tensor {
            name,
            reason: format!("{e:?}"),
        })?;
    Ok(flat.into_iter().map(|v| v as u32).collect())
}
