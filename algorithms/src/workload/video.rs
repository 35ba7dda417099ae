//! Video-like attention workloads: Q/K/V shaped like the joint self-attention of a video
//! diffusion transformer (prefill, non-causal, every head with its own K and V), with the
//! structure that clustered sparse attention (AdaCluster, SVG2) bets on planted in it.
//!
//! # Tokens
//!
//! A video latent is a grid of `frames × height × width` patches. The tokens are that grid in
//! raster order — frame-major, then row, then column, so grid point `(f, y, x)` is token
//! `(f·height + y)·width + x` — followed by `text_tokens` text tokens, *last*, as MM-DiT
//! models (CogVideoX, HunyuanVideo) concatenate them. Every token is a query and a key: the
//! [`Shape`] has `queries = seq` and `kv_heads = heads`.
//!
//! # Planted structure
//!
//! Each structure has a knob in *logit units*: what it adds to `q·k/√D`.
//!
//! | structure | how it is planted | knobs (defaults) |
//! |---|---|---|
//! | spatio-temporal locality | `P = clamp(D/4, 1, 32)` channel pairs hold random Fourier features `√2·(cos, sin)(ω·p)` of the grid position `p = (f, y, x)`; the three components of each `ω` come from Cauchy laws of scale `1/time_window`, `1/space_window`, `1/space_window` (one stratum of their quantiles per pair, strata shuffled per axis — a Latin hypercube —, random signs, capped at π per token), so `q_i·k_j/√D` gains `locality_logit × K(p_i − p_j)` with `K(0) = 1` and `K ≈ exp(−|Δf|/time_window − |Δy|/space_window − |Δx|/space_window)` (a random-feature Laplace kernel, as the LLM generator's recency planes; far away it is noise of std `locality_logit/√(2P)`). Text tokens carry no position (zero there) | `locality_logit` (4), `time_window` (2 frames), `space_window` (3 tokens) |
//! | semantic segments | the grid is cut into [`VideoSpec::segments`] regions: the Voronoi cells of seed points drawn uniformly in the grid, under the distance `√((½Δf)² + (Δy − v_yΔf)² + (Δx − v_xΔf)²)` (a frame counts half a token, and each seed drifts with its own velocity `v ~ N(0, 0.3²)` tokens per frame), so a region is spatially compact, persists over several frames and moves like an object — and is *not* contiguous in raster order. Each region has a random centroid in the semantic channels (the rest); a key of the region is `(centroid + segment_spread × noise)/√(1 + segment_spread²)` (unit variance per channel), and a query leans towards its own region's centroid, adding `≈ segment_logit` to every key of its region wherever it is in the video (a text query leans towards a random region) | `tokens_per_segment` (256, at least 8 regions), `segment_logit` (4), `segment_spread` (0.5) |
//! | global text tokens | the text tokens' keys hold `global_logit` in a *global channel* (grid tokens: `N(0, 0.2²)`); every query has `√D × N(1, 0.2²)` there, so every query gives every text token `≈ global_logit` | `global_logit` (3) |
//! | background | queries carry Gaussian noise in the semantic channels, scaled so it adds logits of std `noise_logit` | `noise_logit` (1) |
//! | per-head variety | each head scales its locality, segment and global strengths by `exp(head_variation × N(0, 1))`; its channel roles, frequencies and regions are its own | `head_variation` (0.3) |
//! | values | a grid token's value is `√value_coherence × value_centroid[region] + √(1 − value_coherence) × noise` (tokens of one object carry related values); text tokens' values are plain noise | `value_coherence` (0.5) |
//!
//! Keys have about unit variance in every channel (the text tokens' global channel excepted);
//! queries carry the logit scale, `√D` in the global channel and up to a few tens elsewhere,
//! so every element stays well inside the range where bf16 is exact to 3 digits (|x| < 100).
//!
//! # How sparse
//!
//! Real video DiT attention is sparse but not degenerate: SVG and SVG2 keep 10–30% of the
//! keys at high fidelity. With the defaults, averaged over every head and a sample of queries
//! (text queries included), seed 0 with the range over seeds 0–5 in brackets:
//!
//! | shape | tokens | top 10% of keys hold | top 1% hold | keys for 90% of the mass |
//! |---|---|---|---|---|
//! | [`VideoSpec::small`] `(4, 8, 8, 4, 64)` | 256 + 8 | 85% (81–92%) | 43% (41–54%) | 14% (10–18%) |
//! | `small(8, 16, 16, 4, 64)`, 16 text tokens | 2048 + 16 | 82% (77–90%) | 38% (37–49%) | 17% (10–22%) |
//! | [`VideoSpec::cogvideox`], 6 heads | 17,550 + 226 | 83% | 58% | 19% |
//! | [`VideoSpec::wan480p`], 6 heads | 32,760 + 0 | 74% | 53% | 29% |
//! | [`VideoSpec::hunyuan720p`], 6 heads | 118,800 + 256 | 72% | 48% | 31% |
//!
//! A query's own region holds most of it (80–90% of the mass on the small grids, about half
//! on the presets), the text a few percent. Heads differ: the most local ones put 90% of a
//! query's mass on a handful of keys around it, the flattest need a third of the keys or
//! more. Keys of one region have a mean cosine of about 0.4, keys of different regions about
//! 0 (the tests assert the small-grid bounds for seeds 0–3; `preset_sparsity_report`, an ignored test,
//! prints the preset ones). Peakedness at fixed knobs falls as `seq` grows (the background
//! grows with it while a region keeps `tokens_per_segment` tokens; HunyuanVideo's preset has
//! larger regions for that reason). All of HunyuanVideo 720p (1.1 G floats) takes about 8 s
//! on 2 cores, and scales with the cores.
//!
//! # Determinism
//!
//! Every row draws from its own stream named by the seed and `(b, h, token)` ([`Rng::stream`]),
//! and the per-head tables (channel roles, frequencies, regions, centroids) from streams named
//! by the seed and `h` or `(b, h)`: the output depends only on the spec, not on the thread
//! count. Rows are generated in parallel with `std::thread::scope`, straight into the three
//! output tensors (the only large allocations).

