use kiln::prelude::*;

#[kernel]
pub fn fill(out: &mut [u32]) {
    let lane = lane_id;
    out[0] = lane;
}

fn main() {}
