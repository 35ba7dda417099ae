use kiln::prelude::*;

#[kernel]
pub fn read_acc(out: &mut [f32]) {
    let acc = frag_c_zero();
    out[lane_id()] = acc[4];
}

fn main() {}
