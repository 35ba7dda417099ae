use kiln::prelude::*;

#[kernel]
pub fn accumulate(x: &[f16], total: &mut [f16]) {
    atomic_add(&mut total[0], x[thread_idx().x]);
}

fn main() {}
