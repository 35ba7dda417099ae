use kiln::prelude::*;

#[kernel]
pub fn copy(x: &[f32], out: &mut [f32]) {
    let v = [x.vload(0); 2];
    out.vstore(0, v[0]);
}

fn main() {}
