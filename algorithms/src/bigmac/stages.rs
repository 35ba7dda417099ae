//! The launches every MoE layer is made of, on one device: the gate, the stable sort of the
//! routing slots by expert with its slot maps, the grouped GEMM, the combine and a row
//! permutation. [`super::layer::MoeLayer`] (one device) and
//! [`super::parallel::ParallelMoeLayer`] (one [`Stages`] per rank) both run their layers
//! through these, so the two cannot drift apart.

use std::sync::Arc;

use super::hopper::WgmmaGrouped;
use super::kernels::{
    grouped_gemm, moe_combine, moe_gate, slot_maps, GATE_TOKENS, GEMM_THREADS, TILE,
};
use super::layer::{MoeShape, Routing, Structure};
use crate::adacluster::attention::permute_rows;
use crate::adacluster::kmeans::{cluster_count, cluster_offsets, cluster_scatter, SORT_TILE};
use crate::gemm::hopper::WgmmaGemm;
use crate::tuning::Variants;
use crate::verify::Real;
use kiln::{Device, DeviceBuffer, Kernel, LaunchConfig, RuntimeError};

pub(crate) fn launch(grid: (u32, u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid,
        block: (threads, 1, 1),
        dyn_shared_bytes: 0,
    }
}

/// The buffers a layer call routes its tokens with, the same on one device and on each rank
/// of the expert-parallel layer: the routing, the sort by expert, the one-group offsets of
/// the dense descend and ascend, and (BigMac) the low-width rows before dispatch and after
/// combine.
pub(crate) struct RouteScratch<T: Real> {
    /// The token count these buffers are sized for.
    pub tokens: u32,
    /// Chosen experts, gate weights and each expert's first row.
    pub routing: Routing,
    /// The sort's buffers (see [`SortBuffers`]): per-tile counts, each expert's 128-row
    /// pieces, sorted position → slot, slot → sorted position, and each sorted row's token.
    pub counts: DeviceBuffer<u32>,
    pub blocks: DeviceBuffer<u32>,
    pub order: DeviceBuffer<u32>,
    pub inv: DeviceBuffer<u32>,
    pub rows: DeviceBuffer<u32>,
    /// `[0, tokens]` and its 128-row pieces `[0, ⌈tokens / 128⌉]`: the one group of a dense
    /// (one-weight) projection.
    pub one_start: DeviceBuffer<u32>,
    pub one_blocks: DeviceBuffer<u32>,
    /// BigMac's descended rows `[tokens, low]` (one element for CDAC).
    pub entry: DeviceBuffer<T>,
    /// BigMac's combined rows `[tokens, low]` before the ascend (one element for CDAC).
    pub combined: DeviceBuffer<T>,
}

impl<T: Real> RouteScratch<T> {
    /// Buffers for `tokens` tokens of a layer of shape `s` and structure `st`.
    pub fn new(
        dev: &Device,
        st: Structure,
        s: MoeShape,
        tokens: u32,
    ) -> Result<Self, RuntimeError> {
        let slots = (tokens * s.top_k) as usize;
        let e = s.experts as usize;
        let tiles = slots.div_ceil(SORT_TILE as usize);
        let low_rows = if st == Structure::BigMac {
            tokens as usize * s.low as usize
        } else {
            1
        };
        Ok(RouteScratch {
            tokens,
            routing: Routing {
                ids: dev.zeros(slots)?,
                weights: dev.zeros(slots)?,
                start: dev.zeros(e + 1)?,
            },
            counts: dev.zeros(e * tiles)?,
            blocks: dev.zeros(e + 1)?,
            order: dev.zeros(slots)?,
            inv: dev.zeros(slots)?,
            rows: dev.zeros(slots)?,
            one_start: dev.upload(&[0, tokens])?,
            one_blocks: dev.upload(&[0, tokens.div_ceil(TILE)])?,
            entry: dev.zeros(low_rows)?,
            combined: dev.zeros(low_rows)?,
        })
    }

    /// The sort's buffers, over the routing's chosen experts.
    pub fn sort_buffers(&mut self) -> SortBuffers<'_> {
        SortBuffers {
            ids: &self.routing.ids,
            counts: &mut self.counts,
            start: &mut self.routing.start,
            blocks: &mut self.blocks,
            order: &mut self.order,
            inv: &mut self.inv,
            rows: &mut self.rows,
        }
    }
}