use super::{par_rows, Rng, Shape, Workload, WorkloadError};

/// Stream tags (distinct from the LLM generator's).
const TAG_LAYOUT: u64 = 11;
const TAG_HEAD: u64 = 12;
const TAG_REGIONS: u64 = 13;
const TAG_CENTROIDS: u64 = 14;
const TAG_KEY: u64 = 15;
const TAG_VALUE: u64 = 16;
const TAG_QUERY: u64 = 17;

/// Std of grid keys in the global channel.
const CHANNEL_NOISE: f32 = 0.2;
/// Std of the per-query factor on the global logit, around 1.
const GLOBAL_JITTER: f32 = 0.2;
/// What one frame of distance counts in tokens of spatial distance, for the regions.
const TIME_WEIGHT: f32 = 0.5;
/// Std of a region seed's drift per frame, in tokens, along each spatial axis.
const SEGMENT_SPEED: f32 = 0.3;
/// Most channel pairs of the locality features.
const MAX_PLANES: usize = 32;
/// Fewest semantic channels a key must keep.
const MIN_SEMANTIC: usize = 2;
/// Fewest regions (when the grid has that many tokens).
const MIN_SEGMENTS: usize = 8;

/// What to generate: a video DiT attention layer's shape, the seed, and the strength of each
/// planted structure (see the module docs). Knobs are in logit units where they can be.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoSpec {
    /// Videos in the batch (`B`).
    pub batch: usize,
    /// Attention heads (`H`); K and V have as many (no GQA).
    pub heads: usize,
    /// Latent frames of the grid.
    pub frames: usize,
    /// Latent rows per frame.
    pub height: usize,
    /// Latent columns per frame.
    pub width: usize,
    /// Text tokens, after the grid tokens (0 for models with cross-attention to the text).
    pub text_tokens: usize,
    /// Head dimension (`D`).
    pub dim: usize,
    /// Seed of every random draw: equal specs give equal workloads. Default 0.
    pub seed: u64,
    /// Logit added to a key at grid distance 0 from the query, decaying with distance (0
    /// turns locality off and frees its channels). Default 4.
    pub locality_logit: f32,
    /// Frames over which locality decays by about `e`. Default 2.
    pub time_window: f32,
    /// Tokens (rows or columns) over which locality decays by about `e`. Default 3.
    pub space_window: f32,
    /// Mean grid tokens per region: the grid has `grid_tokens / tokens_per_segment` regions,
    /// at least 8 (see [`VideoSpec::segments`]). Default 256.
    pub tokens_per_segment: usize,
    /// Logit a query adds to the keys of its own region. Default 4.
    pub segment_logit: f32,
    /// Spread of a key around its region's centroid, relative to the spread of the centroids.
    /// Default 0.5.
    pub segment_spread: f32,
    /// Logit every query adds to a text token. Default 3.
    pub global_logit: f32,
    /// Std of the background logits that query noise adds. Default 1.
    pub noise_logit: f32,
    /// Log-std of the per-head factors on the locality, segment and global strengths.
    /// Default 0.3.
    pub head_variation: f32,
    /// Share of a grid value's variance that comes from its region, in `[0, 1]`. Default 0.5.
    pub value_coherence: f32,
}

impl VideoSpec {
    /// A spec of the given shape with every knob at its default, batch 1 and seed 0.
    fn with_shape(grid: [usize; 3], text_tokens: usize, heads: usize, dim: usize) -> VideoSpec {
        VideoSpec {
            batch: 1,
            heads,
            frames: grid[0],
            height: grid[1],
            width: grid[2],
            text_tokens,
            dim,
            seed: 0,
            locality_logit: 4.0,
            time_window: 2.0,
            space_window: 3.0,
            tokens_per_segment: 256,
            segment_logit: 4.0,
            segment_spread: 0.5,
            global_logit: 3.0,
            noise_logit: 1.0,
            head_variation: 0.3,
            value_coherence: 0.5,
        }
    }

    /// CogVideoX (5B): a 13 × 30 × 45 latent grid (17,550 tokens) and 226 text tokens, 17,776
    /// in all; 30 heads of dimension 64.
    pub fn cogvideox() -> VideoSpec {
        VideoSpec::with_shape([13, 30, 45], 226, 30, 64)
    }

    /// Wan 2.1 at 480p: a 21 × 30 × 52 grid (32,760 tokens), no text tokens (Wan reads the
    /// text through cross-attention); 12 heads of dimension 128.
    pub fn wan480p() -> VideoSpec {
        VideoSpec::with_shape([21, 30, 52], 0, 12, 128)
    }

