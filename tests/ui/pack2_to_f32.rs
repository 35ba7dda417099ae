use kiln::prelude::*;

#[kernel]
pub fn pack_into_f32(x: &[f32], out: &mut [u32]) {
    let i = thread_idx().x;
    out[i] = pack2::<f32>(x[2 * i], x[2 * i + 1]);
}

fn main() {}
