use kiln::prelude::*;

#[kernel]
pub fn stage(out: &mut [f32]) {
    let tile = shared::<[f32; 0]>();
    out[thread_idx().x] = tile[0];
}

fn main() {}