    /// HunyuanVideo at 720p: a 33 × 45 × 80 grid (118,800 tokens) and 256 text tokens,
    /// 119,056 in all; 24 heads of dimension 128 (4.4 GB of f32 Q/K/V). Its regions are
    /// larger than the default, `tokens_per_segment = 1024` (116 regions): a 720p frame has
    /// 2.7 times the tokens of a CogVideoX frame, so an object covers more of them, and with
    /// 256 the background of 119K keys flattens attention below the sparsity of real models
    /// (the top 10% of keys would hold 67% of the mass instead of 73%).
    pub fn hunyuan720p() -> VideoSpec {
        VideoSpec {
            tokens_per_segment: 1024,
            ..VideoSpec::with_shape([33, 45, 80], 256, 24, 128)
        }
    }

    /// A small grid for tests and the emulator, with 8 text tokens: e.g. `small(4, 8, 8, 4,
    /// 64)` is 256 + 8 tokens.
    pub fn small(frames: usize, height: usize, width: usize, heads: usize, dim: usize) -> Self {
        VideoSpec::with_shape([frames, height, width], 8, heads, dim)
    }

    /// The same spec with another seed.
    pub fn with_seed(self, seed: u64) -> Self {
        VideoSpec { seed, ..self }
    }

    /// The same spec with another batch size.
    pub fn with_batch(self, batch: usize) -> Self {
        VideoSpec { batch, ..self }
    }

    /// The same spec with another number of heads (e.g. one head of a large preset, to look
    /// at it cheaply).
    pub fn with_heads(self, heads: usize) -> Self {
        VideoSpec { heads, ..self }
    }

    /// Tokens of the latent grid, `frames · height · width`.
    pub fn grid_tokens(&self) -> usize {
        self.frames * self.height * self.width
    }

    /// Tokens in all: the grid, then the text.
    pub fn seq(&self) -> usize {
        self.grid_tokens() + self.text_tokens
    }

    /// The tensor shapes: q, k and v are all `[batch, heads, seq, dim]`.
    pub fn shape(&self) -> Shape {
        Shape {
            batch: self.batch,
            heads: self.heads,
            kv_heads: self.heads,
            queries: self.seq(),
            seq: self.seq(),
            dim: self.dim,
        }
    }

    /// Regions of the grid per (sequence, head): `grid_tokens / tokens_per_segment`, at least
    /// 8 and at most `grid_tokens` (68 for CogVideoX, 127 for Wan 480p, 116 for HunyuanVideo
    /// 720p, whose preset has 1024 tokens per region). The spec must be valid.
    pub fn segments(&self) -> usize {
        let grid = self.grid_tokens();
        (grid / self.tokens_per_segment.max(1))
            .max(MIN_SEGMENTS)
            .min(grid)
    }

    /// The grid point `[f, y, x]` of `token`, or `None` for a text token (or past the end).
    pub fn position(&self, token: usize) -> Option<[usize; 3]> {
        (token < self.grid_tokens()).then(|| {
            let x = token % self.width;
            let fy = token / self.width;
            [fy / self.height, fy % self.height, x]
        })
    }

    /// The region of `token` in sequence `b`, head `h`: a number below
    /// [`VideoSpec::segments`], or `segments()` itself for a text token (the text forms one
    /// extra group). The ground truth a clustering of the keys (or queries) can be scored
    /// against. The spec must be valid.
    pub fn segment_of(&self, b: usize, h: usize, token: usize) -> usize {
        match self.position(token) {
            Some(p) => Regions::new(self, b, h).region(p),
            None => self.segments(),
        }
    }

    /// [`VideoSpec::segment_of`] for every token of sequence `b`, head `h` (`seq` labels).
    pub fn segment_map(&self, b: usize, h: usize) -> Vec<usize> {
        let regions = Regions::new(self, b, h);
        (0..self.seq())
            .map(|t| match self.position(t) {
                Some(p) => regions.region(p),
                None => self.segments(),
            })
            .collect()
    }

    /// Channel pairs of the locality features: `clamp(D/4, 1, 32)`, none when locality is
    /// off.
    fn planes(&self) -> usize {
        if self.locality_logit == 0.0 {
            0
        } else {
            (self.dim / 4).clamp(1, MAX_PLANES)
        }
    }

    /// Whether a global channel is reserved (there are text tokens).
    fn has_global(&self) -> bool {
        self.text_tokens > 0
    }

