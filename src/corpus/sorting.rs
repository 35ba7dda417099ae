//! Sorting in shared memory: a block-wide bitonic sort.

use crate::prelude::*;

/// Sorts each chunk of `N` keys (N a power of two, one thread per key) ascending with a
/// bitonic network in shared memory.
#[kernel(example(N = 1024))]
pub fn bitonic_sort<const N: u32>(keys: &mut [u32], n: u32) {
    let buf = shared::<[u32; N]>();
    let t = thread_idx().x;
    let base = block_idx().x * N;
    buf[t] = if base + t < n {
        keys[base + t]
    } else {
        u32::MAX
    };
    sync_threads();
    let mut size = 2u32;
    while size <= N {
        let mut stride = size / 2;
        while stride > 0 {
            let partner = t ^ stride;
            if partner > t {
                let ascending = (t & size) == 0;
                let a = buf[t];
                let b = buf[partner];
                if (a > b) == ascending {
                    buf[t] = b;
                    buf[partner] = a;
                }
            }
            sync_threads();
            stride /= 2;
        }
        size *= 2;
    }
    if base + t < n {
        keys[base + t] = buf[t];
    }
}
