//! Collective communication between devices: [`CommGroup`], made once for N local devices and
//! reused, with grouped point-to-point transfers ([`CommGroup::send_recv`]), all-to-all with
//! fixed or variable counts, all-reduce and all-gather, and byte counters of what was sent
//! ([`CommStats`]).
//!
//! # One process, several GPUs
//!
//! A group is **one process driving every GPU of the host**, with one NCCL communicator per
//! GPU from `ncclCommInitAll` and every operation issued for all ranks inside one
//! `ncclGroupStart`/`ncclGroupEnd`. Chosen because Kiln's [`Device`] is a per-process handle
//! and the layers built on it (BigMac's expert-parallel MoE, PAT's resharding) orchestrate all
//! ranks from the host: one process needs no launcher (`mpirun`/`torchrun`), no exchange of a
//! unique id, and lets tests compare an N-rank result with the one-device layer in the same
//! address space. The cost is that one host thread issues every rank's launches; for the
//! layer sizes here (milliseconds of GPU work per stage) that is small, and a thread per rank
//! can come later behind the same API (`ncclCommInitRank` works within one process too).
//! Multi-node is out of scope.
//!
//! # On the emulator
//!
//! A group of emulator devices ([`CommGroup::emulated`]) is a functional stand-in: every
//! transfer is a copy between the ranks' host buffers and an all-reduce sums in rank order, so
//! every code path above NCCL runs in CI without a GPU — with any number of ranks, not only
//! one. Its byte counters count the same bytes NCCL would be handed. Its times mean nothing.
//!
//! # Semantics
//!
//! Buffers are passed per rank (`send[r]`, `recv[r]` belong to rank `r`'s device). Counts are
//! in elements of `T`. Every operation is checked before anything is issued (rank counts,
//! lengths, overlapping receive windows, buffers of the wrong device); an error issues
//! nothing. On GPUs every operation is enqueued on each device's stream (the stream Kiln
//! launches on), so it is ordered with kernels like a launch, and returns before it runs.

pub mod nccl;

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t};
use kiln_codegen::types::Scalar;

use crate::device::{Device, Gpu};

use crate::error::{driver, RuntimeError};
use crate::memory::{DeviceBuffer, Element};

/// Bytes handed to the communication library since the group was made (or since
/// [`CommGroup::reset_stats`]): counted per operation from the counts actually issued, so a
/// layer can report the all-to-all volume it really moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommStats {
    /// Bytes of point-to-point transfers between different ranks (what crosses a link).
    pub p2p_bytes_to_peers: u64,
    /// Bytes of point-to-point transfers from a rank to itself (a local copy).
    pub p2p_bytes_to_self: u64,
    /// All-reduce payload: each rank's buffer, summed over ranks (the wire traffic depends on
    /// NCCL's algorithm; a ring moves about `2·(N−1)/N` of this).
    pub all_reduce_bytes: u64,
    /// All-gather bytes delivered to other ranks: each rank's part times `N − 1`, summed.
    pub all_gather_bytes: u64,
    /// Operations issued: a group of transfers, an all-reduce or an all-gather counts one.
    pub operations: u64,
}

impl CommStats {
    /// What happened between `earlier` and `self` (both from [`CommGroup::stats`]).
    pub fn since(&self, earlier: &CommStats) -> CommStats {
        CommStats {
            p2p_bytes_to_peers: self.p2p_bytes_to_peers - earlier.p2p_bytes_to_peers,
            p2p_bytes_to_self: self.p2p_bytes_to_self - earlier.p2p_bytes_to_self,
            all_reduce_bytes: self.all_reduce_bytes - earlier.all_reduce_bytes,
            all_gather_bytes: self.all_gather_bytes - earlier.all_gather_bytes,
            operations: self.operations - earlier.operations,
        }
    }
}

/// One point-to-point transfer of [`CommGroup::send_recv`]: `count` elements from
/// `send[from][send_offset ..]` to `recv[to][recv_offset ..]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The sending rank.
    pub from: usize,
    /// The receiving rank (may be `from`: a local copy).
    pub to: usize,
    /// Where in the sender's buffer the elements start.
    pub send_offset: usize,
    /// Where in the receiver's buffer they go.
    pub recv_offset: usize,
    /// How many elements.
    pub count: usize,
}