/// The buffers of the sort of `slots` routing slots by expert.
pub(crate) struct SortBuffers<'a> {
    /// Chosen experts `[slots]` (input).
    pub ids: &'a DeviceBuffer<u32>,
    /// Per-tile counts, `[experts · tiles]` (scratch).
    pub counts: &'a mut DeviceBuffer<u32>,
    /// Where each expert's rows start `[experts + 1]`.
    pub start: &'a mut DeviceBuffer<u32>,
    /// The prefix sums of each expert's 128-row pieces `[experts + 1]`.
    pub blocks: &'a mut DeviceBuffer<u32>,
    /// Sorted position → slot `[slots]`.
    pub order: &'a mut DeviceBuffer<u32>,
    /// Slot → sorted position `[slots]`.
    pub inv: &'a mut DeviceBuffer<u32>,
    /// Sorted position → token `[slots]`.
    pub rows: &'a mut DeviceBuffer<u32>,
}

/// One device's MoE launches with their kernels built once (per element type, top-k and
/// width).
pub(crate) struct Stages<T: Real> {
    device: Device,
    top_k: u32,
    kernels: Variants<(&'static str, u32, bool, bool)>,
    /// The row list of a projection that gathers nothing (never read).
    no_rows: DeviceBuffer<u32>,
    /// The bias of a gate without one (never read).
    no_bias: DeviceBuffer<f32>,
    /// On an sm_90 GPU, the Hopper grouped GEMMs (SiLU off, on) that take every projection
    /// whose rows need no gather.
    hopper: Option<[WgmmaGrouped; 2]>,
    _t: std::marker::PhantomData<T>,
}

impl<T: Real> Stages<T> {
    pub fn new(device: &Device, top_k: u32) -> Result<Self, RuntimeError> {
        Ok(Stages {
            device: device.clone(),
            top_k,
            kernels: Variants::default(),
            no_rows: device.zeros(1)?,
            no_bias: device.zeros(1)?,
            hopper: match device.is_gpu() && WgmmaGemm::supported(device) {
                true => Some([
                    WgmmaGrouped::new(device, T::DTYPE, false)?,
                    WgmmaGrouped::new(device, T::DTYPE, true)?,
                ]),
                false => None,
            },
            _t: std::marker::PhantomData,
        })
    }

    /// Whether ungathered projections run on the Hopper grouped GEMM.
    pub fn on_hopper(&self) -> bool {
        self.hopper.is_some()
    }

