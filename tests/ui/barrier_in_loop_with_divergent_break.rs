use kiln::prelude::*;

#[kernel]
pub fn k(out: &mut [f32]) {
    let mut j = 0u32;
    loop {
        sync_threads();
        if thread_idx().x == j {
            break;
        }
        j += 1;
    }
    out[0] = 1.0;
}

fn main() {}
