use kiln::prelude::*;

#[kernel]
pub fn stage(x: &[f32], out: &mut [f32], n: u32) {
    let i = thread_idx().x;
    if i < n {
        let tile = shared::<[f32; 256]>();
        tile[i] = x[i];
        out[i] = tile[i];
    }
}

fn main() {}
