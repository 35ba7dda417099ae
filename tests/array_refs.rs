//! Device functions that take arrays by reference (`&mut [E; N]`, `&Shared<[E; N]>`, rows
//! `&mut tiles[i]`, arrays of fragments): what they compute on the test device, and the
//! errors specialisation reports when an argument does not fit the parameter.

mod common;

use kiln::codegen::spec::{specialize, Bindings};
use kiln::codegen::Arch;
use kiln::prelude::*;

/// Adds `v` to every element of a register array whose length the callee infers.
#[device]
pub fn add_all<const N: u32>(values: &mut [f32; N], v: f32) {
    for i in 0..N {
        values[i] += v;
    }
}

/// Sum of row `r` of a shared tile.
#[device]
pub fn row_sum<const R: u32, const C: u32>(tile: &Shared<[[f32; C]; R]>, r: u32) -> f32 {
    let mut s = 0.0f32;
    for c in 0..C {
        s += tile[r][c];
    }
    s
}

/// Fills one row (a shared sub-array) with `v`.
#[device]
pub fn fill_row<const C: u32>(row: &mut Shared<[f32; C]>, v: f32) {
    for c in 0..C {
        row[c] = v;
    }
}

/// Sets register `r` of every accumulator of an array of fragments.
#[device]
pub fn mark<const N: u32>(acc: &mut [FragC; N], r: u32, v: f32) {
    for j in 0..N {
        acc[j][r] = v + j as f32;
    }
}

/// One warp: a register array through `add_all`, a shared tile filled row by row through
/// `fill_row(&mut tile[r])` and summed through `row_sum`, and an array of fragments through
/// `mark`. Lane `l` writes 8 values at `out[8·l ..]`.
#[kernel(threads = 32)]
pub fn array_refs_demo(out: &mut [f32]) {
    let tile = shared::<[[f32; 8]; 4]>();
    let lane = lane_id();
    let mut regs = [1.0f32; 3];
    add_all(&mut regs, lane as f32);
    if lane < 4 {
        fill_row(&mut tile[lane], lane as f32 + 0.5);
    }
    sync_threads();
    let s: f32 = row_sum(&tile, lane % 4);
    let mut acc = [frag_c_zero(); 2];
    mark(&mut acc, 1u32, 10.0f32);
    let o = lane * 8;
    out[o] = regs[0];
    out[o + 1] = regs[1];
    out[o + 2] = regs[2];
    out[o + 3] = s;
    out[o + 4] = acc[0][1];
    out[o + 5] = acc[1][1];
    out[o + 6] = acc[1][0];
    out[o + 7] = acc[0][3];
}

/// Passes a register array where the callee wants a shared one.
#[kernel(threads = 32)]
pub fn register_for_shared(out: &mut [f32]) {
    let regs = [[1.0f32; 8]; 4];
    let s: f32 = row_sum(&regs, 0u32);
    out[0] = s;
}

/// Passes a read-only reference where the callee writes.
#[kernel(threads = 32)]
pub fn shared_ref_for_mut(out: &mut [f32]) {
    let mut regs = [1.0f32; 3];
    let view = [2.0f32; 3];
    regs[0] = view[0];
    add_all(&regs, 1.0f32);
    out[0] = regs[0];
}

#[test]
fn array_references_compute_what_rust_would() {
    let Some(dev) = common::device() else { return };
    let k = array_refs_demo::spec().build(&dev).expect("builds");
    let mut out = dev.upload(&vec![f32::NAN; 32 * 8]).expect("upload");
    array_refs_demo::launch(&k, &LaunchConfig::linear(1, 32), &mut out).expect("runs");
    let got = dev.download(&out).expect("download");
    for lane in 0..32usize {
        let l = lane as f32;
        let row = (lane % 4) as f32 + 0.5;
        let want = [1.0 + l, 1.0 + l, 1.0 + l, 8.0 * row, 10.0, 11.0, 0.0, 0.0];
        assert_eq!(&got[lane * 8..lane * 8 + 8], &want, "lane {lane}");
    }
}

#[test]
fn a_register_array_is_refused_where_a_shared_one_is_expected() {
    let err = specialize(
        &__kiln_fn_register_for_shared,
        &Bindings::default(),
        Arch::SM90,
    )
    .expect_err("a register array is not a shared tile");
    let text = err.to_string();
    assert!(text.contains("argument 1 of `row_sum`"), "{text}");
}

#[test]
fn a_read_only_reference_is_refused_where_the_callee_writes() {
    let err = specialize(
        &__kiln_fn_shared_ref_for_mut,
        &Bindings::default(),
        Arch::SM90,
    )
    .expect_err("`&` is not `&mut`");
    let text = err.to_string();
    assert!(text.contains("argument 1 of `add_all`"), "{text}");
}
