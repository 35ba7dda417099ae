//! The host API: [`AdaClusterAttention`], one attention layer of a video DiT with its
//! cached cluster state.

use std::sync::Arc;

use super::attention::{cluster_attn, permute_rows, ATTN_ROWS, ATTN_THREADS, PERMUTE_THREADS};
use super::kmeans::{
    cluster_count, cluster_offsets, cluster_scatter, cluster_update, kmeans_assign, ASSIGN_ROWS,
    MAX_CLUSTERS, SORT_TILE, UPDATE_THREADS,
};
use super::select::{cluster_select, SELECT_THREADS};
use crate::attention::prefill::{Prefill, PrefillCall, PrefillError};
use crate::tuning::Variants;
use crate::verify::Real;
use kiln::tune::Store;
use kiln::{Device, DeviceBuffer, Kernel, LaunchConfig, RuntimeError};

/// Why a call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdaClusterError {
    /// The shape, the buffers or the configuration do not fit together.
    #[error("AdaCluster: {0}")]
    Shape(String),
    /// Compiling or launching failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl From<PrefillError> for AdaClusterError {
    fn from(e: PrefillError) -> Self {
        match e {
            PrefillError::Shape(s) => AdaClusterError::Shape(s),
            PrefillError::Runtime(r) => AdaClusterError::Runtime(r),
        }
    }
}

/// The shape of a layer call: `q`, `k`, `v`, `o` are `[batch, heads, seq, dim]` (full,
/// non-causal attention, as in a DiT; every head has its own K and V).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaShape {
    /// Sequences.
    pub batch: u32,
    /// Heads.
    pub heads: u32,
    /// Tokens.
    pub seq: u32,
    /// Head dimension: 64 or 128.
    pub dim: u32,
}

impl AdaShape {
    /// (sequence, head) pairs: each is clustered and attended on its own.
    pub fn problems(&self) -> u32 {
        self.batch * self.heads
    }

    /// Elements of each of `q`, `k`, `v`, `o`.
    pub fn len(&self) -> usize {
        self.problems() as usize * self.seq as usize * self.dim as usize
    }

    /// Whether the tensors are empty (never, for a validated shape).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn validate(&self) -> Result<(), AdaClusterError> {
        let refuse = |m: String| Err(AdaClusterError::Shape(m));
        if self.dim != 64 && self.dim != 128 {
            return refuse(format!("head dimension {} (64 or 128)", self.dim));
        }
        if self.batch == 0 || self.heads == 0 || self.seq == 0 {
            return refuse(format!("empty shape {self:?}"));
        }
        if self.batch.checked_mul(self.heads).is_none_or(|p| p > 65535) {
            return refuse(format!(
                "{} × {} (sequence, head) pairs: at most 65535 (the grids' y dimension)",
                self.batch, self.heads
            ));
        }
        if (self.len() as u64) >= 1 << 32 {
            return refuse(format!(
                "{self:?} has {} elements per tensor; the kernels index with 32 bits",
                self.len()
            ));
        }
        Ok(())
    }
}

/// How many key clusters a query cluster keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selection {
    /// The most probable clusters until their softmax mass reaches `mass` (in `(0, 1)`),
    /// at most `max_clusters`.
    TopP {
        /// The mass to reach.
        mass: f32,
        /// The most clusters kept.
        max_clusters: u32,
    },
    /// A fixed number of the most probable clusters.
    TopK(u32),
}

/// The knobs of AdaCluster. The defaults are what the fidelity report measures.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaClusterConfig {
    /// Clusters the count search starts from, per Q and per K; `None`: `seq / 256`, at
    /// least 8.
    pub initial_clusters: Option<u32>,
    /// k-means iterations per round of the count search (the first call of a layer).
    pub search_iters: u32,
    /// Rounds of the count search: each adds clusters for the points farther than the
    /// threshold, then raises it (`thr ← max(1.1·thr, 1.1·mean distance)`).
    pub rounds: u32,
    /// k-means iterations of every later call, warm-started from the previous centroids.
    pub warm_iters: u32,
    /// Which key clusters each query cluster attends to.
    pub selection: Selection,
    /// The layer stays dense when the search ends with more than this share of `seq`
    /// clusters (Q or K), or more than [`MAX_CLUSTERS`].
    pub dense_fraction: f64,
}

