//! What several pipelines share: warp-level reductions (device functions) and the K/V length
//! check of their caches (host).

use kiln::prelude::*;
use kiln_dsl::device;

/// Sum of `v` over the 32 lanes of a warp; every lane receives the total.
#[device]
pub fn warp_sum<T: Float>(v: T) -> T {
    let mut acc = v;
    let mut offset = 16u32;
    while offset > 0 {
        acc = acc + shfl_xor_sync(0xffff_ffff, acc, offset);
        offset = offset / 2;
    }
    acc
}

/// Maximum of `v` over the 32 lanes of a warp; every lane receives it.
#[device]
pub fn warp_max<T: Float>(v: T) -> T {
    let mut acc = v;
    let mut offset = 16u32;
    while offset > 0 {
        acc = acc.max(shfl_xor_sync(0xffff_ffff, acc, offset));
        offset = offset / 2;
    }
    acc
}

/// Sum of a `u32` over the 32 lanes of a warp; every lane receives the total.
#[device]
pub fn warp_sum_u32(v: u32) -> u32 {
    let mut acc = v;
    for k in 0..5u32 {
        acc += shfl_xor_sync(0xffff_ffff, acc, 1u32 << k);
    }
    acc
}

/// Host side, for the caches' error messages: `Err` saying what is wrong unless both the keys
/// (`k_len` elements) and the values (`v_len`) hold the `want` elements that `layout` (e.g.
/// `[batch, kv_heads, dim]`) needs.
pub fn check_kv_len(
    what: &str,
    (k_len, v_len): (usize, usize),
    want: usize,
    layout: &str,
) -> Result<(), String> {
    if k_len == want && v_len == want {
        Ok(())
    } else {
        Err(format!(
            "{what} K/V hold {k_len} / {v_len} elements, {layout} needs {want}"
        ))
    }
}
