use kiln::prelude::*;

#[kernel]
pub fn search(x: &[u32], out: &mut [u32], n: u32) {
    'rows: for r in 0..n {
        for c in 0..n {
            if x[r * n + c] == 0 {
                out[0] = r;
                break 'rows;
            }
        }
    }
}

fn main() {}