impl Default for AdaClusterConfig {
    fn default() -> Self {
        AdaClusterConfig {
            initial_clusters: None,
            search_iters: 4,
            rounds: 10,
            warm_iters: 2,
            selection: Selection::TopP {
                mass: 0.9,
                max_clusters: 1024,
            },
            dense_fraction: 1.0 / 3.0,
        }
    }
}

/// What the layer decided on its first call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Too many clusters were needed: the layer runs dense flash attention.
    Dense,
    /// Clustered sparse attention with this many query and key clusters per head.
    Clustered {
        /// Query clusters.
        q_clusters: u32,
        /// Key clusters.
        k_clusters: u32,
    },
}

/// One clustering (of the queries, spherical, or of the keys, Euclidean) of every problem,
/// with the sort of its last iteration.
pub struct ClusterSet<T: Real> {
    /// Angle-preserving (queries) or Euclidean (keys).
    pub spherical: bool,
    /// Clusters per problem.
    pub k: u32,
    /// Slots per problem in the centroid arrays.
    pub kcap: u32,
    /// Means `[P, kcap, D]` (f32).
    pub mean: DeviceBuffer<f32>,
    /// What the assignment compares with: unit directions or means, as `T`.
    pub cent: DeviceBuffer<T>,
    /// `−‖cent‖²/2` (Euclidean) or 0, `[P, kcap]`.
    pub bias: DeviceBuffer<f32>,
    /// Cluster of every point `[P, n]`.
    pub assign: DeviceBuffer<u32>,
    /// Distance of every point to its centroid `[P, n]`.
    pub dist: DeviceBuffer<f32>,
    counts: DeviceBuffer<u32>,
    /// The points in cluster order `[P, n]`.
    pub order: DeviceBuffer<u32>,
    /// Where each cluster starts in `order` `[P, k + 1]` (stride `k + 1`).
    pub start: DeviceBuffer<u32>,
    /// Prefix sums of each cluster's 128-row blocks `[P, k + 1]`.
    pub blocks: DeviceBuffer<u32>,
    seeds: DeviceBuffer<u32>,
}

/// The selection of the last call: `sel` `[P, kq, cap]`, `sel_n` and `sel_keys` `[P, kq]`.
pub struct Selected {
    /// Slots per query cluster.
    pub cap: u32,
    /// Kept key cluster ids, ascending.
    pub sel: DeviceBuffer<u32>,
    /// How many are kept.
    pub sel_n: DeviceBuffer<u32>,
    /// How many keys they hold.
    pub sel_keys: DeviceBuffer<u32>,
}

/// The cached state of a clustered layer.
pub struct Clustered<T: Real> {
    /// The query clusters.
    pub q: ClusterSet<T>,
    /// The key clusters.
    pub k: ClusterSet<T>,
    /// The kept key clusters per query cluster.
    pub selected: Selected,
    /// Q, K and V of the last call in cluster order (what the attention reads).
    pub sorted: [DeviceBuffer<T>; 3],
}

enum State<T: Real> {
    Dense,
    Clustered(Box<Clustered<T>>),
}

