use kiln::prelude::*;

#[kernel]
pub fn count(hits: &[u32]) {
    atomic_add(&mut hits[0], 1);
}

fn main() {}
