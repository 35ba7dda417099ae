//! The ranking objective's kernels ([`super::rank_kernels`]) against its float64 reference
//! ([`super::rank::train`]): whole mini-batch runs of [`HashTrainer`] with
//! [`Objective::Ranking`] — the final weights, how far they moved, and the loss history.

use super::checks::{mismatch, near_orthonormal, random_head, run_errors, wide};
use super::rank::{self, RankOptions};
use super::{HashTrainer, Objective, TrainOptions};
use crate::verify::{ensure, VerifyError};
use kiln_runtime::Device;

/// [`HashTrainer`] with the ranking objective for `epochs` epochs of `batch` pairs on two
/// heads of different sizes (uneven windows), from near-orthonormal weights, against
/// [`rank::train`] from the same weights.
fn trainer_case(
    dev: &Device,
    (dim, rbit): (usize, usize),
    batch: u32,
    epochs: u32,
    seed: u64,
) -> Result<(), VerifyError> {
    let heads = vec![
        random_head(dim, 6, 40, 300, seed),
        random_head(dim, 3, 25, 170, seed + 1),
    ];
    let rank = RankOptions {
        orthogonality: 0.5,
        ..RankOptions::default()
    };
    let mut options = TrainOptions::ranking(rbit as u32, epochs, seed);
    options.objective = Objective::Ranking(rank);
    options.batch = batch;
    let w0 = near_orthonormal(heads.len(), dim, rbit, seed);
    let trained = HashTrainer::new(dev, options)
        .and_then(|t| t.train_from(&heads, &w0, &mut |_| {}))
        .map_err(mismatch)?;
    let (want_w, want_losses) = rank::train(&heads, &wide(&w0), &options, &rank);
    let [e_w, e_dw, e_l] = run_errors(&trained, &w0, &want_w, &want_losses);
    ensure!(
        trained.losses.len() == want_losses.len(),
        "{} losses recorded, the reference has {}",
        trained.losses.len(),
        want_losses.len()
    );
    ensure!(
        e_w < 1e-5 && e_dw < 1e-4 && e_l < 1e-5,
        "ranking, after {} steps: relative error W {e_w:.2e}, W − W₀ {e_dw:.2e}, losses {e_l:.2e}",
        want_losses.len() / heads.len()
    );
    Ok(())
}

/// A ranking run at dim 40, rbit 64 (2 epochs of 32-pair windows); on a GPU also dim 128
/// with rbit 128 and 256.
pub fn hash_rank_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    trainer_case(dev, (40, 64), 32, 2, 81)?;
    if dev.is_gpu() {
        trainer_case(dev, (128, 128), 64, 3, 82)?;
        trainer_case(dev, (128, 256), 64, 2, 83)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranking_kernels_match_the_reference_on_the_emulator() {
        super::hash_rank_matches_reference(&kiln_runtime::Device::emulator()).unwrap();
    }
}