/// One attention layer of a video DiT under AdaCluster: the first [`forward`] searches the
/// numbers of query and key clusters (thresholded k-means, fixed from then on) or decides
/// the layer stays dense; every call then re-clusters Q (spherical) and K (Euclidean)
/// warm-started from the previous centroids, selects each query cluster's key clusters and
/// runs cluster-sparse flash attention. Call [`reset`] for a new video.
///
/// [`forward`]: AdaClusterAttention::forward
/// [`reset`]: AdaClusterAttention::reset
pub struct AdaClusterAttention<T: Real> {
    device: Device,
    shape: AdaShape,
    /// The knobs (changing them after the first call affects only what is not cached).
    pub config: AdaClusterConfig,
    kernels: Variants<(&'static str, bool)>,
    prefill: Prefill,
    state: Option<State<T>>,
    lse: DeviceBuffer<f32>,
}

/// Refuses knobs the kernels cannot run with (a top-p mass outside `(0, 1)`, no clusters
/// kept, no search iterations, a non-positive dense limit).
fn validate_config(config: &AdaClusterConfig) -> Result<(), AdaClusterError> {
    match config.selection {
        Selection::TopP { mass, max_clusters }
            if !(mass > 0.0 && mass < 1.0) || max_clusters == 0 =>
        {
            return Err(AdaClusterError::Shape(format!(
                "top-p mass {mass} must be in (0, 1) and max_clusters ({max_clusters}) positive"
            )))
        }
        Selection::TopK(0) => return Err(AdaClusterError::Shape("top-k of 0 clusters".into())),
        _ => {}
    }
    if config.search_iters == 0 || config.dense_fraction.is_nan() || config.dense_fraction <= 0.0 {
        return Err(AdaClusterError::Shape(
            "search_iters must be positive and dense_fraction above 0".into(),
        ));
    }
    Ok(())
}

fn launch(grid: (u32, u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid,
        block: (threads, 1, 1),
        dyn_shared_bytes: 0,
    }
}

impl<T: Real> AdaClusterAttention<T> {
    /// A layer of `shape` on `device` (bf16 or f16), with `config`.
    pub fn new(
        device: &Device,
        shape: AdaShape,
        config: AdaClusterConfig,
    ) -> Result<Self, AdaClusterError> {
        shape.validate()?;
        if !matches!(
            T::DTYPE,
            kiln_codegen::Dtype::Bf16 | kiln_codegen::Dtype::F16
        ) {
            return Err(AdaClusterError::Shape(format!(
                "element type {} (bf16 or f16)",
                T::DTYPE
            )));
        }
        validate_config(&config)?;
        let lse = device.zeros::<f32>(shape.problems() as usize * shape.seq as usize)?;
        Ok(AdaClusterAttention {
            device: device.clone(),
            shape,
            config,
            kernels: Variants::default(),
            prefill: Prefill::new(device, T::DTYPE, Store::default_location()),
            state: None,
            lse,
        })
    }

    /// The shape every call must have.
    pub fn shape(&self) -> AdaShape {
        self.shape
    }

    /// What the first call decided (`None` before it).
    pub fn layout(&self) -> Option<Layout> {
        self.state.as_ref().map(|s| match s {
            State::Dense => Layout::Dense,
            State::Clustered(c) => Layout::Clustered {
                q_clusters: c.q.k,
                k_clusters: c.k.k,
            },
        })
    }

    /// The cluster state of the last call, when the layer is clustered.
    pub fn clusters(&self) -> Option<&Clustered<T>> {
        match &self.state {
            Some(State::Clustered(c)) => Some(c),
            _ => None,
        }
    }

    /// The natural-log LSE `[B, H, seq]` of the last call's rows.
    pub fn lse(&self) -> &DeviceBuffer<f32> {
        &self.lse
    }

    /// Forgets the cluster counts and centroids: the next call searches again.
    pub fn reset(&mut self) {
        self.state = None;
    }

    /// `o = softmax(Q·Kᵀ/√D)·V` over the kept clusters' keys (dense when the layer is);
    /// `q`, `k`, `v`, `o` `[B, H, seq, D]`.
    pub fn forward(
        &mut self,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        o: &mut DeviceBuffer<T>,
    ) -> Result<(), AdaClusterError> {
        validate_config(&self.config)?;
        let want = self.shape.len();
        for (name, got) in [
            ("q", q.len()),
            ("k", k.len()),
            ("v", v.len()),
            ("o", o.len()),
        ] {
            if got != want {
                return Err(AdaClusterError::Shape(format!(
                    "`{name}` holds {got} elements, {:?} needs {want}",
                    self.shape
                )));
            }
        }
        if self.state.is_none() {
            let qs = self.search(q, true)?;
            let ks = match qs {
                Some(_) => self.search(k, false)?,
                None => None,
            };
            self.state = Some(match (qs, ks) {
                (Some(q), Some(k)) => {
                    let selected = self.selected_for(&q, &k)?;
                    let len = self.shape.len();
                    let sorted = [
                        self.device.zeros(len)?,
                        self.device.zeros(len)?,
                        self.device.zeros(len)?,
                    ];
                    State::Clustered(Box::new(Clustered {
                        q,
                        k,
                        selected,
                        sorted,
                    }))
                }
                _ => State::Dense,
            });
        } else if matches!(self.state, Some(State::Clustered(_))) {
            // the state is taken out while `iterate` borrows the layer, and always put back
            let Some(State::Clustered(mut c)) = self.state.take() else {
                unreachable!("matched just above")
            };
            let iters = self.config.warm_iters;
            let run = self
                .iterate(&mut c.q, q, iters)
                .and_then(|_| self.iterate(&mut c.k, k, iters));
            self.state = Some(State::Clustered(c));
            run?;
        }
        match &mut self.state {
            Some(State::Dense) | None => {
                let s = self.shape;
                let call = PrefillCall {
                    batch: s.batch,
                    heads: s.heads,
                    kv_heads: s.heads,
                    s_q: s.seq,
                    s_kv: s.seq,
                    dim: s.dim,
                    causal: false,
                };
                let scale = 1.0 / (s.dim as f32).sqrt();
                self.prefill
                    .run(&call, q, k, v, scale, o, &mut self.lse, None)?;
            }
            Some(State::Clustered(_)) => self.sparse(q, k, v, o)?,
        }
        Ok(())
    }

