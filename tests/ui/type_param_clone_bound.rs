use kiln::prelude::*;

#[kernel]
pub fn copy<T: Clone>(x: &[T], out: &mut [T]) {
    out[thread_idx().x] = x[thread_idx().x];
}

fn main() {}
