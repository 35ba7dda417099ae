//! Tensor cores: warp-level matrix fragments loaded with `ldmatrix` and multiplied with
//! `mma.sync` m16n8k16 (f16/bf16 inputs, f32 accumulation), one warp per block.

use crate::prelude::*;

/// `C = A·B` for one 16×16 A tile and one 16×8 B tile (both row-major), by one warp: the
/// tiles go through shared memory, A is loaded with `ldmatrix_x4`, B (stored k-major) with
/// `ldmatrix_x2_trans`, one `mma` (through the device function `mma_step`) multiplies them, and
/// each lane stores its four results.
#[kernel(threads = 32, example(T = bf16), example(T = f16))]
pub fn mma_tile_16x8x16<T: Float>(a: &[T], b: &[T], c: &mut [f32]) {
    let sa = shared::<[[T; 16]; 16]>();
    let sb = shared::<[[T; 8]; 16]>();
    let lane = lane_id();
    for i in (lane..256).step_by(32) {
        sa[i / 16][i % 16] = a[i];
    }
    for i in (lane..128).step_by(32) {
        sb[i / 8][i % 8] = b[i];
    }
    sync_threads();
    // lanes 0-15 address rows 0-15 of the left 8 columns, lanes 16-31 those of the right 8
    let fa = ldmatrix_x4::<T>(&sa[lane % 16][lane / 16 * 8]);
    // lanes 0-15 address the 16 rows (k) of B; each lane receives a column (n) pair
    let fb = ldmatrix_x2_trans::<T>(&sb[lane % 16][0]);
    let acc: FragC = mma_step(fa, fb, frag_c_zero());
    // C fragment: rows lane/4 and lane/4 + 8, columns 2·(lane%4) and 2·(lane%4) + 1
    let row = lane / 4;
    let col = lane % 4 * 2;
    c[row * 8 + col] = acc[0];
    c[row * 8 + col + 1] = acc[1];
    c[(row + 8) * 8 + col] = acc[2];
    c[(row + 8) * 8 + col + 1] = acc[3];
}

/// What every lane holds: after `ldmatrix_x4` of the 16×16 tile `a` (4 registers per lane
/// into `a_regs[lane * 4 ..]`), after `ldmatrix_x2_trans` of the 16×8 tile `b` (2 into
/// `b_regs[lane * 2 ..]`), and after `mma` of the two plus an accumulator whose register
/// `i` starts at `lane + i / 4` (4 into `c_vals[lane * 4 ..]`). It also round-trips the
/// accumulator through `pack2`/`unpack_lo`/`unpack_hi` into a `FragA` (`p_regs`), as
/// softmax probabilities become an A operand.
#[kernel(threads = 32, example(T = bf16), example(T = f16))]
pub fn fragment_layout<T: Float>(
    a: &[T],
    b: &[T],
    a_regs: &mut [u32],
    b_regs: &mut [u32],
    c_vals: &mut [f32],
    p_regs: &mut [u32],
) {
    let sa = shared::<[[T; 16]; 16]>();
    let sb = shared::<[[T; 8]; 16]>();
    let lane = lane_id();
    for i in (lane..256).step_by(32) {
        sa[i / 16][i % 16] = a[i];
    }
    for i in (lane..128).step_by(32) {
        sb[i / 8][i % 8] = b[i];
    }
    sync_threads();
    let fa: FragA<T> = ldmatrix_x4(&sa[lane % 16][lane / 16 * 8]);
    let fb = ldmatrix_x2_trans::<T>(&sb[lane % 16][0]);
    let mut acc = frag_c_zero();
    for i in 0..4u32 {
        acc[i] = lane as f32 + i as f32 * 0.25;
    }
    acc = mma(fa, fb, acc);
    for i in 0..4u32 {
        a_regs[lane * 4 + i] = fa[i];
        c_vals[lane * 4 + i] = acc[i];
    }
    for i in 0..2u32 {
        b_regs[lane * 2 + i] = fb[i];
    }
    let mut p = frag_a_zero::<T>();
    p[0] = pack2::<T>(acc[0], acc[1]);
    p[1] = pack2::<T>(acc[2], acc[3]);
    let lo = unpack_lo::<T>(p[1]) as f32;
    let hi = unpack_hi::<T>(p[0]) as f32;
    p[2] = pack2::<T>(hi, lo);
    for i in 0..4u32 {
        p_regs[lane * 4 + i] = p[i];
    }
}