enum Backend {
    Nccl {
        api: &'static nccl::Nccl,
        comms: Vec<ncclComm_t>,
    },
    Emulated,
}

/// A communicator over N local devices (ranks `0..N` in the order given), made once and
/// reused for every operation. See the module documentation for why one process drives all
/// GPUs, and what the emulator group does.
///
/// Operations take `&self` and are serialised by an internal lock (NCCL communicators must not
/// be used by two threads at once), so a group can be shared (`Arc<CommGroup>`) by the layers
/// of a model.
pub struct CommGroup {
    devices: Vec<Device>,
    backend: Backend,
    stats: Mutex<CommStats>,
    // serialises operations: a communicator is not reentrant
    ops: Mutex<()>,
}

// SAFETY: the raw communicators are only used under `ops`, one operation at a time, with each
// device's context made current by NCCL itself (it calls cudaSetDevice per communicator).
unsafe impl Send for CommGroup {}
// SAFETY: as above; every use of the communicators goes through the `ops` lock.
unsafe impl Sync for CommGroup {}

impl std::fmt::Debug for CommGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CommGroup({} ranks over {})",
            self.ranks(),
            self.backend_name()
        )
    }
}

fn refuse(what: &'static str, reason: String) -> RuntimeError {
    RuntimeError::InvalidInput { what, reason }
}

/// The rows of a count matrix: `counts[s][d]` elements from rank `s` to rank `d`.
pub type CountMatrix = [Vec<usize>];

impl CommGroup {
    /// A group over `devices` (rank `r` is `devices[r]`): all GPUs, each a different one, or
    /// all emulator devices. For GPUs it loads NCCL ([`nccl::library`]: a missing library is
    /// an error listing every path tried and how to install it) and creates the
    /// communicators with `ncclCommInitAll`.
    pub fn new(devices: &[Device]) -> Result<CommGroup, RuntimeError> {
        if devices.is_empty() {
            return Err(refuse("communicator", "no devices given".into()));
        }
        let gpus: Vec<&Gpu> = devices.iter().filter_map(Device::as_gpu).collect();
        let backend = if gpus.is_empty() {
            Backend::Emulated
        } else if gpus.len() != devices.len() {
            return Err(refuse(
                "communicator",
                "a group is either all GPUs or all emulator devices".into(),
            ));
        } else {
            let ordinals: Vec<usize> = gpus.iter().map(|g| g.ctx.ordinal()).collect();
            for (i, o) in ordinals.iter().enumerate() {
                if ordinals[..i].contains(o) {
                    return Err(refuse(
                        "communicator",
                        format!("GPU {o} is given twice; each rank needs its own GPU"),
                    ));
                }
            }
            let api = nccl::library()?;
            let mut comms: Vec<ncclComm_t> = vec![std::ptr::null_mut(); devices.len()];
            let list: Vec<i32> = ordinals.iter().map(|&o| o as i32).collect();
            // SAFETY: `comms` has room for one communicator per device of `list`.
            let code = unsafe {
                (api.comm_init_all)(comms.as_mut_ptr(), list.len() as i32, list.as_ptr())
            };
            api.check("ncclCommInitAll", code, None)?;
            Backend::Nccl { api, comms }
        };
        Ok(CommGroup {
            devices: devices.to_vec(),
            backend,
            stats: Mutex::new(CommStats::default()),
            ops: Mutex::new(()),
        })
    }

    /// A group over GPUs `0 .. n` (fails when fewer are visible or NCCL is missing).
    pub fn gpus(n: usize) -> Result<CommGroup, RuntimeError> {
        let devices = (0..n).map(Device::gpu).collect::<Result<Vec<_>, _>>()?;
        CommGroup::new(&devices)
    }

    /// A group of `n` emulator devices whose transfers are host copies (see the module
    /// documentation).
    pub fn emulated(n: usize) -> Result<CommGroup, RuntimeError> {
        CommGroup::new(&(0..n).map(|_| Device::emulator()).collect::<Vec<_>>())
    }