    /// The fraction of query–key pairs the last call computed (1 when dense): each query
    /// cluster's size times the keys its kept clusters hold, over `seq²`, averaged over the
    /// problems. Synchronises.
    pub fn density(&self) -> Result<f64, AdaClusterError> {
        let Some(c) = self.clusters() else {
            return Ok(1.0);
        };
        let (p, n) = (self.shape.problems() as usize, self.shape.seq as f64);
        let start = self.device.download(&c.q.start)?;
        let keys = self.device.download(&c.selected.sel_keys)?;
        let kq = c.q.k as usize;
        let mut pairs = 0.0f64;
        for pi in 0..p {
            for ci in 0..kq {
                let at = pi * (kq + 1) + ci;
                let size = (start[at + 1] - start[at]) as f64;
                pairs += size * keys[pi * kq + ci] as f64;
            }
        }
        Ok(pairs / (p as f64 * n * n))
    }

    /// Like [`AdaClusterAttention::density`] but counting what the attention kernel
    /// multiplies: query rows rounded up to its warps' 32 and each kept range rounded up to
    /// its key tiles — the share of dense work the sparse call pays for. Synchronises.
    pub fn tile_density(&self) -> Result<f64, AdaClusterError> {
        let Some(c) = self.clusters() else {
            return Ok(1.0);
        };
        let (p, n) = (self.shape.problems() as usize, self.shape.seq as usize);
        let bk = if self.shape.dim == 128 { 32 } else { 64 };
        let q_start = self.device.download(&c.q.start)?;
        let k_start = self.device.download(&c.k.start)?;
        let sel = self.device.download(&c.selected.sel)?;
        let sel_n = self.device.download(&c.selected.sel_n)?;
        let (kq, kk, cap) = (c.q.k as usize, c.k.k as usize, c.selected.cap as usize);
        let mut pairs = 0.0f64;
        for pi in 0..p {
            for cq in 0..kq {
                let at = pi * (kq + 1) + cq;
                let size = (q_start[at + 1] - q_start[at]) as usize;
                // whole 128-row pieces, and the last one's busy warps
                let rows = size.div_ceil(32) * 32;
                let list = &sel[(pi * kq + cq) * cap..][..sel_n[pi * kq + cq] as usize];
                let keys: usize = list
                    .iter()
                    .map(|&j| {
                        let a = pi * (kk + 1) + j as usize;
                        ((k_start[a + 1] - k_start[a]) as usize).div_ceil(bk) * bk
                    })
                    .sum();
                pairs += rows as f64 * keys as f64;
            }
        }
        Ok(pairs / (p as f64 * n as f64 * n as f64))
    }

