use kiln::prelude::*;

#[kernel]
pub fn copy<T>(x: &[T], out: &mut [T])
where
    T: Float,
{
    out[thread_idx().x] = x[thread_idx().x];
}

fn main() {}
