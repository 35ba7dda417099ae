//! Shared memory: tiled transpose, histogram with atomics, dynamic shared memory, and an
//! asynchronous global-to-shared copy.

use crate::prelude::*;

/// Transposes a `rows × cols` matrix through a padded shared tile (no bank conflicts).
#[kernel(example(TILE = 32))]
pub fn transpose<const TILE: u32>(input: &[f32], out: &mut [f32], rows: u32, cols: u32) {
    let tile = shared::<[[f32; TILE + 1]; TILE]>();
    let x = block_idx().x * TILE + thread_idx().x;
    let y = block_idx().y * TILE + thread_idx().y;
    if x < cols && y < rows {
        tile[thread_idx().y][thread_idx().x] = input[y * cols + x];
    }
    sync_threads();
    let tx = block_idx().y * TILE + thread_idx().x;
    let ty = block_idx().x * TILE + thread_idx().y;
    if tx < rows && ty < cols {
        out[ty * rows + tx] = tile[thread_idx().x][thread_idx().y];
    }
}

/// Histogram of `values` into `bins`: per-block counts in shared memory, then one global
/// atomic per bin and block.
#[kernel(threads = 256, example(BINS = 256))]
pub fn histogram<const BINS: u32>(values: &[u32], bins: &mut [u32], n: u32) {
    let local = shared::<[u32; BINS]>();
    for b in (thread_idx().x..BINS).step_by(block_dim().x) {
        local[b] = 0;
    }
    sync_threads();
    let stride = grid_dim().x * block_dim().x;
    for i in (block_idx().x * block_dim().x + thread_idx().x..n).step_by(stride) {
        atomic_add(&mut local[values[i] % BINS], 1);
    }
    sync_threads();
    for b in (thread_idx().x..BINS).step_by(block_dim().x) {
        let count = local[b];
        if count > 0 {
            atomic_add(&mut bins[b], count);
        }
    }
}

/// Reverses each block-sized chunk of `x` through dynamic shared memory.
#[kernel]
pub fn reverse_chunks(x: &[f32], out: &mut [f32], n: u32) {
    let buf = dyn_shared::<f32>();
    let t = thread_idx().x;
    let base = block_idx().x * block_dim().x;
    let mut v = 0.0f32;
    if base + t < n {
        v = x[base + t];
    }
    buf[t] = v;
    sync_threads();
    let src = block_dim().x - 1 - t;
    if base + t < n && base + src < n {
        out[base + t] = buf[src];
    }
}

/// Stages `TILE` floats per block in shared memory with `cp.async` (16 bytes per copy),
/// waits, then writes them scaled. `n` must be a multiple of 4.
#[kernel(example(TILE = 1024))]
pub fn async_stage<const TILE: u32>(x: &[f32], out: &mut [f32], scale: f32, n: u32) {
    let tile = shared::<[f32; TILE]>();
    let base = block_idx().x * TILE;
    for j in (thread_idx().x * 4..TILE).step_by(block_dim().x * 4) {
        if base + j + 4 <= n {
            cp_async(&mut tile[j], &x[base + j]);
        }
    }
    cp_async_commit();
    cp_async_wait::<0>();
    sync_threads();
    for j in (thread_idx().x..TILE).step_by(block_dim().x) {
        if base + j < n {
            out[base + j] = tile[j] * scale;
        }
    }
}
