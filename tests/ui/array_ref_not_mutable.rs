use kiln::prelude::*;

#[device]
pub fn clear(values: &mut [f32; 4]) {
    values[0] = 0.0;
}

#[kernel]
pub fn use_clear(out: &mut [f32]) {
    let values = [1.0f32; 4];
    clear(&mut values);
    out[0] = values[0];
}

fn main() {}