    /// The number of ranks.
    pub fn ranks(&self) -> usize {
        self.devices.len()
    }

    /// Rank `r`'s device.
    pub fn device(&self, r: usize) -> &Device {
        &self.devices[r]
    }

    /// Every rank's device, by rank.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Whether transfers go through NCCL (else the emulator's copies).
    pub fn is_nccl(&self) -> bool {
        matches!(self.backend, Backend::Nccl { .. })
    }

    /// `"NCCL 2.32.6"` or `"the emulator (host copies)"`, for reports.
    pub fn backend_name(&self) -> String {
        match &self.backend {
            Backend::Nccl { api, .. } => format!("NCCL {}", api.version_string()),
            Backend::Emulated => "the emulator (host copies)".into(),
        }
    }

    /// The byte counters so far.
    pub fn stats(&self) -> CommStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the byte counters back to zero.
    pub fn reset_stats(&self) {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = CommStats::default();
    }

    fn count(&self, f: impl FnOnce(&mut CommStats)) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.operations += 1;
        f(&mut s);
    }

    /// Waits for every rank's queued work.
    pub fn synchronize(&self) -> Result<(), RuntimeError> {
        self.devices.iter().try_for_each(Device::synchronize)
    }

    fn check_ranks(&self, what: &'static str, got: usize) -> Result<(), RuntimeError> {
        if got == self.ranks() {
            Ok(())
        } else {
            Err(refuse(
                what,
                format!(
                    "{got} buffers for a group of {} ranks (one per rank)",
                    self.ranks()
                ),
            ))
        }
    }

    /// The point-to-point transfers `transfers`, all issued as one group (NCCL: every
    /// `ncclSend`/`ncclRecv` of every rank between one `ncclGroupStart`/`ncclGroupEnd`), so
    /// their order does not matter and they may proceed concurrently. Refused before anything
    /// is issued: a rank out of range, a window past its buffer, two receive windows of a
    /// rank that overlap. Transfers of zero elements are skipped.
    pub fn send_recv<T: Element>(
        &self,
        send: &[&DeviceBuffer<T>],
        recv: &mut [&mut DeviceBuffer<T>],
        transfers: &[Transfer],
    ) -> Result<(), RuntimeError> {
        self.check_ranks("send buffers", send.len())?;
        self.check_ranks("receive buffers", recv.len())?;
        let n = self.ranks();
        let mut windows: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
        for t in transfers {
            if t.from >= n || t.to >= n {
                return Err(refuse("transfer", format!("{t:?}: ranks are 0..{n}")));
            }
            let fits = |off: usize, len: usize| off.checked_add(t.count).is_some_and(|e| e <= len);
            if !fits(t.send_offset, send[t.from].len()) {
                return Err(refuse(
                    "transfer",
                    format!(
                        "{t:?} reads past rank {}'s send buffer of {} elements",
                        t.from,
                        send[t.from].len()
                    ),
                ));
            }
            if !fits(t.recv_offset, recv[t.to].len()) {
                return Err(refuse(
                    "transfer",
                    format!(
                        "{t:?} writes past rank {}'s receive buffer of {} elements",
                        t.to,
                        recv[t.to].len()
                    ),
                ));
            }
            if t.count > 0 {
                windows[t.to].push((t.recv_offset, t.recv_offset + t.count));
            }
        }
        for (r, w) in windows.iter_mut().enumerate() {
            w.sort_unstable();
            if let Some(p) = w.windows(2).find(|p| p[1].0 < p[0].1) {
                return Err(refuse(
                    "transfer",
                    format!(
                        "two transfers write rank {r}'s elements {}..{} and {}..{}: receive windows must not overlap",
                        p[0].0, p[0].1, p[1].0, p[1].1
                    ),
                ));
            }
        }
        let live: Vec<&Transfer> = transfers.iter().filter(|t| t.count > 0).collect();
        let size = std::mem::size_of::<T>() as u64;
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        match &self.backend {
            Backend::Emulated => {
                // every buffer is host memory before anything moves
                for (r, b) in send.iter().enumerate() {
                    host(b, r)?;
                }
                for (r, b) in recv.iter().enumerate() {
                    host(b, r)?;
                }
                for t in &live {
                    let src = host(send[t.from], t.from)?[t.send_offset..][..t.count].to_vec();
                    host_mut(recv[t.to], t.to)?[t.recv_offset..][..t.count].copy_from_slice(&src);
                }
            }
            Backend::Nccl { api, comms } => {
                let ptrs = self.gpu_ptrs(send, recv)?;
                group(api, || {
                    for t in &live {
                        let (sp, sstream) = ptrs.send[t.from];
                        let code = unsafe {
                            // SAFETY: the window lies inside the live allocation (checked
                            // above); the stream belongs to the sender's device.
                            (api.send)(
                                (sp + t.send_offset as u64 * size) as *const _,
                                t.count * size as usize,
                                ncclDataType_t::ncclUint8,
                                t.to as i32,
                                comms[t.from],
                                sstream,
                            )
                        };
                        api.check("ncclSend", code, Some(comms[t.from]))?;
                        let (rp, rstream) = ptrs.recv[t.to];
                        // SAFETY: as for the send, on the receiver's buffer and stream; no
                        // two receive windows overlap (checked above).
                        let code = unsafe {
                            (api.recv)(
                                (rp + t.recv_offset as u64 * size) as *mut _,
                                t.count * size as usize,
                                ncclDataType_t::ncclUint8,
                                t.from as i32,
                                comms[t.to],
                                rstream,
                            )
                        };
                        api.check("ncclRecv", code, Some(comms[t.to]))?;
                    }
                    Ok(())
                })?;
                ptrs.finish()?;
            }
        }
        self.count(|s| {
            for t in &live {
                let b = t.count as u64 * size;
                if t.from == t.to {
                    s.p2p_bytes_to_self += b;
                } else {
                    s.p2p_bytes_to_peers += b;
                }
            }
        });
        Ok(())
    }

    /// All-to-all with variable counts: rank `s` sends `counts[s][d]` elements to every rank
    /// `d`, its send buffer holding the parts for ranks `0, 1, …` back to back; rank `d`
    /// receives them into its receive buffer back to back in source order. `counts` is the
    /// whole `N × N` matrix, known on the host (exchange it first with a fixed-size
    /// [`CommGroup::all_to_all`]). Refused when the matrix is not `N × N` or a buffer is too
    /// short for its row or column sum.
    pub fn all_to_all_v<T: Element>(
        &self,
        send: &[&DeviceBuffer<T>],
        recv: &mut [&mut DeviceBuffer<T>],
        counts: &CountMatrix,
    ) -> Result<(), RuntimeError> {
        let transfers = all_to_all_plan(self.ranks(), counts)?;
        self.send_recv(send, recv, &transfers)
    }

    /// All-to-all with `count` elements per pair: rank `s` sends `send[s][d·count ..][..count]`
    /// to rank `d`, which receives it at `recv[d][s·count ..]`. Both buffers hold at least
    /// `N·count` elements.
    pub fn all_to_all<T: Element>(
        &self,
        send: &[&DeviceBuffer<T>],
        recv: &mut [&mut DeviceBuffer<T>],
        count: usize,
    ) -> Result<(), RuntimeError> {
        let n = self.ranks();
        self.all_to_all_v(send, recv, &vec![vec![count; n]; n])
    }

    /// In-place all-reduce (sum): afterwards every rank's buffer holds the element-wise sum of
    /// all ranks' buffers (same length on every rank). f16/bf16 sums are rounded as NCCL
    /// rounds them (the emulator adds in rank order, rounding after each addition); `u16`
    /// has no NCCL type and is refused.
    pub fn all_reduce_sum<T: Element>(
        &self,
        bufs: &mut [&mut DeviceBuffer<T>],
    ) -> Result<(), RuntimeError> {
        self.check_ranks("all-reduce buffers", bufs.len())?;
        let len = bufs[0].len();
        if let Some(r) = bufs.iter().position(|b| b.len() != len) {
            return Err(refuse(
                "all-reduce buffers",
                format!(
                    "rank {r} holds {} elements, rank 0 {len}: all must match",
                    bufs[r].len()
                ),
            ));
        }
        let dtype = nccl_type(T::SCALAR).ok_or_else(|| {
            refuse(
                "all-reduce buffers",
                format!("{:?} elements have no NCCL type", T::SCALAR),
            )
        })?;
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        match &self.backend {
            Backend::Emulated => {
                let mut acc = host(&*bufs[0], 0)?.to_vec();
                for (r, b) in bufs.iter().enumerate().skip(1) {
                    add_into(&mut acc, host(b, r)?);
                }
                for (r, b) in bufs.iter_mut().enumerate() {
                    host_mut(b, r)?.copy_from_slice(&acc);
                }
            }
            Backend::Nccl { api, comms } => {
                let ptrs = self.gpu_ptrs(&[], bufs)?;
                group(api, || {
                    for (r, &(p, stream)) in ptrs.recv.iter().enumerate() {
                        // SAFETY: in place on a live allocation of `len` elements on rank r's
                        // device, enqueued on its stream.
                        let code = unsafe {
                            (api.all_reduce)(
                                p as *const _,
                                p as *mut _,
                                len,
                                dtype,
                                ncclRedOp_t::ncclSum,
                                comms[r],
                                stream,
                            )
                        };
                        api.check("ncclAllReduce", code, Some(comms[r]))?;
                    }
                    Ok(())
                })?;
                ptrs.finish()?;
            }
        }
        let bytes = (len * std::mem::size_of::<T>() * self.ranks()) as u64;
        self.count(|s| s.all_reduce_bytes += bytes);
        Ok(())
    }

    /// All-gather: every rank's `send` (`count` elements, the same on every rank) lands at
    /// `recv[d][r·count ..]` on every rank `d`; `recv` holds at least `N·count` elements.
    pub fn all_gather<T: Element>(
        &self,
        send: &[&DeviceBuffer<T>],
        recv: &mut [&mut DeviceBuffer<T>],
    ) -> Result<(), RuntimeError> {
        self.check_ranks("all-gather send buffers", send.len())?;
        self.check_ranks("all-gather receive buffers", recv.len())?;
        let n = self.ranks();
        let count = send[0].len();
        for r in 0..n {
            if send[r].len() != count {
                return Err(refuse(
                    "all-gather send buffers",
                    format!(
                        "rank {r} sends {} elements, rank 0 {count}: all must match",
                        send[r].len()
                    ),
                ));
            }
            if recv[r].len() < n * count {
                return Err(refuse(
                    "all-gather receive buffers",
                    format!(
                        "rank {r} receives into {} elements, {n} ranks × {count} need {}",
                        recv[r].len(),
                        n * count
                    ),
                ));
            }
        }
        let size = std::mem::size_of::<T>();
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        match &self.backend {
            Backend::Emulated => {
                let parts: Vec<Vec<T>> = (0..n)
                    .map(|r| host(send[r], r).map(<[T]>::to_vec))
                    .collect::<Result<_, _>>()?;
                for (d, b) in recv.iter_mut().enumerate() {
                    let out = host_mut(b, d)?;
                    for (r, p) in parts.iter().enumerate() {
                        out[r * count..][..count].copy_from_slice(p);
                    }
                }
            }
            Backend::Nccl { api, comms } => {
                let ptrs = self.gpu_ptrs(send, recv)?;
                group(api, || {
                    for (r, (&(sp, stream), &(rp, _))) in
                        ptrs.send.iter().zip(&ptrs.recv).enumerate()
                    {
                        // SAFETY: `count` elements readable at sp and `n·count` writable at rp,
                        // both live allocations of rank r's device; enqueued on its stream.
                        let code = unsafe {
                            (api.all_gather)(
                                sp as *const _,
                                rp as *mut _,
                                count * size,
                                ncclDataType_t::ncclUint8,
                                comms[r],
                                stream,
                            )
                        };
                        api.check("ncclAllGather", code, Some(comms[r]))?;
                    }
                    Ok(())
                })?;
                ptrs.finish()?;
            }
        }
        let bytes = (count * size * n * (n - 1)) as u64;
        self.count(|s| s.all_gather_bytes += bytes);
        Ok(())
    }

    /// Device pointers and streams of every buffer, after checking that each is GPU memory of
    /// its rank's device and ordering the device's stream after the buffers' own streams.
    fn gpu_ptrs<T: Element>(
        &self,
        send: &[&DeviceBuffer<T>],
        recv: &[&mut DeviceBuffer<T>],
    ) -> Result<GpuPtrs, RuntimeError> {
        let mut joins = Vec::new();
        let mut slot =
            |r: usize, b: &DeviceBuffer<T>| -> Result<(u64, cudaStream_t), RuntimeError> {
                let s = gpu_slice(b, r)?;
                let g = self.devices[r].as_gpu().ok_or_else(|| host_buffer(r))?;
                if s.context().cu_ctx() != g.ctx.cu_ctx() {
                    return Err(refuse(
                        "communication buffer",
                        format!("a buffer of rank {r} belongs to another GPU than rank {r}'s"),
                    ));
                }
                if s.stream().cu_stream() != g.stream.cu_stream() {
                    g.stream.join(s.stream()).map_err(driver)?;
                    joins.push((s.stream().clone(), g.stream.clone()));
                }
                // event tracking is off on Kiln's contexts: the guard records nothing
                let (p, guard) = s.device_ptr(&g.stream);
                drop(guard);
                Ok((p, g.stream.cu_stream() as cudaStream_t))
            };
        let send = send
            .iter()
            .enumerate()
            .map(|(r, b)| slot(r, b))
            .collect::<Result<Vec<_>, _>>()?;
        let recv = recv
            .iter()
            .enumerate()
            .map(|(r, b)| slot(r, b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GpuPtrs { send, recv, joins })
    }
}

