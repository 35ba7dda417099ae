//! The README's example, compiled by `cargo test` so that it stays true:
//! `cargo run --release --example quickstart` (GPU when present, else the CPU emulator).

use kiln::prelude::*;

/// Similarity of one query code to every key code: 32·WORDS minus the Hamming distance.
#[kernel(example(WORDS = 4))]
pub fn hamming_scores<const WORDS: u32>(q: &[u32], keys: &[u32], out: &mut [u16], n: u32) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    if i < n {
        let mut dist = 0u32;
        for w in 0..WORDS {
            dist += (q[w] ^ keys[i * WORDS + w]).count_ones();
        }
        out[i] = (32 * WORDS - dist) as u16;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = 10_000usize;
    let q_host = vec![0x0f0f_0f0fu32; 4];
    let keys_host: Vec<u32> = (0..n as u32 * 4)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();

    let device = Device::from_env()?; // GPU 0, or the CPU emulator
    let kernel = hamming_scores::spec().words(4).build(&device)?;
    let (q, keys) = (device.upload(&q_host)?, device.upload(&keys_host)?);
    let mut out = device.zeros::<u16>(n)?;
    hamming_scores::launch(
        &kernel,
        &LaunchConfig::for_elements(n as u32, 256),
        &q,
        &keys,
        &mut out,
        n as u32,
    )?;
    let scores = device.download(&out)?;

    let first: u32 = (0..4)
        .map(|w| (q_host[w] ^ keys_host[w]).count_ones())
        .sum();
    assert_eq!(scores[0] as u32, 128 - first);
    println!(
        "{} scores on the {}; first = {}",
        scores.len(),
        device.name(),
        scores[0]
    );
    println!(
        "{}",
        hamming_scores::spec().words(4).cuda(Arch::SM90)?.source
    );
    Ok(())
}
