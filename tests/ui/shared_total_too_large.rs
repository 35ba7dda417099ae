use kiln::prelude::*;

#[kernel]
pub fn k(out: &mut [f32]) {
    let a = shared::<[f32; 8192]>();
    let b = shared::<[f32; 8192]>();
    a[0] = 1.0;
    b[0] = 2.0;
    sync_threads();
    out[0] = a[0] + b[0];
}

fn main() {}