/// The pointers of one NCCL operation, and the streams to re-order after it.
struct GpuPtrs {
    send: Vec<(u64, cudaStream_t)>,
    recv: Vec<(u64, cudaStream_t)>,
    /// `(buffer's stream, device stream)`: the buffer's stream waits for the operation.
    joins: Vec<(Arc<CudaStream>, Arc<CudaStream>)>,
}

impl GpuPtrs {
    /// Later work on the buffers' own streams (frees, writes) waits for the operation.
    fn finish(self) -> Result<(), RuntimeError> {
        for (buffer_stream, device_stream) in &self.joins {
            buffer_stream.join(device_stream).map_err(driver)?;
        }
        Ok(())
    }
}

/// Runs `f` between `ncclGroupStart` and `ncclGroupEnd`; the group is closed even when `f`
/// fails (NCCL then discards nothing already enqueued, so the error is returned as is).
fn group(
    api: &nccl::Nccl,
    f: impl FnOnce() -> Result<(), RuntimeError>,
) -> Result<(), RuntimeError> {
    // SAFETY: no arguments; pairs with the ncclGroupEnd below.
    api.check("ncclGroupStart", unsafe { (api.group_start)() }, None)?;
    let inner = f();
    // SAFETY: closes the group opened above.
    let end = api.check("ncclGroupEnd", unsafe { (api.group_end)() }, None);
    inner.and(end)
}

