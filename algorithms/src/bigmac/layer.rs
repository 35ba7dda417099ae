//! The host API: [`MoeLayer`], one MoE layer in either structure (BigMac's DCCA or the
//! fine-grained CDAC peer), forward on one GPU (or the emulator).

use super::kernels::MAX_EXPERTS;
use super::stages::{RouteScratch, Stages};
use crate::adacluster::kmeans::MAX_CLUSTERS;
use crate::verify::Real;
use kiln::{Device, DeviceBuffer, Event, RuntimeError};

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

/// Checks a layer's shape, its weights' sizes (see [`MoeWeights`]) and its bias: what
/// [`MoeLayer::new`] and the expert-parallel layer refuse, and why.
pub(crate) fn validate<T: Real>(
    structure: Structure,
    shape: MoeShape,
    weights: &MoeWeights<T>,
    bias: Option<&[f32]>,
) -> Result<(), RuntimeError> {
    let s = shape;

    if s.hidden == 0 || s.low == 0 || !s.hidden.is_multiple_of(64) || !s.low.is_multiple_of(64) {
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
    Ok(())
}

/// One MoE layer on a device. `forward` runs: gate (softmax, top-k, optional balancing
/// bias), a stable sort of the routing slots by expert, the experts as grouped GEMMs (one
/// launch per projection for all experts, SiLU fused into the first), and the gate-weighted
/// combine — plus BigMac's descend and ascend, as one-group grouped GEMMs.
pub struct MoeLayer<T: Real> {
    device: Device,
    structure: Structure,
    shape: MoeShape,
    /// Renormalise the chosen experts' weights to sum to 1.
    pub normalise: bool,
    bias: Option<DeviceBuffer<f32>>,
    gate: DeviceBuffer<T>,
    up: DeviceBuffer<T>,
    down: DeviceBuffer<T>,
    descend: DeviceBuffer<T>,
    ascend: DeviceBuffer<T>,
    stages: Stages<T>,
    scratch: Option<Scratch<T>>,
}

pub(crate) fn refuse(m: String) -> RuntimeError {
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
        validate(structure, shape, weights, bias)?;
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
            stages: Stages::new(device, shape.top_k)?,
            scratch: None,
        })
    }

    /// The structure.
    pub fn structure(&self) -> Structure {
        self.structure
    }

    /// The sizes.
    pub fn shape(&self) -> MoeShape {
        self.shape
    }

    /// Whether the projections run on the Hopper grouped GEMM (an sm_90 GPU) rather than
    /// the `mma.sync` one.
    pub fn on_hopper(&self) -> bool {
        self.stages.on_hopper()
    }

    /// The same layer on the `mma.sync` grouped GEMM on every architecture (what the bench
    /// compares the Hopper path with).
    pub fn without_hopper(mut self) -> Self {
        self.stages = self.stages.without_hopper();
        self.scratch = None;
        self
    }

    /// The layer on `x` `[tokens, h]`: a new `y` `[tokens, h]` (see [`MoeLayer::forward_into`]).
    pub fn forward(&mut self, x: &DeviceBuffer<T>) -> Result<DeviceBuffer<T>, RuntimeError> {
        let mut y = self
            .device
            .zeros::<T>(x.len() / self.shape.hidden as usize * self.shape.hidden as usize)?;
        self.forward_into(x, &mut y)?;
        Ok(y)
    }

    /// The routing of the last call.
    pub fn routing(&self) -> Option<&Routing> {
        self.scratch.as_ref().map(|s| &s.route.routing)
    }

    /// The layer on `x` `[tokens, h]` into `y` (the same shape). The scratch buffers are
    /// kept between calls of the same token count, so a steady caller allocates nothing.
    pub fn forward_into(
        &mut self,
        x: &DeviceBuffer<T>,
        y: &mut DeviceBuffer<T>,
    ) -> Result<(), RuntimeError> {
        let s = self.shape;
        if x.is_empty() || !x.len().is_multiple_of(s.hidden as usize) || y.len() != x.len() {
            return Err(refuse(format!(
                "x holds {} elements and y {}: both must be the same positive number of rows of {}",
                x.len(),
                y.len(),
                s.hidden
            )));
        }
        let tokens = x.len() / s.hidden as usize;
        let (inw, mid) = s.expert_dims(self.structure);
        let widest = tokens * s.top_k as usize * inw.max(mid).max(s.hidden) as usize;
        if widest >= 1 << 32 {
            return Err(refuse(format!(
                "{tokens} tokens × top-{} × width {} = {widest} elements; the kernels index with 32 bits: split the batch",
                s.top_k,
                inw.max(mid).max(s.hidden)
            )));
        }
        let tokens = tokens as u32;
        if self
            .scratch
            .as_ref()
            .is_none_or(|sc| sc.route.tokens != tokens)
        {
            self.scratch = Some(Scratch::new(
                &self.device,
                self.structure,
                s,
                tokens,
                self.stages.on_hopper(),
            )?);
        }
        let mut sc = self.scratch.take().expect("made above");
        let run = self.run(x, y, &mut sc, &mut None);
        self.scratch = Some(sc);
        run
    }

    /// [`MoeLayer::forward_into`] with an event between the stages, returning their times
    /// (the events make it a little slower than an untimed call; time whole layers with
    /// `forward_into`).
    pub fn forward_timed(
        &mut self,
        x: &DeviceBuffer<T>,
        y: &mut DeviceBuffer<T>,
    ) -> Result<StageTimes, RuntimeError> {
        self.forward_into(x, y)?; // sizes the scratch and checks the shapes
        let mut sc = self.scratch.take().expect("made by forward_into");
        let mut marks = Some(vec![self.device.default_stream().record_timed()?]);
        let run = self.run(x, y, &mut sc, &mut marks);
        self.scratch = Some(sc);
        run?;
        let m = marks.expect("kept");
        let ms = |i: usize| m[i].elapsed_ms(&m[i + 1]);
        Ok(StageTimes {
            gate_ms: ms(0)?,
            permute_ms: ms(1)?,
            descend_ms: ms(2)?,
            experts_ms: ms(3)?,
            combine_ms: ms(4)?,
            ascend_ms: ms(5)?,
        })
    }

    fn mark(&self, marks: &mut Option<Vec<Event>>) -> Result<(), RuntimeError> {
        if let Some(m) = marks {
            m.push(self.device.default_stream().record_timed()?);
        }
        Ok(())
    }

    fn run(
        &self,
        x: &DeviceBuffer<T>,
        y: &mut DeviceBuffer<T>,
        sc: &mut Scratch<T>,
        marks: &mut Option<Vec<Event>>,
    ) -> Result<(), RuntimeError> {
        let s = self.shape;
        let st = &self.stages;
        let tokens = sc.route.tokens;
        let e = s.experts;
        let slots = tokens * s.top_k;
        st.gate(
            x,
            &self.gate,
            self.bias.as_ref(),
            &mut sc.route.routing.ids,
            &mut sc.route.routing.weights,
            (tokens, s.hidden, e),
            self.normalise,
        )?;
        self.mark(marks)?;
        st.sort(sc.route.sort_buffers(), slots, e)?;
        self.mark(marks)?;
        let experts = (&sc.route.routing.start, &sc.route.blocks, e);
        let whole = (&sc.route.one_start, &sc.route.one_blocks, 1u32);
        let (inw, mid) = s.expert_dims(self.structure);
        let entry = match self.structure {
            Structure::Cdac => x,
            Structure::BigMac => {
                st.gemm(
                    x,
                    None,
                    &self.descend,
                    whole,
                    &mut sc.route.entry,
                    tokens,
                    (s.hidden, s.low),
                    false,
                )?;
                &sc.route.entry
            }
        };
        self.mark(marks)?;
        // the copy engine cannot gather: the Hopper path puts the rows in expert order first
        let (entry, rows) = match st.on_hopper() {
            true => {
                st.permute(entry, &sc.route.rows, &mut sc.sorted, slots, inw)?;
                (&sc.sorted, None)
            }
            false => (entry, Some(&sc.route.rows)),
        };
        st.gemm(
            entry,
            rows,
            &self.up,
            experts,
            &mut sc.y1,
            slots,
            (inw, mid),
            true,
        )?;
        st.gemm(
            &sc.y1,
            None,
            &self.down,
            experts,
            &mut sc.y2,
            slots,
            (mid, inw),
            false,
        )?;
        self.mark(marks)?;
        let combined = match self.structure {
            Structure::Cdac => &mut *y,
            Structure::BigMac => &mut sc.route.combined,
        };
        st.combine(
            &sc.y2,
            &sc.route.inv,
            &sc.route.routing.weights,
            combined,
            tokens,
            inw,
        )?;
        self.mark(marks)?;
        if self.structure == Structure::BigMac {
            st.gemm(
                &sc.route.combined,
                None,
                &self.ascend,
                whole,
                y,
                tokens,
                (s.low, s.hidden),
                false,
            )?;
        }
        self.mark(marks)
    }
}