    /// Checks the spec: positive sizes whose products fit, finite knobs in range, and enough
    /// channels left for the semantic part of the keys.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        let bad = WorkloadError::InvalidSpec;
        let sizes = [
            ("batch", self.batch),
            ("heads", self.heads),
            ("frames", self.frames),
            ("height", self.height),
            ("width", self.width),
            ("dim", self.dim),
            ("tokens_per_segment", self.tokens_per_segment),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, n)| *n == 0) {
            return Err(bad(format!("{name} must be positive")));
        }
        let seq = self
            .frames
            .checked_mul(self.height)
            .and_then(|n| n.checked_mul(self.width))
            .and_then(|n| n.checked_add(self.text_tokens));
        if seq.is_none() || seq.is_some_and(|s| s > u32::MAX as usize) {
            return Err(bad("too many tokens".into()));
        }
        self.shape().validate().map_err(bad)?;
        let knobs = [
            ("locality_logit", self.locality_logit),
            ("time_window", self.time_window),
            ("space_window", self.space_window),
            ("segment_logit", self.segment_logit),
            ("segment_spread", self.segment_spread),
            ("global_logit", self.global_logit),
            ("noise_logit", self.noise_logit),
            ("head_variation", self.head_variation),
            ("value_coherence", self.value_coherence),
        ];
        if let Some((name, _)) = knobs.iter().find(|(_, x)| !x.is_finite()) {
            return Err(bad(format!("{name} must be finite")));
        }
        if self.locality_logit != 0.0 && (self.time_window <= 0.0 || self.space_window <= 0.0) {
            return Err(bad("time_window and space_window must be positive".into()));
        }
        if self.segment_spread < 0.0 || self.noise_logit < 0.0 || self.head_variation < 0.0 {
            return Err(bad(
                "segment_spread, noise_logit and head_variation must not be negative".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.value_coherence) {
            return Err(bad("value_coherence must lie in [0, 1]".into()));
        }
        let reserved = 2 * self.planes() + usize::from(self.has_global());
        if reserved + MIN_SEMANTIC > self.dim {
            return Err(bad(format!(
                "dim {} is too small: locality takes {} channels, the text {} and keys need \
                 {MIN_SEMANTIC} more",
                self.dim,
                2 * self.planes(),
                usize::from(self.has_global())
            )));
        }
        Ok(())
    }
}

/// One plane of the locality features: its two channels and its 3-D frequency (radians per
/// frame, row, column).
struct Plane {
    cos: usize,
    sin: usize,
    omega: [f64; 3],
}

impl Plane {
    fn angle(&self, p: [usize; 3]) -> f64 {
        self.omega.iter().zip(p).map(|(&w, x)| w * x as f64).sum()
    }
}

/// Which channel plays which part in one head (shared by the batch, as weights are).
struct HeadLayout {
    planes: Vec<Plane>,
    global: Option<usize>,
    /// The remaining channels, sorted.
    semantic: Vec<usize>,
}

impl HeadLayout {
    fn new(spec: &VideoSpec, head: usize) -> HeadLayout {
        let d = spec.dim;
        let mut rng = Rng::stream(spec.seed, &[TAG_LAYOUT, head as u64]);
        let mut channels = permutation(&mut rng, d).into_iter();
        let global = spec.has_global().then(|| channels.next().unwrap_or(0));
        // Each axis's Cauchy quantiles are cut into P strata, one per plane, in a shuffled
        // order per axis (a Latin hypercube), with a uniform jitter inside the stratum: the
        // product kernel's random-feature estimate then has no shared low-frequency phase.
        // The signs of the row and column frequencies are random (the law of ω must be
        // symmetric per axis for the product form; one axis's sign is free).
        let p = spec.planes();
        let strata: Vec<Vec<usize>> = (0..3).map(|_| permutation(&mut rng, p)).collect();
        let windows = [spec.time_window, spec.space_window, spec.space_window];
        let mut planes = Vec::with_capacity(p);
        for i in 0..p {
            let mut omega = [0f64; 3];
            for (axis, (o, (stratum, window))) in
                omega.iter_mut().zip(strata.iter().zip(windows)).enumerate()
            {
                let u = (stratum[i] as f64 + rng.uniform()) / p as f64;
                let w = (std::f64::consts::FRAC_PI_2 * u).tan() / window as f64;
                let w = w.min(std::f64::consts::PI);
                let negative = axis > 0 && rng.next_u64() >> 63 == 1;
                *o = if negative { -w } else { w };
            }
            let cos = channels.next().unwrap_or(0);
            let sin = channels.next().unwrap_or(0);
            planes.push(Plane { cos, sin, omega });
        }
        let mut semantic: Vec<usize> = channels.collect();
        semantic.sort_unstable();
        HeadLayout {
            planes,
            global,
            semantic,
        }
    }
}

/// A uniform random permutation of `0..n` (Fisher-Yates).
fn permutation(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut out: Vec<usize> = (0..n).collect();
    for i in 0..n {
        let j = i + rng.below(n - i);
        out.swap(i, j);
    }
    out
}

/// The regions of one (sequence, head): the seed points of the Voronoi cells, stored by
/// component so the nearest-seed search vectorises.
struct Regions {
    f: Vec<f32>,
    y: Vec<f32>,
    x: Vec<f32>,
    vy: Vec<f32>,
    vx: Vec<f32>,
}

impl Regions {
    fn new(spec: &VideoSpec, b: usize, h: usize) -> Regions {
        let n = spec.segments();
        let mut rng = Rng::stream(spec.seed, &[TAG_REGIONS, b as u64, h as u64]);
        let mut r = Regions {
            f: Vec::with_capacity(n),
            y: Vec::with_capacity(n),
            x: Vec::with_capacity(n),
            vy: Vec::with_capacity(n),
            vx: Vec::with_capacity(n),
        };
        let mut coordinate = |len: usize| (rng.uniform() * len as f64 - 0.5) as f32;
        for _ in 0..n {
            r.f.push(coordinate(spec.frames));
            r.y.push(coordinate(spec.height));
            r.x.push(coordinate(spec.width));
        }
        for _ in 0..n {
            r.vy.push(SEGMENT_SPEED * rng.normal());
            r.vx.push(SEGMENT_SPEED * rng.normal());
        }
        r
    }