/// The transfers of an all-to-all with variable counts (see [`CommGroup::all_to_all_v`]),
/// checked: an `n × n` matrix.
pub fn all_to_all_plan(n: usize, counts: &CountMatrix) -> Result<Vec<Transfer>, RuntimeError> {
    if counts.len() != n || counts.iter().any(|row| row.len() != n) {
        return Err(refuse(
            "all-to-all counts",
            format!(
                "a {}-row matrix with rows of {:?} elements; a group of {n} ranks needs {n} × {n}",
                counts.len(),
                counts.iter().map(Vec::len).collect::<Vec<_>>()
            ),
        ));
    }
    let overflow = || refuse("all-to-all counts", "the counts overflow usize".into());
    let mut recv_at = vec![0usize; n];
    let mut out = Vec::with_capacity(n * n);
    for (s, row) in counts.iter().enumerate() {
        let mut send_at = 0usize;
        for (d, &c) in row.iter().enumerate() {
            out.push(Transfer {
                from: s,
                to: d,
                send_offset: send_at,
                recv_offset: recv_at[d],
                count: c,
            });
            send_at = send_at.checked_add(c).ok_or_else(overflow)?;
            recv_at[d] = recv_at[d].checked_add(c).ok_or_else(overflow)?;
        }
    }
    Ok(out)
}

