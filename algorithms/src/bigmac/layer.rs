//! The host API: [`MoeLayer`], one MoE layer in either structure (BigMac's DCCA or the
//! fine-grained CDAC peer), forward on one GPU (or the emulator).

use std::sync::Arc;

use super::kernels::{
    grouped_gemm, moe_combine, moe_gate, slot_maps, GATE_TOKENS, GEMM_THREADS, MAX_EXPERTS, TILE,
};
use crate::adacluster::kmeans::{
    cluster_count, cluster_offsets, cluster_scatter, MAX_CLUSTERS, SORT_TILE,
};
use crate::tuning::Variants;
use crate::verify::Real;
use kiln::{Device, DeviceBuffer, Kernel, LaunchConfig, RuntimeError};

/// Where a layer's all-to-all would run, and so the shape of its experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    /// Communicate-descend-ascend-communicate (DeepSeekMoE-like): dispatch at width `h`,
    /// experts `h → r·h → h`, combine at `h`.
    Cdac,
    /// Descend-communicate-communicate-ascend: `x·W↓` (`h → r·h`) once, dispatch at `r·h`,
    /// experts `r·h → h → r·h`, combine at `r·h`, then `·W↑` (`r·h → h`).
    BigMac,
}

/// The sizes of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeShape {
    /// Model width `h` (a multiple of 64).
    pub hidden: u32,
    /// The low width `r·h` (a multiple of 64).
    pub low: u32,
    /// Experts (at most 64).
    pub experts: u32,
    /// Experts per token.
    pub top_k: u32,
}

impl MoeShape {
    /// The width tokens are dispatched and combined at: what an all-to-all would send per
    /// routed token.
    pub fn dispatch_width(&self, s: Structure) -> u32 {
        match s {
            Structure::Cdac => self.hidden,
            Structure::BigMac => self.low,
        }
    }

    /// `(in, mid)` of every expert: `in → mid → in`.
    pub fn expert_dims(&self, s: Structure) -> (u32, u32) {
        match s {
            Structure::Cdac => (self.hidden, self.low),
            Structure::BigMac => (self.low, self.hidden),
        }
    }
}

/// The top-k values [`moe_gate`] is built for.
pub const TOP_K: [u32; 5] = [1, 2, 4, 6, 8];

/// A layer's weights, row-major, as the element type: `gate` `[h, E]`, `up` `[E, in, mid]`,
/// `down` `[E, mid, in]`, and for BigMac `descend` `[h, r·h]` and `ascend` `[r·h, h]`.
pub struct MoeWeights<T> {
    /// The router.
    pub gate: Vec<T>,
    /// Every expert's first projection.
    pub up: Vec<T>,
    /// Every expert's second projection.
    pub down: Vec<T>,
    /// BigMac's entry projection (empty for CDAC).
    pub descend: Vec<T>,
    /// BigMac's exit projection (empty for CDAC).
    pub ascend: Vec<T>,
}

/// The routing of the last call: experts and gate weights `[tokens, k]`, and the sort.
pub struct Routing {
    /// Chosen experts.
    pub ids: DeviceBuffer<u32>,
    /// Their gate weights.
    pub weights: DeviceBuffer<f32>,
    /// Where each expert's rows start `[E + 1]`.
    pub start: DeviceBuffer<u32>,
}