    /// Plain k-means of `x` (`[B, H, seq, D]`, every (sequence, head) on its own) into `k`
    /// clusters — spherical or Euclidean — seeded at evenly spaced tokens, then `iters`
    /// iterations; the result holds the assignment, the sorted order and the centroids.
    pub fn kmeans(
        &self,
        x: &DeviceBuffer<T>,
        k: u32,
        spherical: bool,
        iters: u32,
    ) -> Result<ClusterSet<T>, AdaClusterError> {
        if x.len() != self.shape.len() || k == 0 || k > MAX_CLUSTERS.min(self.shape.seq) {
            return Err(AdaClusterError::Shape(format!(
                "k-means of {} elements into {k} clusters (the shape {:?} needs {}; 1 ≤ k ≤ min(seq, {MAX_CLUSTERS}))",
                x.len(),
                self.shape,
                self.shape.len()
            )));
        }
        let mut set = self.new_set(spherical, k)?;
        let (p, n) = (self.shape.problems() as usize, self.shape.seq as usize);
        let seeds: Vec<u32> = (0..p * k as usize)
            .map(|i| ((2 * (i % k as usize) + 1) * n / (2 * k as usize)) as u32)
            .collect();
        self.seed(&mut set, x, &seeds, k)?;
        self.iterate(&mut set, x, iters)?;
        Ok(set)
    }

    /// `iters` more k-means iterations of `set` over `x`, from its current centroids.
    pub fn kmeans_iterate(
        &self,
        set: &mut ClusterSet<T>,
        x: &DeviceBuffer<T>,
        iters: u32,
    ) -> Result<(), AdaClusterError> {
        if x.len() != self.shape.len()
            || set.assign.len() != self.shape.problems() as usize * self.shape.seq as usize
        {
            return Err(AdaClusterError::Shape(format!(
                "k-means iterations need x and a cluster set of {:?}",
                self.shape
            )));
        }
        Ok(self.iterate(set, x, iters)?)
    }

    fn kernel(&self, name: &'static str, spherical: bool) -> Result<Arc<Kernel>, RuntimeError> {
        let d = self.shape.dim;
        let dev = &self.device;
        self.kernels.get(&(name, spherical), || match name {
            "assign" => kmeans_assign::spec()
                .t(T::DTYPE)
                .d(d)
                .spherical(spherical)
                .build(dev),
            "count" => cluster_count::spec().build(dev),
            "offsets" => cluster_offsets::spec().build(dev),
            "scatter" => cluster_scatter::spec().build(dev),
            "update" => cluster_update::spec()
                .t(T::DTYPE)
                .d(d)
                .spherical(spherical)
                .build(dev),
            "select" => cluster_select::spec().d(d).build(dev),
            "permute" => permute_rows::spec().t(T::DTYPE).d(d).build(dev),
            _ => cluster_attn::spec()
                .t(T::DTYPE)
                .d(d)
                .bk(if d == 128 { 32 } else { 64 })
                .build(dev),
        })
    }

    fn new_set(&self, spherical: bool, kcap: u32) -> Result<ClusterSet<T>, RuntimeError> {
        let dev = &self.device;
        let (p, n, d) = (
            self.shape.problems() as usize,
            self.shape.seq as usize,
            self.shape.dim as usize,
        );
        let kc = kcap as usize;
        let tiles = n.div_ceil(SORT_TILE as usize);
        Ok(ClusterSet {
            spherical,
            k: 0,
            kcap,
            mean: dev.zeros(p * kc * d)?,
            cent: dev.zeros(p * kc * d)?,
            bias: dev.zeros(p * kc)?,
            assign: dev.zeros(p * n)?,
            dist: dev.zeros(p * n)?,
            counts: dev.zeros(p * kc * tiles)?,
            order: dev.zeros(p * n)?,
            start: dev.zeros(p * (kc + 1))?,
            blocks: dev.zeros(p * (kc + 1))?,
            seeds: dev.zeros(p * kc)?,
        })
    }

    /// Gives clusters `set.k .. set.k + seeds_per_problem` the listed points as centroids
    /// (`seeds` `[P, kcap]`, `u32::MAX` where a cluster is kept).
    fn seed(
        &self,
        set: &mut ClusterSet<T>,
        x: &DeviceBuffer<T>,
        seeds: &[u32],
        k: u32,
    ) -> Result<(), RuntimeError> {
        self.device.write(&mut set.seeds, seeds)?;
        set.k = k;
        self.update(set, x, true)
    }