fn host_buffer(r: usize) -> RuntimeError {
    refuse(
        "communication buffer",
        format!("rank {r}'s buffer is host (emulator) memory; an NCCL group needs GPU buffers"),
    )
}

fn gpu_slice<T: Element>(b: &DeviceBuffer<T>, r: usize) -> Result<&CudaSlice<T>, RuntimeError> {
    b.as_cuda_slice().ok_or_else(|| host_buffer(r))
}

fn host<T: Element>(b: &DeviceBuffer<T>, r: usize) -> Result<&[T], RuntimeError> {
    match b {
        DeviceBuffer::Host(v) => Ok(v),
        DeviceBuffer::Cuda(_) => Err(refuse(
            "communication buffer",
            format!("rank {r}'s buffer is GPU memory; an emulator group needs emulator buffers"),
        )),
    }
}

fn host_mut<T: Element>(b: &mut DeviceBuffer<T>, r: usize) -> Result<&mut [T], RuntimeError> {
    match b {
        DeviceBuffer::Host(v) => Ok(v),
        DeviceBuffer::Cuda(_) => Err(refuse(
            "communication buffer",
            format!("rank {r}'s buffer is GPU memory; an emulator group needs emulator buffers"),
        )),
    }
}

/// NCCL's type for an element type (`u16` and `bool` have none).
fn nccl_type(s: Scalar) -> Option<ncclDataType_t> {
    use ncclDataType_t::*;
    Some(match s {
        Scalar::U8 => ncclUint8,
        Scalar::I32 => ncclInt32,
        Scalar::U32 => ncclUint32,
        Scalar::I64 => ncclInt64,
        Scalar::U64 => ncclUint64,
        Scalar::F16 => ncclFloat16,
        Scalar::Bf16 => ncclBfloat16,
        Scalar::F32 => ncclFloat32,
        Scalar::F64 => ncclFloat64,
        _ => return None,
    })
}

