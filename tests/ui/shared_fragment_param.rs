use kiln::prelude::*;

#[device]
pub fn clear(acc: &mut Shared<[FragC; 4]>) {
    acc[0] = frag_c_zero();
}

fn main() {}