    fn update(
        &self,
        set: &mut ClusterSet<T>,
        x: &DeviceBuffer<T>,
        seeded: bool,
    ) -> Result<(), RuntimeError> {
        let s = self.shape;
        cluster_update::launch(
            &*self.kernel("update", set.spherical)?,
            &launch((set.k, s.problems(), 1), UPDATE_THREADS),
            x,
            &set.order,
            &set.start,
            &set.seeds,
            &mut set.mean,
            &mut set.cent,
            &mut set.bias,
            s.seq,
            set.k,
            set.kcap,
            seeded,
        )
    }

    /// `iters` k-means iterations (assign, stable sort, update) of `set` over `x`.
    fn iterate(
        &self,
        set: &mut ClusterSet<T>,
        x: &DeviceBuffer<T>,
        iters: u32,
    ) -> Result<(), RuntimeError> {
        let s = self.shape;
        let (p, n) = (s.problems(), s.seq);
        let tiles = n.div_ceil(SORT_TILE);
        for _ in 0..iters {
            kmeans_assign::launch(
                &*self.kernel("assign", set.spherical)?,
                &launch((n.div_ceil(ASSIGN_ROWS), p, 1), 128),
                x,
                &set.cent,
                &set.bias,
                &mut set.assign,
                &mut set.dist,
                n,
                set.k,
                set.kcap,
            )?;
            cluster_count::launch(
                &*self.kernel("count", false)?,
                &launch((tiles, p, 1), SORT_TILE),
                &set.assign,
                &mut set.counts,
                n,
                set.k,
                tiles,
            )?;
            cluster_offsets::launch(
                &*self.kernel("offsets", false)?,
                &launch((p, 1, 1), 512),
                &mut set.counts,
                &mut set.start,
                &mut set.blocks,
                set.k,
                tiles,
            )?;
            cluster_scatter::launch(
                &*self.kernel("scatter", false)?,
                &launch((tiles, p, 1), SORT_TILE),
                &set.assign,
                &set.counts,
                &mut set.order,
                n,
                set.k,
                tiles,
            )?;
            self.update(set, x, false)?;
        }
        Ok(())
    }

    /// The thresholded cluster-count search of one set (the first call of a layer); `None`
    /// when it needs more clusters than the dense limit.
    fn search(
        &self,
        x: &DeviceBuffer<T>,
        spherical: bool,
    ) -> Result<Option<ClusterSet<T>>, AdaClusterError> {
        let s = self.shape;
        let (p, n) = (s.problems() as usize, s.seq as usize);
        let limit = ((n as f64 * self.config.dense_fraction).floor() as u32).min(MAX_CLUSTERS);
        let k0 = self
            .config
            .initial_clusters
            .unwrap_or((s.seq / 256).max(8))
            .clamp(1, s.seq);
        if k0 > limit {
            return Ok(None);
        }
        let mut set = self.new_set(spherical, limit)?;
        let kc = limit as usize;
        // evenly spaced tokens seed the first clusters
        let mut seeds = vec![u32::MAX; p * kc];
        for pi in 0..p {
            for c in 0..k0 as usize {
                seeds[pi * kc + c] = ((2 * c + 1) * n / (2 * k0 as usize)) as u32;
            }
        }
        self.seed(&mut set, x, &seeds, k0)?;
        self.iterate(&mut set, x, self.config.search_iters)?;
        let mut dist = self.device.download(&set.dist)?;
        let mean_of = |d: &[f32]| d.iter().map(|&v| v as f64).sum::<f64>() / d.len() as f64;
        let mut thr: Vec<f64> = dist.chunks(n).map(mean_of).collect();
        for _ in 0..self.config.rounds {
            let far: Vec<Vec<u32>> = dist
                .chunks(n)
                .zip(&thr)
                .map(|(d, &t)| {
                    (0..n as u32)
                        .filter(|&i| d[i as usize] as f64 > t)
                        .collect()
                })
                .collect();
            let unassigned = far.iter().map(Vec::len).sum::<usize>() as f64 / p as f64;
            if unassigned < 1.0 {
                break;
            }
            // the unassigned get clusters of the current mean size
            let add = ((unassigned * set.k as f64 / n as f64).ceil() as u32).max(1);
            if set.k + add > limit {
                return Ok(None);
            }
            seeds.fill(u32::MAX);
            for (pi, f) in far.iter().enumerate() {
                for a in 0..add as usize {
                    // evenly spaced among the far points; a head with too few takes any token
                    seeds[pi * kc + set.k as usize + a] = if f.is_empty() {
                        ((2 * a + 1) * n / (2 * add as usize)) as u32
                    } else {
                        f[a * f.len() / add as usize]
                    };
                }
            }
            let k = set.k + add;
            self.seed(&mut set, x, &seeds, k)?;
            self.iterate(&mut set, x, self.config.search_iters)?;
            dist = self.device.download(&set.dist)?;
            for (t, d) in thr.iter_mut().zip(dist.chunks(n)) {
                *t = (1.1 * *t).max(1.1 * mean_of(d));
            }
        }
        Ok(Some(set))
    }

