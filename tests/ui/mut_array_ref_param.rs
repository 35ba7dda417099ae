use kiln::prelude::*;

#[device]
pub fn clear(mut values: &mut [f32; 4]) {
    values[0] = 0.0;
}

fn main() {}
