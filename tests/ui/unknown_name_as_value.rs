use kiln::prelude::*;

#[kernel]
pub fn fill(out: &mut [u32]) {
    let i = thread_idx().x;
    out[i] = global_thread_id;
}

fn main() {}
