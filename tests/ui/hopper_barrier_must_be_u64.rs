use kiln::prelude::*;

#[kernel]
pub fn ring(out: &mut [f32]) {
    let bar = shared::<[u32; 4]>();
    mbarrier_init(&mut bar[0], 1);
    out[thread_idx().x] = 0.0;
}

fn main() {}
