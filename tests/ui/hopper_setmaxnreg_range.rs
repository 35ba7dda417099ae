use kiln::prelude::*;

#[kernel]
pub fn roles(out: &mut [f32]) {
    setmaxnreg_inc::<250>();
    out[thread_idx().x] = 0.0;
}

fn main() {}