/// Where a layer call's time goes, ms (descend and ascend are 0 for CDAC). On several GPUs the
/// all-to-all would sit between permute and experts, and between experts and combine.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTimes {
    /// Routing.
    pub gate_ms: f64,
    /// The sort by expert and the slot maps.
    pub permute_ms: f64,
    /// BigMac's `x·W↓`.
    pub descend_ms: f64,
    /// Both expert projections (grouped GEMMs).
    pub experts_ms: f64,
    /// The gate-weighted combine.
    pub combine_ms: f64,
    /// BigMac's `·W↑`.
    pub ascend_ms: f64,
}

/// The buffers of one call, kept for the next call of the same token count.
struct Scratch<T: Real> {
    route: RouteScratch<T>,
    y1: DeviceBuffer<T>,
    y2: DeviceBuffer<T>,
    /// The entry rows in expert order (Hopper path only).
    sorted: DeviceBuffer<T>,
}

impl<T: Real> Scratch<T> {
    fn new(
        dev: &Device,
        st: Structure,
        s: MoeShape,
        tokens: u32,
        hopper: bool,
    ) -> Result<Self, RuntimeError> {
        let slots = (tokens * s.top_k) as usize;
        let (inw, mid) = s.expert_dims(st);
        Ok(Scratch {
            route: RouteScratch::new(dev, st, s, tokens)?,
            y1: dev.zeros(slots * mid as usize)?,
            y2: dev.zeros(slots * inw as usize)?,
            sorted: dev.zeros(if hopper { slots * inw as usize } else { 1 })?,
        })
    }
}
