use kiln::prelude::*;

#[kernel]
pub fn debug(x: &[f32]) {
    let i = thread_idx().x;
    println!("{}", x[i]);
}

fn main() {}