/// One MoE layer on a device. `forward` runs: gate (softmax, top-k, optional balancing
/// bias), a stable sort of the routing slots by expert, the experts as grouped GEMMs (one
/// launch per projection for all experts, SiLU fused into the first), and the gate-weighted
/// combine — plus BigMac's descend and ascend, as one-group grouped GEMMs.
pub struct MoeLayer<T: Real> {
    device: Device,
    /// The structure.
    pub structure: Structure,
    /// The sizes.
    pub shape: MoeShape,
    /// Renormalise the chosen experts' weights to sum to 1.
    pub normalise: bool,
    bias: Option<DeviceBuffer<f32>>,
    gate: DeviceBuffer<T>,
    up: DeviceBuffer<T>,
    down: DeviceBuffer<T>,
    descend: DeviceBuffer<T>,
    ascend: DeviceBuffer<T>,
    kernels: Variants<(&'static str, bool, bool)>,
}

fn launch(grid: (u32, u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid,
        block: (threads, 1, 1),
        dyn_shared_bytes: 0,
    }
}

fn refuse(m: String) -> RuntimeError {
    RuntimeError::InvalidInput {
        what: "MoE layer",
        reason: m,
    }
}

impl<T: Real> MoeLayer<T> {
    /// A layer of `structure` and `shape` with `weights` (see [`MoeWeights`] for the
    /// layouts) and, optionally, the auxiliary-loss-free balancing `bias` `[E]`.
    pub fn new(
        device: &Device,
        structure: Structure,
        shape: MoeShape,
        weights: &MoeWeights<T>,
        bias: Option<&[f32]>,
    ) -> Result<Self, RuntimeError> {
        let s = shape;
        if s.hidden == 0 || s.low == 0 || !s.hidden.is_multiple_of(64) || !s.low.is_multiple_of(64)
        {
            return Err(refuse(format!(
                "widths {} and {} must be positive multiples of 64",
                s.hidden, s.low
            )));
        }
        if s.experts == 0 || s.experts > MAX_EXPERTS.min(MAX_CLUSTERS) {
            return Err(refuse(format!(
                "{} experts (1 to {MAX_EXPERTS})",
                s.experts
            )));
        }
        if !TOP_K.contains(&s.top_k) || s.top_k > s.experts {
            return Err(refuse(format!(
                "top-{} of {} experts (k one of {TOP_K:?}, at most the experts)",
                s.top_k, s.experts
            )));
        }
        let (h, low, e) = (s.hidden as usize, s.low as usize, s.experts as usize);
        let (inw, mid) = s.expert_dims(structure);
        let expert = e * inw as usize * mid as usize;
        let dense = if structure == Structure::BigMac {
            h * low
        } else {
            0
        };
        for (name, got, want) in [
            ("gate", weights.gate.len(), h * e),
            ("up", weights.up.len(), expert),
            ("down", weights.down.len(), expert),
            ("descend", weights.descend.len(), dense),
            ("ascend", weights.ascend.len(), dense),
        ] {
            if got != want {
                return Err(refuse(format!(
                    "`{name}` holds {got} weights, {structure:?} with {s:?} needs {want}"
                )));
            }
        }
        if let Some(b) = bias {
            if b.len() != e {
                return Err(refuse(format!("bias of {} for {e} experts", b.len())));
            }
        }
        // an unused (empty) matrix is one placeholder element
        let up = |v: &[T]| {
            if v.is_empty() {
                device.zeros::<T>(1)
            } else {
                device.upload(v)
            }
        };
        Ok(MoeLayer {
            device: device.clone(),
            structure,
            shape,
            normalise: true,
            bias: bias.map(|b| device.upload(b)).transpose()?,
            gate: up(&weights.gate)?,
            up: up(&weights.up)?,
            down: up(&weights.down)?,
            descend: up(&weights.descend)?,
            ascend: up(&weights.ascend)?,
            kernels: Variants::default(),
        })
    }

    fn kernel(&self, name: &'static str, a: bool, b: bool) -> Result<Arc<Kernel>, RuntimeError> {
        let dev = &self.device;
        self.kernels.get(&(name, a, b), || match name {
            "gate" => moe_gate::spec().t(T::DTYPE).k(self.shape.top_k).build(dev),
            "count" => cluster_count::spec().build(dev),
            "offsets" => cluster_offsets::spec().build(dev),
            "scatter" => cluster_scatter::spec().build(dev),
            "maps" => slot_maps::spec().build(dev),
            "combine" => moe_combine::spec().t(T::DTYPE).build(dev),
            _ => grouped_gemm::spec()
                .t(T::DTYPE)
                .gather(a)
                .silu(b)
                .build(dev),
        })
    }

    /// `y = a·W` per group on rows grouped by `start`/`blocks` (see [`grouped_gemm`]).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        a: &DeviceBuffer<T>,
        rows: Option<&DeviceBuffer<u32>>,
        w: &DeviceBuffer<T>,
        (start, blocks, groups): (&DeviceBuffer<u32>, &DeviceBuffer<u32>, u32),
        y: &mut DeviceBuffer<T>,
        (k, n): (u32, u32),
        silu: bool,
    ) -> Result<(), RuntimeError> {
        let m = (y.len() / n as usize) as u32;
        let gather = rows.is_some();
        let none;
        let rows = match rows {
            Some(r) => r,
            None => {
                none = self.device.zeros::<u32>(1)?;
                &none
            }
        };
        grouped_gemm::launch(
            &*self.kernel("gemm", gather, silu)?,
            &launch(
                (n.div_ceil(TILE), m.div_ceil(TILE) + groups, 1),
                GEMM_THREADS,
            ),
            a,
            rows,
            w,
            start,
            blocks,
            y,
            groups,
            k,
            n,
        )
    }