    /// These stages on the `mma.sync` grouped GEMM only.
    pub fn without_hopper(mut self) -> Self {
        self.hopper = None;
        self
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn kernel(
        &self,
        name: &'static str,
        d: u32,
        a: bool,
        b: bool,
    ) -> Result<Arc<Kernel>, RuntimeError> {
        let dev = &self.device;
        self.kernels.get(&(name, d, a, b), || match name {
            "gate" => moe_gate::spec().t(T::DTYPE).k(self.top_k).build(dev),
            "count" => cluster_count::spec().build(dev),
            "offsets" => cluster_offsets::spec().build(dev),
            "scatter" => cluster_scatter::spec().build(dev),
            "maps" => slot_maps::spec().build(dev),
            "combine" => moe_combine::spec().t(T::DTYPE).build(dev),
            "permute" => permute_rows::spec().t(T::DTYPE).d(d).build(dev),
            _ => grouped_gemm::spec()
                .t(T::DTYPE)
                .gather(a)
                .silu(b)
                .build(dev),
        })
    }

    /// Routes `tokens` tokens of `x` (`[tokens, h]`) by `w` (`[h, e]`) into `ids`/`weights`.
    #[allow(clippy::too_many_arguments)]
    pub fn gate(
        &self,
        x: &DeviceBuffer<T>,
        w: &DeviceBuffer<T>,
        bias: Option<&DeviceBuffer<f32>>,
        ids: &mut DeviceBuffer<u32>,
        weights: &mut DeviceBuffer<f32>,
        (tokens, h, e): (u32, u32, u32),
        normalise: bool,
    ) -> Result<(), RuntimeError> {
        moe_gate::launch(
            &*self.kernel("gate", 0, false, false)?,
            &launch((tokens.div_ceil(GATE_TOKENS), 1, 1), 256),
            x,
            w,
            bias.unwrap_or(&self.no_bias),
            ids,
            weights,
            tokens,
            h,
            e,
            bias.is_some(),
            normalise,
        )
    }

    /// The stable sort of `slots` routing slots over `e` experts, and its slot maps.
    pub fn sort(&self, b: SortBuffers<'_>, slots: u32, e: u32) -> Result<(), RuntimeError> {
        let tiles = slots.div_ceil(SORT_TILE);
        cluster_count::launch(
            &*self.kernel("count", 0, false, false)?,
            &launch((tiles, 1, 1), SORT_TILE),
            b.ids,
            b.counts,
            slots,
            e,
            tiles,
        )?;
        cluster_offsets::launch(
            &*self.kernel("offsets", 0, false, false)?,
            &launch((1, 1, 1), 512),
            b.counts,
            b.start,
            b.blocks,
            e,
            tiles,
        )?;
        cluster_scatter::launch(
            &*self.kernel("scatter", 0, false, false)?,
            &launch((tiles, 1, 1), SORT_TILE),
            b.ids,
            b.counts,
            b.order,
            slots,
            e,
            tiles,
        )?;
        slot_maps::launch(
            &*self.kernel("maps", 0, false, false)?,
            &launch((slots.div_ceil(256), 1, 1), 256),
            b.order,
            b.inv,
            b.rows,
            slots,
            self.top_k,
        )
    }

    /// `y = act(a·W_g)` per group on the first `m` rows of `y`, grouped by `start`/`blocks`
    /// (see [`grouped_gemm`]); `rows` gathers the rows of `a` when given. Without a gather,
    /// on an sm_90 GPU, the Hopper grouped GEMM runs it ([`WgmmaGrouped`]).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        a: &DeviceBuffer<T>,
        rows: Option<&DeviceBuffer<u32>>,
        w: &DeviceBuffer<T>,
        (start, blocks, groups): (&DeviceBuffer<u32>, &DeviceBuffer<u32>, u32),
        y: &mut DeviceBuffer<T>,
        m: u32,
        (k, n): (u32, u32),
        silu: bool,
    ) -> Result<(), RuntimeError> {
        if m == 0 {
            return Ok(());
        }
        if let (Some(h), None) = (&self.hopper, rows) {
            let pieces = m.div_ceil(TILE) + groups;
            return h[silu as usize].run(a, w, (start, blocks, groups, pieces), y, (k, n));
        }
        let gather = rows.is_some();
        let rows = rows.unwrap_or(&self.no_rows);
        grouped_gemm::launch(
            &*self.kernel("gemm", 0, gather, silu)?,
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

    /// `out[t] = Σ_j weights[t·k + j] · y[inv[t·k + j]]` for `tokens` tokens of width `n`.
    #[allow(clippy::too_many_arguments)]
    pub fn combine(
        &self,
        y: &DeviceBuffer<T>,
        inv: &DeviceBuffer<u32>,
        weights: &DeviceBuffer<f32>,
        out: &mut DeviceBuffer<T>,
        tokens: u32,
        n: u32,
    ) -> Result<(), RuntimeError> {
        moe_combine::launch(
            &*self.kernel("combine", 0, false, false)?,
            &launch(((tokens * n / 8).div_ceil(256), 1, 1), 256),
            y,
            inv,
            weights,
            out,
            tokens,
            n,
            self.top_k,
        )
    }

    /// `out[pos] = x[order[pos]]` for `n` rows of `width` elements (AdaCluster's
    /// [`permute_rows`]): the gather of a layer's tokens into the order they are sent in, and
    /// back.
    pub fn permute(
        &self,
        x: &DeviceBuffer<T>,
        order: &DeviceBuffer<u32>,
        out: &mut DeviceBuffer<T>,
        n: u32,
        width: u32,
    ) -> Result<(), RuntimeError> {
        if n == 0 {
            return Ok(());
        }
        permute_rows::launch(
            &*self.kernel("permute", width, false, false)?,
            &launch(((n * width / 8).div_ceil(256), 1, 1), 256),
            x,
            order,
            out,
            n,
        )
    }
}
