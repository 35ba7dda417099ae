use kiln::prelude::*;

#[device]
pub fn poke<T: Float, const N: u32>(tile: &Shared<[T; N]>) {
    tile[0] = 0.0;
}

fn main() {}
