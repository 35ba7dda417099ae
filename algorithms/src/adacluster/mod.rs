//! AdaCluster: clustered sparse attention for the prefill of video diffusion transformers.
//! Queries are clustered by angle (spherical k-means), keys by Euclidean distance; each
//! query cluster scores the key clusters by `q̄·k̄/√D + ln n_k`, keeps the most probable
//! until their softmax mass reaches top-p, and attends only to their keys. What a user calls
//! is [`layer::AdaClusterAttention`]: one DiT attention layer whose cluster counts and
//! centroids persist between calls (denoising steps).
//!
//! # Design choices
//!
//! - **One iteration, one sort.** A k-means iteration is [`kmeans::kmeans_assign`] (tensor
//!   cores, distance matrix never stored), a stable counting sort by cluster
//!   ([`kmeans::cluster_count`], [`kmeans::cluster_offsets`], [`kmeans::cluster_scatter`]) and
//!   [`kmeans::cluster_update`], which sums each cluster's members in sorted order. The sort
//!   is stable (ranks from warp shuffles and a turn-taking tally, not atomics), so the sums —
//!   and the whole call — are deterministic, and the last iteration's sort is the permutation
//!   the attention uses: [`attention::permute_rows`] copies Q, K and V into cluster order
//!   (one pass over each; the attention then loads contiguous tiles instead of looking up an
//!   index per row inside its loop — before and after in the bench note), and
//!   [`attention::cluster_attn`] writes each output row straight back at its token, so there
//!   is no un-permute kernel.
//! - **Spherical means.** The query centroid's direction is that of the plain sum of its
//!   members (each weighted by its norm), not of their unit vectors; the selection scores
//!   use the plain mean query.
//! - **Cluster counts.** The first call of a layer searches them (PIPELINES.md's
//!   thresholded k-means): seeds at evenly spaced tokens (`seq / 256`, at least 8), a few
//!   iterations, then up to 10 rounds in which the points farther than the threshold (first:
//!   the mean distance of each head) get new clusters of the current mean size, seeded at
//!   evenly spaced far points, and `thr ← max(1.1·thr, 1.1·mean distance)`. All heads of a
//!   layer share the counts (the round adds the heads' mean number of clusters), so every
//!   array is uniform across heads. More than `seq / 3` (or [`kmeans::MAX_CLUSTERS`] = 4096,
//!   the size of the sort's shared histogram) clusters for Q or K → the layer stays dense
//!   (our flash attention). Later calls run `warm_iters` (2) iterations from the cached
//!   centroids.
//! - **Selection** ([`select::cluster_select`]): one block per query cluster, threshold
//!   found by bisection on the probabilities' bits, kept ids in ascending order so the keys
//!   stream in memory order.
//! - **Attention.** A block is a piece of at most 128 queries of one cluster, so a small
//!   cluster wastes the rest of its block, and a key range's last tile is masked: the
//!   measured cost per computed pair is higher than dense attention's (see the bench note).
//!   No GQA (DiT attention has as many K/V heads as query heads); non-causal only.

pub mod attention;
pub mod checks;
pub mod demo;
pub mod fidelity;
pub mod kmeans;
pub mod layer;
pub mod reference;
pub mod select;