/// `acc[i] += x[i]` in `T`'s arithmetic (integers wrap, halves round after the addition).
fn add_into<T: Element>(acc: &mut [T], x: &[T]) {
    fn each<U: bytemuck::Pod>(acc: &mut [u8], x: &[u8], f: impl Fn(U, U) -> U) {
        let (a, b): (&mut [U], &[U]) = (bytemuck::cast_slice_mut(acc), bytemuck::cast_slice(x));
        for (p, q) in a.iter_mut().zip(b) {
            *p = f(*p, *q);
        }
    }
    let (a, b): (&mut [u8], &[u8]) = (bytemuck::cast_slice_mut(acc), bytemuck::cast_slice(x));
    match T::SCALAR {
        Scalar::U8 => each::<u8>(a, b, u8::wrapping_add),
        Scalar::I32 => each::<i32>(a, b, i32::wrapping_add),
        Scalar::U32 => each::<u32>(a, b, u32::wrapping_add),
        Scalar::I64 => each::<i64>(a, b, i64::wrapping_add),
        Scalar::U64 => each::<u64>(a, b, u64::wrapping_add),
        Scalar::F16 => each::<half::f16>(a, b, |p, q| half::f16::from_f32(p.to_f32() + q.to_f32())),
        Scalar::Bf16 => {
            each::<half::bf16>(a, b, |p, q| half::bf16::from_f32(p.to_f32() + q.to_f32()))
        }
        Scalar::F32 => each::<f32>(a, b, |p, q| p + q),
        Scalar::F64 => each::<f64>(a, b, |p, q| p + q),
        // refused by `nccl_type` before any data moves
        _ => {}
    }
}

impl Drop for CommGroup {
    fn drop(&mut self) {
        if let Backend::Nccl { api, comms } = &self.backend {
            // outstanding operations finish first, as NCCL's own examples do before destroying
            let _ = self.synchronize();
            for &c in comms {
                if !c.is_null() {
                    // SAFETY: a communicator from ncclCommInitAll, destroyed once; a failure
                    // cannot be reported from `drop` and leaks at most the communicator.
                    let _ = unsafe { (api.comm_destroy)(c) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
