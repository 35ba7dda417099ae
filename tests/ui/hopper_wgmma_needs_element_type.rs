use kiln::prelude::*;

#[kernel]
pub fn mm(out: &mut [f32]) {
    let tile = shared::<[bf16; 1024]>();
    let mut acc = [0.0f32; 64];
    let d = wgmma_desc(&tile[0], 16, 1024);
    wgmma(&mut acc, d, d);
    out[thread_idx().x] = acc[0];
}

fn main() {}