    /// The layer on `x` `[tokens, h]`: returns `y` `[tokens, h]` and the routing.
    pub fn forward(&self, x: &DeviceBuffer<T>) -> Result<(DeviceBuffer<T>, Routing), RuntimeError> {
        let s = self.shape;
        let dev = &self.device;
        if x.is_empty() || !x.len().is_multiple_of(s.hidden as usize) {
            return Err(refuse(format!(
                "x holds {} elements, not a positive number of rows of {}",
                x.len(),
                s.hidden
            )));
        }
        let tokens = (x.len() / s.hidden as usize) as u32;
        let (kk, e) = (s.top_k, s.experts);
        let slots = tokens * kk;
        let mut ids = dev.zeros::<u32>(slots as usize)?;
        let mut weights = dev.zeros::<f32>(slots as usize)?;
        let no_bias;
        let bias = match &self.bias {
            Some(b) => b,
            None => {
                no_bias = dev.zeros::<f32>(1)?;
                &no_bias
            }
        };
        moe_gate::launch(
            &*self.kernel("gate", false, false)?,
            &launch((tokens.div_ceil(GATE_TOKENS), 1, 1), 256),
            x,
            &self.gate,
            bias,
            &mut ids,
            &mut weights,
            tokens,
            s.hidden,
            e,
            self.bias.is_some(),
            self.normalise,
        )?;
        // the stable sort of the slots by expert
        let tiles = slots.div_ceil(SORT_TILE);
        let mut counts = dev.zeros::<u32>((e * tiles) as usize)?;
        let mut start = dev.zeros::<u32>(e as usize + 1)?;
        let mut blocks = dev.zeros::<u32>(e as usize + 1)?;
        let mut order = dev.zeros::<u32>(slots as usize)?;
        cluster_count::launch(
            &*self.kernel("count", false, false)?,
            &launch((tiles, 1, 1), SORT_TILE),
            &ids,
            &mut counts,
            slots,
            e,
            tiles,
        )?;
        cluster_offsets::launch(
            &*self.kernel("offsets", false, false)?,
            &launch((1, 1, 1), 512),
            &mut counts,
            &mut start,
            &mut blocks,
            e,
            tiles,
        )?;
        cluster_scatter::launch(
            &*self.kernel("scatter", false, false)?,
            &launch((tiles, 1, 1), SORT_TILE),
            &ids,
            &counts,
            &mut order,
            slots,
            e,
            tiles,
        )?;
        let mut inv = dev.zeros::<u32>(slots as usize)?;
        let mut rows = dev.zeros::<u32>(slots as usize)?;
        slot_maps::launch(
            &*self.kernel("maps", false, false)?,
            &launch((slots.div_ceil(256), 1, 1), 256),
            &order,
            &mut inv,
            &mut rows,
            slots,
            kk,
        )?;
        let experts = (&start, &blocks, e);
        let one_start = dev.upload(&[0, tokens])?;
        let one_blocks = dev.upload(&[0, tokens.div_ceil(TILE)])?;
        let whole = (&one_start, &one_blocks, 1u32);
        let (inw, mid) = s.expert_dims(self.structure);
        let mut entry_buf;
        let entry = match self.structure {
            Structure::Cdac => x,
            Structure::BigMac => {
                entry_buf = dev.zeros::<T>((tokens * s.low) as usize)?;
                self.gemm(
                    x,
                    None,
                    &self.descend,
                    whole,
                    &mut entry_buf,
                    (s.hidden, s.low),
                    false,
                )?;
                &entry_buf
            }
        };
        let mut y1 = dev.zeros::<T>((slots * mid) as usize)?;
        self.gemm(
            entry,
            Some(&rows),
            &self.up,
            experts,
            &mut y1,
            (inw, mid),
            true,
        )?;
        let mut y2 = dev.zeros::<T>((slots * inw) as usize)?;
        self.gemm(&y1, None, &self.down, experts, &mut y2, (mid, inw), false)?;
        let mut combined = dev.zeros::<T>((tokens * inw) as usize)?;
        moe_combine::launch(
            &*self.kernel("combine", false, false)?,
            &launch(((tokens * inw / 8).div_ceil(256), 1, 1), 256),
            &y2,
            &inv,
            &weights,
            &mut combined,
            tokens,
            inw,
            kk,
        )?;
        let y = match self.structure {
            Structure::Cdac => combined,
            Structure::BigMac => {
                let mut y = dev.zeros::<T>((tokens * s.hidden) as usize)?;
                self.gemm(
                    &combined,
                    None,
                    &self.ascend,
                    whole,
                    &mut y,
                    (s.low, s.hidden),
                    false,
                )?;
                y
            }
        };
        Ok((
            y,
            Routing {
                ids,
                weights,
                start,
            },
        ))
    }
}