    fn selected_for(&self, q: &ClusterSet<T>, k: &ClusterSet<T>) -> Result<Selected, RuntimeError> {
        let p = self.shape.problems() as usize;
        let cap = match self.config.selection {
            Selection::TopP { max_clusters, .. } => max_clusters,
            Selection::TopK(n) => n,
        }
        .min(k.k);
        let kq = q.k as usize;
        Ok(Selected {
            cap,
            sel: self.device.zeros(p * kq * cap as usize)?,
            sel_n: self.device.zeros(p * kq)?,
            sel_keys: self.device.zeros(p * kq)?,
        })
    }

    fn sparse(
        &mut self,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        o: &mut DeviceBuffer<T>,
    ) -> Result<(), RuntimeError> {
        let s = self.shape;
        let (p, n) = (s.problems(), s.seq);
        let scale = 1.0 / (s.dim as f32).sqrt();
        let top_p = match self.config.selection {
            Selection::TopP { mass, .. } => mass,
            Selection::TopK(_) => 1.0,
        };
        let select = self.kernel("select", false)?;
        let permute = self.kernel("permute", false)?;
        let attn = self.kernel("attn", false)?;
        let Some(State::Clustered(c)) = &mut self.state else {
            unreachable!("sparse() runs on a clustered layer")
        };
        cluster_select::launch(
            &select,
            &launch((c.q.k, p, 1), SELECT_THREADS),
            &c.q.mean,
            &c.k.mean,
            &c.q.start,
            &c.k.start,
            &mut c.selected.sel,
            &mut c.selected.sel_n,
            &mut c.selected.sel_keys,
            c.q.k,
            c.k.k,
            c.q.kcap,
            c.k.kcap,
            c.selected.cap,
            top_p,
            scale,
        )?;
        let [qs, ks, vs] = &mut c.sorted;
        let vecs = (n * (s.dim / 8)).div_ceil(PERMUTE_THREADS);
        for (x, order, out) in [
            (q, &c.q.order, &mut *qs),
            (k, &c.k.order, &mut *ks),
            (v, &c.k.order, &mut *vs),
        ] {
            permute_rows::launch(
                &permute,
                &launch((vecs, p, 1), PERMUTE_THREADS),
                x,
                order,
                out,
                n,
            )?;
        }
        cluster_attn::launch(
            &attn,
            &launch((n.div_ceil(ATTN_ROWS) + c.q.k, p, 1), ATTN_THREADS),
            qs,
            ks,
            vs,
            &c.q.order,
            &c.q.start,
            &c.q.blocks,
            &c.k.start,
            &c.selected.sel,
            &c.selected.sel_n,
            o,
            &mut self.lse,
            n,
            c.q.k,
            c.k.k,
            c.selected.cap,
            scale,
        )
    }
}

impl From<AdaClusterError> for crate::verify::VerifyError {
    fn from(e: AdaClusterError) -> Self {
        match e {
            AdaClusterError::Runtime(r) => crate::verify::VerifyError::Runtime(r),
            AdaClusterError::Shape(s) => crate::verify::VerifyError::Mismatch(s),
        }
    }
}

impl From<AdaClusterError> for RuntimeError {
    fn from(e: AdaClusterError) -> RuntimeError {
        match e {
            AdaClusterError::Runtime(r) => r,
            AdaClusterError::Shape(reason) => RuntimeError::InvalidInput {
                what: "AdaCluster call",
                reason,
            },
        }
    }
}
