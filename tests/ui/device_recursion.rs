use kiln::prelude::*;

#[device]
pub fn factorial(n: u32) -> u32 {
    if n == 0 {
        return 1;
    }
    let rest: u32 = factorial(n - 1);
    n * rest
}

fn main() {}
