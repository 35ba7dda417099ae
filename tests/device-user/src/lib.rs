//! Kernels that call `#[device]` functions defined in another crate (`kiln-algorithms`),
//! both through a `use` import and through a full path.

use kiln::prelude::*;
use kiln_algorithms::common::warp_sum;

/// Sum of each 32-element row, reduced with `kiln_algorithms::common::warp_sum` (imported).
#[kernel(example(T = f32), example(T = bf16))]
pub fn row_sums_32<T: Float>(x: &[T], out: &mut [f32], rows: u32) {
    let row = block_idx().x;
    if row < rows {
        let v = x[row * 32 + lane_id()] as f32;
        let total: f32 = warp_sum(v);
        if lane_id() == 0 {
            out[row] = total;
        }
    }
}

/// Maximum of each 32-element row, with the device function named by its full path.
#[kernel]
pub fn row_max_32(x: &[f32], out: &mut [f32], rows: u32) {
    let row = block_idx().x;
    if row < rows {
        let m: f32 = kiln_algorithms::common::warp_max(x[row * 32 + lane_id()]);
        if lane_id() == 0 {
            out[row] = m;
        }
    }
}