    /// The region of grid point `[f, y, x]`: its nearest seed (the first one on a tie).
    fn region(&self, [f, y, x]: [usize; 3]) -> usize {
        let (f, y, x) = (f as f32, y as f32, x as f32);
        let mut best = (f32::INFINITY, 0);
        for i in 0..self.f.len() {
            let dt = f - self.f[i];
            let dy = y - self.y[i] - self.vy[i] * dt;
            let dx = x - self.x[i] - self.vx[i] * dt;
            let tt = TIME_WEIGHT * dt;
            let d = tt * tt + dy * dy + dx * dx;
            if d < best.0 {
                best = (d, i);
            }
        }
        best.1
    }
}

/// Everything one (sequence, head) draws from: its regions and their centroids.
struct Scene {
    regions: Regions,
    /// Key centroids, `segments × semantic.len()`, entries N(0, 1).
    centroids: Vec<f32>,
    /// Squared norm of each centroid.
    centroid_norm2: Vec<f32>,
    /// Value centroids, `segments × dim`, entries N(0, 1).
    value_centroids: Vec<f32>,
    /// Semantic channels (as in the head's layout).
    m: usize,
}

impl Scene {
    fn new(spec: &VideoSpec, layout: &HeadLayout, b: usize, h: usize) -> Scene {
        let n = spec.segments();
        let m = layout.semantic.len();
        let mut rng = Rng::stream(spec.seed, &[TAG_CENTROIDS, b as u64, h as u64]);
        let mut centroids = vec![0f32; n * m];
        rng.fill_normal(&mut centroids);
        let centroid_norm2 = centroids
            .chunks_exact(m.max(1))
            .map(|row| row.iter().map(|x| x * x).sum::<f32>().max(1e-6))
            .collect();
        let mut value_centroids = vec![0f32; n * spec.dim];
        rng.fill_normal(&mut value_centroids);
        Scene {
            regions: Regions::new(spec, b, h),
            centroids,
            centroid_norm2,
            value_centroids,
            m,
        }
    }

    fn centroid(&self, region: usize) -> &[f32] {
        &self.centroids[region * self.m..(region + 1) * self.m]
    }
}

/// The per-head factors on the planted strengths.
#[derive(Clone, Copy)]
struct HeadProfile {
    locality: f32,
    segment: f32,
    global: f32,
}

impl HeadProfile {
    fn new(spec: &VideoSpec, head: usize) -> HeadProfile {
        let mut rng = Rng::stream(spec.seed, &[TAG_HEAD, head as u64]);
        let mut factor = || (spec.head_variation * rng.normal()).exp();
        HeadProfile {
            locality: factor(),
            segment: factor(),
            global: factor(),
        }
    }
}

/// Generates the video workload `spec` describes (see the module docs for the model): q, k
/// and v are `[batch, heads, seq, dim]`, every token a query (`spec` of the result is `None`:
/// it belongs to the LLM generator; keep the [`VideoSpec`]). Rows are filled in parallel; the
/// result depends only on `spec`.
pub fn generate_video(spec: &VideoSpec) -> Result<Workload, WorkloadError> {
    spec.validate()?;
    let shape = spec.shape();
    let (d, heads, seq) = (spec.dim, spec.heads, spec.seq());
    let layouts: Vec<HeadLayout> = (0..heads).map(|h| HeadLayout::new(spec, h)).collect();
    let scenes: Vec<Scene> = (0..spec.batch * heads)
        .map(|i| Scene::new(spec, &layouts[i % heads], i / heads, i % heads))
        .collect();
    let profiles: Vec<HeadProfile> = (0..heads).map(|h| HeadProfile::new(spec, h)).collect();

    let mut k = vec![0f32; shape.kv_len()];
    let mut v = vec![0f32; shape.kv_len()];
    par_rows(d, &mut k, Some(&mut v), |row, k_row, v_row| {
        let (bh, t) = (row / seq, row % seq);
        let (b, h) = (bh / heads, bh % heads);
        let v_row = v_row.expect("value rows go with key rows");
        key_value_row(spec, &layouts[h], &scenes[bh], (b, h, t), k_row, v_row);
    });
    let mut q = vec![0f32; shape.q_len()];
    par_rows(d, &mut q, None, |row, q_row, _| {
        let (bh, t) = (row / seq, row % seq);
        let (b, h) = (bh / heads, bh % heads);
        query_row(
            spec,
            &layouts[h],
            &scenes[bh],
            profiles[h],
            (b, h, t),
            q_row,
        );
    });
    Ok(Workload {
        shape,
        spec: None,
        q,
        k,
        v,
    })
}

