//! Element-wise kernels: indices, grid-stride loops, casts, bit intrinsics, vector copies.

use crate::prelude::*;

/// `out[i] = a[i] + b[i]` for any float type.
#[kernel(threads = 256, example(T = f32), example(T = bf16), example(T = f16))]
pub fn vector_add<T: Float>(a: &[T], b: &[T], out: &mut [T], n: u32) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    if i < n {
        out[i] = a[i] + b[i];
    }
}

/// `y = alpha * x + y` with a grid-stride loop, so any grid covers any length.
#[kernel]
pub fn saxpy(alpha: f32, x: &[f32], y: &mut [f32], n: u32) {
    let start = block_idx().x * block_dim().x + thread_idx().x;
    let stride = grid_dim().x * block_dim().x;
    for i in (start..n).step_by(stride) {
        y[i] = alpha.mul_add(x[i], y[i]);
    }
}

/// Similarity of one query code to every key code: `32·WORDS` minus the Hamming distance.
#[kernel(example(WORDS = 4), example(WORDS = 8))]
pub fn hamming_scores<const WORDS: u32>(q: &[u32], keys: &[u32], out: &mut [u16], n: u32) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    if i < n {
        let mut dist = 0u32;
        for w in 0..WORDS {
            dist += (q[w] ^ keys[i * WORDS + w]).count_ones();
        }
        out[i] = (32 * WORDS - dist) as u16;
    }
}

/// Copies 16 bytes per thread with vector loads and stores, scaling each lane; a scalar
/// loop handles the tail that does not fill a vector.
#[kernel(example(T = f32), example(T = bf16))]
pub fn vec_scale<T: Float>(x: &[T], out: &mut [T], scale: T, n: u32) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    let lanes = 16 / size_of::<T>();
    let first = i * lanes;
    if first + lanes <= n {
        let mut v = x.vload(first);
        for k in 0..v.lanes() {
            v[k] = v[k] * scale;
        }
        out.vstore(first, v);
    } else if first < n {
        for j in first..n {
            out[j] = x[j] * scale;
        }
    }
}

/// Bit manipulation and conversions between every element type, written to `out` per element.
#[kernel]
pub fn bits_and_casts(
    x: &[f32],
    words: &[u64],
    out_u32: &mut [u32],
    out_f16: &mut [f16],
    out_bf16: &mut [bf16],
    out_i64: &mut [i64],
    n: u32,
) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    if i >= n {
        return;
    }
    let v = x[i];
    let bits = v.to_bits();
    let w = words[i];
    let small = (bits & 0xff) as u8;
    let medium = (bits >> 16) as u16;
    let mut acc = bits.leading_zeros() + bits.trailing_zeros() + bits.reverse_bits().count_ones();
    acc += w.count_ones() + w.leading_zeros() + small.count_ones() + medium.trailing_zeros();
    acc = acc.max(3).min(1000).div_ceil(2);
    let back = f32::from_bits(bits);
    let h = back as f16;
    let b = (h as f32 * 2.0) as bf16;
    out_f16[i] = if v.is_nan() { f16::NAN } else { h };
    out_bf16[i] = b;
    out_u32[i] = acc.wrapping_mul(2654435761) ^ (medium as u32);
    let signed = (v * 1000.0) as i64 - i64::MAX / 4;
    out_i64[i] = signed.abs() + (w >> 60) as i64;
}

/// Looks for the first element of each row above a threshold with `loop`, `break` and
/// `continue`; writes its index or `u32::MAX`.
#[kernel]
pub fn first_above(x: &[f32], out: &mut [u32], cols: u32, rows: u32, threshold: f32) {
    let row = block_idx().x * block_dim().x + thread_idx().x;
    if row >= rows {
        return;
    }
    let mut found = u32::MAX;
    let mut j = 0u32;
    loop {
        if j >= cols {
            break;
        }
        let v = x[row * cols + j];
        j += 1;
        if v.is_nan() || v <= threshold {
            continue;
        }
        found = j - 1;
        break;
    }
    out[row] = found;
}

/// Per-thread dot products of `K`-wide rows kept in a register array.
#[kernel(example(K = 64))]
pub fn row_dot_registers<const K: u32>(a: &[f32], b: &[f32], out: &mut [f32], rows: u32) {
    let row = block_idx().x * block_dim().x + thread_idx().x;
    if row < rows {
        let mut partial = [0.0f32; 4];
        for k in 0..K {
            let lane = k % 4;
            partial[lane] += a[row * K + k] * b[k];
        }
        let mut total = 0.0f32;
        for p in 0..4u32 {
            total += partial[p];
        }
        out[row] = total;
    }
}