/// Tensor-core rate: each warp keeps four independent accumulators busy with `iters` rounds of
/// `mma` on register-resident fragments (A all ones, B all halves), then each lane writes the
/// sum of its four accumulators. With those inputs every output is exactly 32·iters.
#[kernel(example(T = bf16), example(T = f16))]
pub fn mma_throughput<T: Float>(out: &mut [f32], iters: u32) {
    let mut a = frag_a_zero::<T>();
    let mut b = frag_b_zero::<T>();
    let ones = pack2::<T>(1.0, 1.0);
    let halves = pack2::<T>(0.5, 0.5);
    for r in 0..4u32 {
        a[r] = ones;
    }
    for r in 0..2u32 {
        b[r] = halves;
    }
    let mut c0 = frag_c_zero();
    let mut c1 = frag_c_zero();
    let mut c2 = frag_c_zero();
    let mut c3 = frag_c_zero();
    for _ in 0..iters {
        c0 = mma(a, b, c0);
        c1 = mma(a, b, c1);
        c2 = mma(a, b, c2);
        c3 = mma(a, b, c3);
    }
    let i = (block_idx().x * block_dim().x + thread_idx().x) * 4;
    for k in 0..4u32 {
        out[i + k] = c0[k] + c1[k] + c2[k] + c3[k];
    }
}

/// One tensor-core step, `acc + a·b`: a device function that takes and returns fragments
/// (generic over the input type, inlined into each kernel that calls it).
#[device]
pub fn mma_step<T: Float>(a: FragA<T>, b: FragB<T>, acc: FragC) -> FragC {
    mma(a, b, acc)
}

/// Stores a warp's accumulator tile: rows `row0 + lane/4` and `+8`, columns
/// `col0 + 2·(lane%4)` and `+1` of the row-major `c` with `n` columns.
#[device]
pub fn store_c(acc: FragC, c: &mut [f32], row0: u32, col0: u32, n: u32) {
    let lane = lane_id();
    let row = row0 + lane / 4;
    let col = col0 + lane % 4 * 2;
    c[row * n + col] = acc[0];
    c[row * n + col + 1] = acc[1];
    c[(row + 8) * n + col] = acc[2];
    c[(row + 8) * n + col + 1] = acc[3];
}

/// `C = A·B` (A `m×k`, B `k×n`, both row-major `T`; C row-major f32) on tensor cores: each
/// block of 4 warps computes a 32×64 tile of C, each warp a 16×32 part of it with four
/// accumulators. Tiles of 64 along `k` are staged in shared memory with 16-byte `cp_async`
/// copies (rows padded by 8 elements, so every `ldmatrix` row stays 16-byte aligned and rows
/// fall in different banks), then consumed in four 16-deep `mma` steps. `m`, `n` and `k`
/// must be multiples of 32, 64 and 64; the grid is (n / 64, m / 32) blocks of 128 threads.
#[kernel(threads = 128, example(T = bf16), example(T = f16))]
pub fn gemm_tiled<T: Float>(a: &[T], b: &[T], c: &mut [f32], m: u32, n: u32, k: u32) {
    let sa = shared::<[[T; 72]; 32]>();
    let sb = shared::<[[T; 72]; 64]>();
    let t = thread_idx().x;
    let lane = lane_id();
    let warp = warp_id();
    let row0 = block_idx().y * 32;
    let col0 = block_idx().x * 64;
    let wr = warp / 2 * 16;
    let wc = warp % 2 * 32;
    let mut c0 = frag_c_zero();
    let mut c1 = frag_c_zero();
    let mut c2 = frag_c_zero();
    let mut c3 = frag_c_zero();
    for k0 in (0..k).step_by(64) {
        // 32×64 of A and 64×64 of B, 8 elements (16 bytes) per copy
        for v in (t..256).step_by(128) {
            cp_async(
                &mut sa[v / 8][v % 8 * 8],
                &a[(row0 + v / 8) * k + k0 + v % 8 * 8],
            );
        }
        for v in (t..512).step_by(128) {
            cp_async(
                &mut sb[v / 8][v % 8 * 8],
                &b[(k0 + v / 8) * n + col0 + v % 8 * 8],
            );
        }
        cp_async_commit();
        cp_async_wait_all();
        sync_threads();
        for kk in 0..4u32 {
            let fa = ldmatrix_x4::<T>(&sa[wr + lane % 16][kk * 16 + lane / 16 * 8]);
            let r = kk * 16 + lane % 16;
            c0 = mma_step(fa, ldmatrix_x2_trans::<T>(&sb[r][wc]), c0);
            c1 = mma_step(fa, ldmatrix_x2_trans::<T>(&sb[r][wc + 8]), c1);
            c2 = mma_step(fa, ldmatrix_x2_trans::<T>(&sb[r][wc + 16]), c2);
            c3 = mma_step(fa, ldmatrix_x2_trans::<T>(&sb[r][wc + 24]), c3);
        }
        sync_threads();
    }
    store_c(c0, c, row0 + wr, col0 + wc, n);
    store_c(c1, c, row0 + wr, col0 + wc + 8, n);
    store_c(c2, c, row0 + wr, col0 + wc + 16, n);
    store_c(c3, c, row0 + wr, col0 + wc + 24, n);
}