/// Fills key row and value row `t` of sequence `b`, head `h` (`at = (b, h, t)`).
fn key_value_row(
    spec: &VideoSpec,
    layout: &HeadLayout,
    scene: &Scene,
    at: (usize, usize, usize),
    k: &mut [f32],
    v: &mut [f32],
) {
    let (b, h, t) = at;
    let position = spec.position(t);
    let region = position.map(|p| scene.regions.region(p));
    let mut rng = Rng::stream(spec.seed, &[TAG_KEY, b as u64, h as u64, t as u64]);
    rng.fill_normal(k);
    if let Some(r) = region {
        // Unit variance per channel: centroid part and noise part add up to 1.
        let s = spec.segment_spread;
        let norm = 1.0 / (1.0 + s * s).sqrt();
        for (&ch, &x) in layout.semantic.iter().zip(scene.centroid(r)) {
            k[ch] = norm * (x + s * k[ch]);
        }
    }
    if let Some(ch) = layout.global {
        let base = if region.is_none() {
            spec.global_logit
        } else {
            0.0
        };
        k[ch] = base + CHANNEL_NOISE * k[ch];
    }
    for plane in &layout.planes {
        let (sin, cos) = match position {
            Some(p) => plane.angle(p).sin_cos(),
            None => (0.0, 0.0),
        };
        k[plane.cos] = std::f32::consts::SQRT_2 * cos as f32;
        k[plane.sin] = std::f32::consts::SQRT_2 * sin as f32;
    }

    let mut rng = Rng::stream(spec.seed, &[TAG_VALUE, b as u64, h as u64, t as u64]);
    rng.fill_normal(v);
    if let Some(r) = region {
        let rho = spec.value_coherence;
        let (a, n) = (rho.sqrt(), (1.0 - rho).sqrt());
        let centroid = &scene.value_centroids[r * spec.dim..(r + 1) * spec.dim];
        for (x, &mu) in v.iter_mut().zip(centroid) {
            *x = a * mu + n * *x;
        }
    }
}

