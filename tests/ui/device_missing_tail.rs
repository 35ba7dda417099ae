use kiln::prelude::*;

#[device]
pub fn square(x: f32) -> f32 {
    let y = x * x;
}

fn main() {}