/// Fills query row `t` of sequence `b`, head `h` (`at = (b, h, t)`).
fn query_row(
    spec: &VideoSpec,
    layout: &HeadLayout,
    scene: &Scene,
    profile: HeadProfile,
    at: (usize, usize, usize),
    q: &mut [f32],
) {
    let (b, h, t) = at;
    let sqrt_d = (spec.dim as f32).sqrt();
    let position = spec.position(t);
    let mut rng = Rng::stream(spec.seed, &[TAG_QUERY, b as u64, h as u64, t as u64]);
    let global_affinity = 1.0 + GLOBAL_JITTER * rng.normal();
    let lean = match position {
        Some(p) => scene.regions.region(p),
        None => rng.below(spec.segments()),
    };
    rng.fill_normal(q);
    // Keys are unit-variance in the semantic channels, so noise of std σ there adds logits
    // of std σ·√m/√D.
    let m = layout.semantic.len();
    let sigma = spec.noise_logit * sqrt_d / (m as f32).sqrt();
    // A key of region r has c_r/√(1+s²) in these channels, so adding a·c_r/|c_r|² to the
    // query adds a/(√(1+s²)·√D) to its logits.
    let s = spec.segment_spread;
    let a = spec.segment_logit * profile.segment * sqrt_d * (1.0 + s * s).sqrt()
        / scene.centroid_norm2[lean];
    for (&ch, &x) in layout.semantic.iter().zip(scene.centroid(lean)) {
        q[ch] = sigma * q[ch] + a * x;
    }
    if let Some(ch) = layout.global {
        q[ch] = sqrt_d * profile.global * global_affinity;
    }
    if !layout.planes.is_empty() {
        // Keys have √2·(cos, sin) in each plane: amplitude a per plane adds
        // a·√2·Σcos(ω·Δ)/√D = locality·K(Δ) with a = locality·√D/(√2·P).
        let a = spec.locality_logit * profile.locality * sqrt_d
            / (std::f32::consts::SQRT_2 * layout.planes.len() as f32);
        for plane in &layout.planes {
            let (sin, cos) = match position {
                Some(p) => plane.angle(p).sin_cos(),
                None => (0.0, 0.0),
            };
            q[plane.cos] = a * cos as f32;
            q[plane.sin] = a * sin as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::attention_logits;
    use crate::workload::mass_of_top_logits;

    fn small() -> VideoSpec {
        VideoSpec::small(4, 8, 8, 4, 64)
    }

    fn mid() -> VideoSpec {
        VideoSpec {
            text_tokens: 16,
            ..VideoSpec::small(8, 16, 16, 4, 64)
        }
    }

    /// Averages over every head and every `stride`-th query (text queries included) of the
    /// softmax mass of the top 10% and the top 1% of keys, and of the share of keys needed
    /// for 90% of the mass (the "density" of a top-p method).
    fn masses(w: &Workload, stride: usize) -> [f64; 3] {
        let s = &w.shape;
        let (mut sum, mut n) = ([0.0; 3], 0usize);
        for b in 0..s.batch {
            for h in 0..s.heads {
                let keys = w.keys(b, h);
                for r in (0..s.queries).step_by(stride) {
                    let logits = attention_logits(w.query(b, h, r), keys, w.scale());
                    sum[0] += mass_of_top_logits(&logits, 0.10);
                    sum[1] += mass_of_top_logits(&logits, 0.01);
                    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let mut p: Vec<f64> = logits.iter().map(|&l| (l - max).exp()).collect();
                    p.sort_by(|a, b| b.total_cmp(a));
                    let total: f64 = p.iter().sum();
                    let (mut acc, mut needed) = (0.0, p.len());
                    for (i, x) in p.iter().enumerate() {
                        acc += x;
                        if acc >= 0.9 * total {
                            needed = i + 1;
                            break;
                        }
                    }
                    sum[2] += needed as f64 / p.len() as f64;
                    n += 1;
                }
            }
        }
        sum.map(|x| x / n as f64)
    }

    #[test]
    fn presets_have_the_model_shapes() {
        let c = VideoSpec::cogvideox();
        assert_eq!((c.seq(), c.heads, c.dim), (17_776, 30, 64));
        let w = VideoSpec::wan480p();
        assert_eq!((w.seq(), w.heads, w.dim), (32_760, 12, 128));
        let h = VideoSpec::hunyuan720p();
        assert_eq!((h.seq(), h.heads, h.dim), (119_056, 24, 128));
        assert_eq!((c.segments(), w.segments(), h.segments()), (68, 127, 116));
        for spec in [c, w, h] {
            spec.validate().unwrap();
            let shape = spec.shape();
            assert_eq!((shape.queries, shape.seq), (spec.seq(), spec.seq()));
            assert_eq!(shape.kv_heads, spec.heads);
        }
        let s = small();
        assert_eq!((s.seq(), s.segments()), (264, 8));
        assert_eq!(s.position(0), Some([0, 0, 0]));
        assert_eq!(s.position(8 * 8 + 2 * 8 + 3), Some([1, 2, 3]));
        assert_eq!(s.position(255), Some([3, 7, 7]));
        assert_eq!(s.position(256), None);
    }

    #[test]
    fn locality_kernel_decays() {
        // Σ cos(ω·Δ)/P: 1 at 0, about e^(−|Δf|/2 − |Δy|/3 − |Δx|/3) nearby, small far away.
        let spec = VideoSpec::small(8, 16, 16, 1, 128);
        let layout = HeadLayout::new(&spec, 0);
        assert_eq!(layout.planes.len(), 32);
        let kernel = |d: [f64; 3]| {
            layout
                .planes
                .iter()
                .map(|p| (p.omega[0] * d[0] + p.omega[1] * d[1] + p.omega[2] * d[2]).cos())
                .sum::<f64>()
                / layout.planes.len() as f64
        };
        assert!((kernel([0.0; 3]) - 1.0).abs() < 1e-12);
        for d in [
            [1.0f64, 0.0, 0.0],
            [0.0, 3.0, 0.0],
            [0.0, 0.0, 3.0],
            [1.0, 1.0, 1.0],
        ] {
            let want = (-d[0] / 2.0 - d[1] / 3.0 - d[2] / 3.0).exp();
            let got = kernel(d);
            assert!((got - want).abs() < 0.2, "K({d:?}) = {got}, want {want}");
        }
        assert!(kernel([0.0, 1.0, 0.0]) > kernel([0.0, 6.0, 0.0]));
        let mut far = 0.0;
        for i in 0..20 {
            for j in 0..20 {
                far += kernel([10.0 + i as f64, 15.0 + j as f64, 30.0]).abs();
            }
        }
        assert!(far / 400.0 < 0.25, "far mean |K| = {}", far / 400.0);
    }

    #[test]
    fn generation_is_deterministic_and_row_wise() {
        let spec = small().with_batch(2);
        let a = generate_video(&spec).unwrap();
        let b = generate_video(&spec).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.shape, spec.shape());
        assert_eq!(a.q.len(), 2 * 4 * 264 * 64);
        let c = generate_video(&spec.clone().with_seed(1)).unwrap();
        assert_ne!(a.q, c.q);
        assert_ne!(a.k, c.k);
        assert_ne!(a.v, c.v);
        // One row computed on its own equals the same row of the parallel generation.
        let (bb, h, t) = (1, 2, 77);
        let layout = HeadLayout::new(&spec, h);
        let scene = Scene::new(&spec, &layout, bb, h);
        let (mut k, mut v) = (vec![0f32; 64], vec![0f32; 64]);
        key_value_row(&spec, &layout, &scene, (bb, h, t), &mut k, &mut v);
        assert_eq!(a.keys(bb, h)[t * 64..(t + 1) * 64], k[..]);
        assert_eq!(a.values(bb, h)[t * 64..(t + 1) * 64], v[..]);
        let mut q = vec![0f32; 64];
        let profile = HeadProfile::new(&spec, h);
        query_row(&spec, &layout, &scene, profile, (bb, h, t), &mut q);
        assert_eq!(a.query(bb, h, t), &q[..]);
    }

    #[test]
    fn bad_specs_are_refused() {
        let cases = [
            VideoSpec {
                frames: 0,
                ..small()
            },
            VideoSpec {
                height: 0,
                ..small()
            },
            VideoSpec {
                width: 0,
                ..small()
            },
            VideoSpec {
                heads: 0,
                ..small()
            },
            VideoSpec {
                batch: 0,
                ..small()
            },
            VideoSpec { dim: 0, ..small() },
            VideoSpec { dim: 4, ..small() },
            VideoSpec {
                tokens_per_segment: 0,
                ..small()
            },
            VideoSpec {
                time_window: 0.0,
                ..small()
            },
            VideoSpec {
                segment_logit: f32::NAN,
                ..small()
            },
            VideoSpec {
                noise_logit: -1.0,
                ..small()
            },
            VideoSpec {
                value_coherence: 1.5,
                ..small()
            },
            VideoSpec {
                frames: usize::MAX / 2,
                ..small()
            },
        ];
        for spec in cases {
            assert!(
                matches!(generate_video(&spec), Err(WorkloadError::InvalidSpec(_))),
                "{spec:?}"
            );
        }
        // No text and no locality: every channel is semantic, still valid.
        let plain = VideoSpec {
            text_tokens: 0,
            locality_logit: 0.0,
            dim: 2,
            ..small()
        };
        assert!(generate_video(&plain).is_ok());
    }

    #[test]
    fn attention_is_sparse_but_not_degenerate() {
        for seed in 0..4 {
            for (name, spec, stride) in [("small", small(), 1), ("mid", mid(), 7)] {
                let w = generate_video(&spec.with_seed(seed)).unwrap();
                let [ten, one, density] = masses(&w, stride);
                eprintln!(
                    "{name} seed {seed}: top 10% {ten:.3}, top 1% {one:.3}, 90% of the mass \
                     in {density:.3} of the keys"
                );
                assert!(ten >= 0.70, "{name} seed {seed}: top 10% holds {ten}");
                assert!(one <= 0.90, "{name} seed {seed}: top 1% holds {one}");
            }
        }
    }

    /// The numbers of the module docs for the presets (a few heads of each; a minute or so):
    /// `cargo test --release -p kiln-algorithms --lib video::tests::preset -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn preset_sparsity_report() {
        for (name, spec) in [
            ("cogvideox", VideoSpec::cogvideox()),
            ("wan480p", VideoSpec::wan480p()),
            ("hunyuan720p", VideoSpec::hunyuan720p()),
        ] {
            let spec = spec.with_heads(6);
            let start = std::time::Instant::now();
            let w = generate_video(&spec).unwrap();
            let seconds = start.elapsed().as_secs_f64();
            let [ten, one, density] = masses(&w, spec.seq() / 100);
            eprintln!(
                "{name} (6 heads, generated in {seconds:.2} s): top 10% {ten:.3}, top 1% \
                 {one:.3}, 90% of the mass in {density:.3} of the keys"
            );
        }
    }

    #[test]
    fn regions_are_compact_persistent_and_alike() {
        let spec = mid();
        let w = generate_video(&spec).unwrap();
        let (b, h) = (0, 1);
        let map = spec.segment_map(b, h);
        let n = spec.segments();
        assert_eq!(map.len(), spec.seq());
        assert!(map[spec.grid_tokens()..].iter().all(|&r| r == n));
        for t in [0, 100, 1000, 2047, 2050] {
            assert_eq!(spec.segment_of(b, h, t), map[t]);
        }
        // Most regions are present in several frames.
        let mut frames = vec![std::collections::BTreeSet::new(); n];
        for t in 0..spec.grid_tokens() {
            frames[map[t]].insert(spec.position(t).unwrap()[0]);
        }
        let persistent = frames.iter().filter(|f| f.len() >= 3).count();
        assert!(persistent * 4 >= n * 3, "{frames:?}");
        // Neighbours along a row usually share a region; raster-order runs are short.
        let same_right = (0..spec.grid_tokens() - 1)
            .filter(|&t| spec.position(t).unwrap()[2] + 1 < spec.width)
            .filter(|&t| map[t] == map[t + 1])
            .count() as f64
            / (spec.grid_tokens() - spec.frames * spec.height) as f64;
        assert!(same_right > 0.8, "{same_right}");
        // Keys of one region are more alike than keys of different regions.
        let keys = w.keys(b, h);
        let d = spec.dim;
        let cosine = |i: usize, j: usize| {
            let (a, c) = (&keys[i * d..(i + 1) * d], &keys[j * d..(j + 1) * d]);
            let dot: f32 = a.iter().zip(c).map(|(x, y)| x * y).sum();
            let na: f32 = a.iter().map(|x| x * x).sum();
            let nc: f32 = c.iter().map(|x| x * x).sum();
            dot / (na * nc).sqrt()
        };
        let (mut same, mut ns, mut other, mut no) = (0.0, 0, 0.0, 0);
        let mut rng = Rng::new(5);
        for _ in 0..20_000 {
            let (i, j) = (rng.below(spec.grid_tokens()), rng.below(spec.grid_tokens()));
            if i == j {
                continue;
            }
            if map[i] == map[j] {
                same += cosine(i, j);
                ns += 1;
            } else {
                other += cosine(i, j);
                no += 1;
            }
        }
        let (same, other) = (same / ns as f32, other / no as f32);
        eprintln!("mean key cosine: same region {same:.3}, other regions {other:.3}");
        assert!(same > other + 0.2, "same {same}, other {other}");
    }

    #[test]
    fn magnitudes_are_bf16_safe_and_keys_unit_variance() {
        let spec = mid();
        let w = generate_video(&spec).unwrap();
        let max = |x: &[f32]| x.iter().fold(0f32, |m, &y| m.max(y.abs()));
        let (mq, mk, mv) = (max(&w.q), max(&w.k), max(&w.v));
        assert!(mq < 100.0 && mk < 100.0 && mv < 100.0, "{mq} {mk} {mv}");
        // Per-channel key variance over the grid tokens of one head.
        let keys = w.keys(0, 0);
        let g = spec.grid_tokens();
        for ch in 0..spec.dim {
            let var = (0..g).map(|t| keys[t * spec.dim + ch].powi(2)).sum::<f32>() / g as f32;
            let layout = HeadLayout::new(&spec, 0);
            if layout.global == Some(ch) {
                assert!(var < 0.1, "global channel {var}");
            } else {
                assert!((0.2..4.0).contains(&var), "channel {ch}: {var}");
            }
        }
    }
}
