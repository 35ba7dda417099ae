//! The Hopper instructions (sm_90/sm_90a): transaction barriers (`mbarrier`), the copy engine
//! (`tma_load_2d`) and warpgroup MMA (`wgmma`), with the state they keep per block and per
//! thread and the checks of their asynchronous rules.
//!
//! * **Shared addresses** are byte offsets in the block's shared buffer (`kiln_smem_addr`);
//!   a program that uses these instructions gets its dynamic shared memory at a 1024-byte
//!   aligned offset, as the printed CUDA declares it, because swizzles act on address bits.
//! * **Swizzles** permute the 16-byte chunks of each 128-byte line: 128 B: bits 4–6 ^= bits
//!   7–9; 64 B: bits 4–5 ^= bits 7–8; 32 B: bit 4 ^= bit 7.
//! * **mbarrier** state is kept by the barrier's shared address: expected arrivals, pending
//!   arrivals, the transaction count and the phase. A phase completes when no arrival and no
//!   byte is outstanding; `mbarrier_wait(bar, parity)` returns once `phase % 2 != parity` and
//!   otherwise blocks the thread (the scheduler re-checks it when nothing else can run, and
//!   reports a deadlock when nothing ever will).
//! * **`tma_load_2d`** decodes the emulator's tensor map ([`EmulatedMap`]), copies the box at
//!   once (zero outside the tensor, swizzled on the absolute address) and completes its bytes
//!   on the barrier; until that barrier phase completes, the destination chunks are *pending*.
//! * **`wgmma`** `m64nNk16`: each of the warpgroup's 128 threads computes its own accumulator
//!   entries from shared memory when it issues (exact products, one rounding to f32, like
//!   `mma`), and the operation stays *in flight* — its accumulator and the 16-byte chunks it
//!   read — until a `wgmma_wait::<N>` leaves at most `N` of the thread's committed groups.
//!   `wgmma_rs` takes A from registers in the `mma` A layout (warp `w` of the warpgroup
//!   holds rows `16w..16w+15`): the warp first hands each lane the two rows it needs.
//!
//! Checked: the accumulator touched by ordinary code while in flight; shared stores (ordinary
//! or by the copy engine) to chunks an in-flight `wgmma` reads; reads (ordinary or by `wgmma`)
//! and ordinary stores of chunks a TMA load is still filling; barriers used uninitialised,
//! over-arrived, completing more bytes than expected, or re-initialised mid-phase; waits
//! nothing can release; bad tensor maps and destinations; warpgroups with missing threads.

use std::collections::HashMap;

use crate::tensor_map::EmulatedMap;

use super::interp::{Env, Thread, Yield};
use super::isa::{Access, HopperOp, Loc, TmaLoad, POISON};
use super::matrix::half_value;
use super::report::FindingKind;
use super::value::K;

/// Threads of a warpgroup.
const WARPGROUP: u32 = 128;
/// Bytes of a chunk, the unit swizzles move and the checks track.
const CHUNK: u64 = 16;
/// Largest arrival count (and transaction count) of a barrier phase.
const MAX_COUNT: i64 = (1 << 20) - 1;

/// The address of logical byte `addr` under a swizzle of `span` bytes (0: none).
pub(crate) fn swizzle(addr: u64, span: u32) -> u64 {
    let mask = match span {
        128 => 7,
        64 => 3,
        32 => 1,
        _ => 0,
    };
    addr ^ (((addr >> 7) & mask) << 4)
}

/// `kiln_wgmma_desc`: start address, leading and stride byte offsets, 128-byte swizzle.
pub(crate) fn wgmma_desc(addr: u64, lbo: u64, sbo: u64) -> u64 {
    ((addr & 0x3FFFF) >> 4) | ((lbo >> 4) & 0x3FFF) << 16 | ((sbo >> 4) & 0x3FFF) << 32 | 1 << 62
}

/// A decoded shared-memory matrix descriptor.
#[derive(Clone, Copy, Debug)]
struct Desc {
    start: u64,
    lbo: u64,
    sbo: u64,
    /// Swizzle span in bytes (0: none).
    span: u32,
}

impl Desc {
    fn decode(d: u64) -> Desc {
        Desc {
            start: (d & 0x3FFF) << 4,
            lbo: ((d >> 16) & 0x3FFF) << 4,
            sbo: ((d >> 32) & 0x3FFF) << 4,
            span: match d >> 62 {
                1 => 128,
                2 => 64,
                3 => 32,
                _ => 0,
            },
        }
    }

    /// The byte of 16-bit element (`row`, `k`) of a K-major operand: rows of 8 at `sbo`,
    /// each row one swizzle line (16 bytes of 8×8 core matrices, `lbo` apart in k, if none).
    fn k_major(&self, row: u64, k: u64) -> u64 {
        let logical = match self.span {
            0 => self.start + row / 8 * self.sbo + row % 8 * 16 + k / 8 * self.lbo + k % 8 * 2,
            s => self.start + row / 8 * self.sbo + row % 8 * s as u64 + k * 2,
        };
        swizzle(logical, self.span)
    }

    /// The byte of 16-bit element (`k`, `n`) of an MN-major operand (CUTLASS's canonical
    /// GMMA layouts): swizzled, a line holds `span / 2` consecutive n, lines of 8 k follow
    /// each other, `lbo` apart per line-width of n and `sbo` apart per 8 k; unswizzled, 8 n
    /// per core-matrix row, `sbo` apart per 8 n and `lbo` apart per 8 k.
    fn mn_major(&self, k: u64, n: u64) -> u64 {
        let logical = match self.span {
            0 => self.start + n / 8 * self.sbo + n % 8 * 2 + k % 8 * 16 + k / 8 * self.lbo,
            s => {
                let per_line = s as u64 / 2;
                self.start
                    + n / per_line * self.lbo
                    + n % per_line * 2
                    + k % 8 * s as u64
                    + k / 8 * self.sbo
            }
        };
        swizzle(logical, self.span)
    }
}

/// One transaction barrier.
#[derive(Clone, Copy, Debug)]
struct Mbarrier {
    expected: u32,
    pending: u32,
    tx: i64,
    phase: u32,
}

/// A TMA load whose barrier phase has not been seen to complete.
#[derive(Clone, Copy, Debug)]
struct PendingLoad {
    bar: u32,
    phase: u32,
    pc: u32,
}

/// The Hopper state of one block.
#[derive(Default)]
pub(crate) struct HopperBlock {
    bars: HashMap<u32, Mbarrier>,
    /// The name of each barrier (`full`[2]), for reports.
    names: HashMap<u32, String>,
    /// Per shared chunk: in-flight `wgmma` reads of it (one per reading thread).
    readers: Vec<u32>,
    /// Per shared chunk: 0, or 1 + the index in `loads` of the TMA load filling it.
    filling: Vec<u32>,
    loads: Vec<PendingLoad>,
    /// Per barrier: phases completed that every thread has seen (through a `sync_threads`).
    published: HashMap<u32, u32>,
}

impl HopperBlock {
    /// Forgets everything for a new block of `bytes` of shared memory (`on`: the program
    /// uses Hopper instructions; otherwise no state is kept and every check is skipped).
    pub(crate) fn reset(&mut self, bytes: usize, on: bool) {
        self.bars.clear();
        self.names.clear();
        self.loads.clear();
        self.published.clear();
        let chunks = if on {
            bytes.div_ceil(CHUNK as usize)
        } else {
            0
        };
        for v in [&mut self.readers, &mut self.filling] {
            v.clear();
            v.resize(chunks, 0);
        }
    }

    /// Whether the wait of a thread blocked on (`bar`, `parity`) would return now.
    pub(crate) fn released(&self, bar: u32, parity: u32) -> bool {
        self.bars
            .get(&bar)
            .is_none_or(|b| b.phase % 2 != parity % 2)
    }

    /// Barrier `bar` and its state, for a report.
    pub(crate) fn describe(&self, bar: u32) -> String {
        let name = self.names.get(&bar).map_or("?", String::as_str);
        match self.bars.get(&bar) {
            Some(b) => format!(
                "barrier {name} (shared byte {bar}): phase {} still waits for {} of {} arrival(s) and {} byte(s) of copies",
                b.phase, b.pending, b.expected, b.tx
            ),
            None => format!("the barrier at shared byte {bar} was never initialised"),
        }
    }

    /// The TMA load filling `chunk` whose barrier phase thread `t` has not seen complete
    /// (by its own `mbarrier_wait`, or another thread's before a `sync_threads`); a load
    /// every thread has seen complete is forgotten.
    fn filling_load(&mut self, chunk: usize, t: &Thread) -> Option<PendingLoad> {
        let i = *self.filling.get(chunk)?;
        let load = *self.loads.get(i.checked_sub(1)? as usize)?;
        let published = self.published.get(&load.bar).copied().unwrap_or(0);
        if published > load.phase || !self.bars.contains_key(&load.bar) {
            self.filling[chunk] = 0;
            return None;
        }
        (t.wgmma.seen(load.bar) <= load.phase).then_some(load)
    }

    /// A `sync_threads` opened: what each thread has seen of its barriers, every thread has.
    pub(crate) fn publish(&mut self, threads: &[Thread]) {
        for t in threads {
            for &(bar, phases) in &t.wgmma.seen {
                let p = self.published.entry(bar).or_insert(0);
                *p = (*p).max(phases);
            }
        }
    }
}

/// A `wgmma` issued by one thread and not yet waited for.
#[derive(Clone, Debug)]
struct InFlight {
    /// The commit group it belongs to.
    group: u64,
    /// Its accumulator's register slots.
    acc: std::ops::Range<u64>,
    /// The shared chunks it read.
    chunks: Vec<u32>,
    pc: u32,
}

/// The asynchronous-operation state of one thread: its `wgmma`s, and the barrier phases it
/// has seen complete.
#[derive(Clone, Debug, Default)]
pub(crate) struct WgmmaThread {
    committed: u64,
    in_flight: Vec<InFlight>,
    /// (barrier, phases completed when a wait of this thread last returned).
    seen: Vec<(u32, u32)>,
}

impl WgmmaThread {
    /// Phases of barrier `bar` this thread has seen complete.
    fn seen(&self, bar: u32) -> u32 {
        self.seen
            .iter()
            .find(|(b, _)| *b == bar)
            .map_or(0, |(_, p)| *p)
    }

    fn see(&mut self, bar: u32, phases: u32) {
        match self.seen.iter_mut().find(|(b, _)| *b == bar) {
            Some((_, p)) => *p = (*p).max(phases),
            None => self.seen.push((bar, phases)),
        }
    }
}

/// Where a `wgmma` finds its A operand.
#[derive(Clone, Copy, Debug)]
enum WgmmaA {
    /// A shared-memory matrix descriptor.
    Shared(u64),
    /// The first of the 16 register slots that hold this thread's two rows of A.
    Rows(usize),
}

/// The chunks of `size` bytes at `off`.
fn chunks_of(off: u64, size: u64) -> std::ops::Range<usize> {
    (off / CHUNK) as usize..(off + size.max(1)).div_ceil(CHUNK) as usize
}

impl Env<'_, '_> {
    /// The shared byte address of `at` (`kiln_smem_addr`), or `None` (reported) when it is
    /// out of bounds.
    pub(crate) fn shared_addr(
        &mut self,
        t: &Thread,
        regs: &[u64],
        at: &Access,
        pc: usize,
    ) -> Option<u64> {
        let e = self.element(t, regs, at, pc, 1)?;
        match at.loc {
            Loc::Shared(off) => Some(off as u64 + e * at.k.size() as u64),
            _ => None,
        }
    }

    fn hopper_report(
        &mut self,
        kind: FindingKind,
        t: &Thread,
        pc: usize,
        detail: impl FnOnce() -> String,
    ) {
        let who = self.who(t);
        self.findings.report(kind, pc, who, detail);
    }

    /// `name[i]` of the element `at` designates.
    fn place_name(&self, regs: &[u64], at: &Access) -> String {
        let e = regs[at.base as usize].wrapping_add(regs[at.idx as usize]);
        format!("`{}`[{e}]", self.mem_name(at.mem))
    }

    /// Runs a Hopper instruction; `Some(Yield::MbarWait)` when the thread must block.
    pub(crate) fn hopper(
        &mut self,
        t: &mut Thread,
        regs: &mut [u64],
        op: &HopperOp,
        pc: usize,
    ) -> Option<Yield> {
        match op {
            HopperOp::WgmmaDesc {
                dst,
                addr,
                lbo,
                sbo,
            } => {
                let a = regs[*addr as usize];
                regs[*dst as usize] = if a == POISON {
                    0
                } else {
                    wgmma_desc(a, regs[*lbo as usize], regs[*sbo as usize])
                };
            }
            HopperOp::WgmmaCommit => t.wgmma.committed += 1,
            HopperOp::WgmmaWait { n } => self.wgmma_retire(t, Some(*n)),
            HopperOp::Wgmma {
                elem,
                trans_b,
                a_rows,
                acc,
                acc_len,
                a,
                b,
            } => {
                let a = match a_rows {
                    true => WgmmaA::Rows(*a as usize),
                    false => WgmmaA::Shared(regs[*a as usize]),
                };
                let db = regs[*b as usize];
                self.wgmma(
                    t,
                    regs,
                    (*elem, *trans_b),
                    (*acc as u64, *acc_len as u64),
                    (a, db),
                    pc,
                );
            }
            HopperOp::MbarInit { bar, count } => {
                let n = regs[*count as usize];
                self.mbar_init(t, regs, bar, n, pc);
            }
            HopperOp::MbarArrive { bar } => {
                if let Some(addr) = self.bar_addr(t, regs, bar, pc) {
                    self.mbar_arrive(t, regs, bar, addr, 0, pc);
                }
            }
            HopperOp::MbarExpectTx { bar, bytes } => {
                if let Some(addr) = self.bar_addr(t, regs, bar, pc) {
                    let n = regs[*bytes as usize] as u32 as i64;
                    self.mbar_arrive(t, regs, bar, addr, n, pc);
                }
            }
            HopperOp::MbarWait { bar, parity } => {
                let addr = self.bar_addr(t, regs, bar, pc)? as u32;
                let parity = (regs[*parity as usize] & 1) as u32;
                if self.hopper.released(addr, parity) {
                    t.blocked_on = None;
                    let phases = self.hopper.bars.get(&addr).map_or(0, |b| b.phase);
                    t.wgmma.see(addr, phases);
                    return None;
                }
                t.blocked_on = Some((addr, parity));
                return Some(Yield::MbarWait);
            }
            HopperOp::Tma(load) => self.tma_load(t, regs, load, pc),
        }
        None
    }

    /// The address of an initialised barrier, or `None` (reported).
    fn bar_addr(&mut self, t: &Thread, regs: &[u64], bar: &Access, pc: usize) -> Option<u64> {
        let addr = self.shared_addr(t, regs, bar, pc)?;
        if self.hopper.bars.contains_key(&(addr as u32)) {
            return Some(addr);
        }
        let name = self.place_name(regs, bar);
        self.hopper_report(FindingKind::MbarrierMisuse, t, pc, || {
            format!("barrier {name} (shared byte {addr}) is used but was never initialised with mbarrier_init")
        });
        None
    }

    fn mbar_init(&mut self, t: &Thread, regs: &[u64], bar: &Access, count: u64, pc: usize) {
        let Some(addr) = self.shared_addr(t, regs, bar, pc) else {
            return;
        };
        let name = self.place_name(regs, bar);
        if count == 0 || count as i64 > MAX_COUNT {
            self.hopper_report(FindingKind::MbarrierMisuse, t, pc, || {
                format!("barrier {name} is initialised with {count} arrivals; the count must be 1 to {MAX_COUNT}")
            });
            return;
        }
        if let Some(old) = self.hopper.bars.get(&(addr as u32)) {
            if old.pending != old.expected || old.tx != 0 {
                let state = self.hopper.describe(addr as u32);
                self.hopper_report(FindingKind::MbarrierMisuse, t, pc, || {
                    format!("a barrier is initialised again in the middle of a phase ({state})")
                });
            }
        }
        let c = count as u32;
        self.hopper.names.insert(addr as u32, name);
        self.hopper.bars.insert(
            addr as u32,
            Mbarrier {
                expected: c,
                pending: c,
                tx: 0,
                phase: 0,
            },
        );
    }

    /// One arrival on the barrier at `addr` that also expects `tx` bytes.
    fn mbar_arrive(
        &mut self,
        t: &Thread,
        regs: &[u64],
        bar: &Access,
        addr: u64,
        tx: i64,
        pc: usize,
    ) {
        let Some(b) = self.hopper.bars.get_mut(&(addr as u32)) else {
            return;
        };
        if b.pending == 0 {
            let (expected, phase) = (b.expected, b.phase);
            let name = self.place_name(regs, bar);
            self.hopper_report(FindingKind::MbarrierMisuse, t, pc, || {
                format!("more arrivals on barrier {name} than the {expected} it expects in phase {phase}")
            });
            return;
        }
        b.tx += tx;
        b.pending -= 1;
        self.mbar_settle(t, regs, bar, addr, pc);
    }

    /// Checks the transaction count and completes the phase when nothing is outstanding.
    fn mbar_settle(&mut self, t: &Thread, regs: &[u64], bar: &Access, addr: u64, pc: usize) {
        let Some(b) = self.hopper.bars.get_mut(&(addr as u32)) else {
            return;
        };
        let over = (b.pending == 0 && b.tx < 0).then_some((-b.tx, b.phase));
        if over.is_some() {
            b.tx = 0;
        }
        if b.pending == 0 && b.tx == 0 {
            b.phase += 1;
            b.pending = b.expected;
        }
        if let Some((tx, phase)) = over {
            let name = self.place_name(regs, bar);
            self.hopper_report(FindingKind::MbarrierMisuse, t, pc, || {
                format!("copies completed {tx} byte(s) more on barrier {name} than its phase {phase} expects (negative transaction count; arm it with mbarrier_expect_tx for every byte loaded)")
            });
        }
    }

    /// `tma_load_2d`: checks the map and destination, copies the box, completes its bytes.
    fn tma_load(&mut self, t: &Thread, regs: &[u64], op: &TmaLoad, pc: usize) {
        let Some(bar) = self.bar_addr(t, regs, &op.bar, pc) else {
            return;
        };
        let Some(dst) = self.shared_addr(t, regs, &op.dst, pc) else {
            return;
        };
        let Some(map) = self.tensor_map(t, regs, op, pc) else {
            return;
        };
        let (m, eb) = (map.map, map.elem_bytes as u64);
        let row_bytes = m.box_cols as u64 * eb;
        let total = m.box_rows as u64 * row_bytes;
        let span = m.swizzle.bytes();
        let align = if span == 0 { 128 } else { 8 * span as u64 };
        let fits = dst + total <= self.shared.len() as u64;
        let problem = if dst % align != 0 {
            Some((FindingKind::TmaMisuse, format!("the destination {} is at shared byte {dst}, not a multiple of {align} (what a {span}-byte swizzle needs)", self.place_name(regs, &op.dst))))
        } else if !fits {
            Some((
                FindingKind::SharedOutOfBounds,
                format!(
                    "the {total}-byte box at {} overruns the block's {} bytes of shared memory",
                    self.place_name(regs, &op.dst),
                    self.shared.len()
                ),
            ))
        } else {
            None
        };
        if let Some((kind, detail)) = problem {
            self.hopper_report(kind, t, pc, || detail);
        } else {
            let phase = self.hopper.bars.get(&(bar as u32)).map_or(0, |b| b.phase);
            self.hopper.loads.push(PendingLoad {
                bar: bar as u32,
                phase,
                pc: pc as u32,
            });
            let tag = self.hopper.loads.len() as u32;
            let (x, y) = (
                regs[op.x as usize] as u32 as i32 as i64,
                regs[op.y as usize] as u32 as i32 as i64,
            );
            for r in 0..m.box_rows as u64 {
                for c in 0..m.box_cols as u64 {
                    let (gr, gc) = (y + r as i64, x + c as i64);
                    let inside = gr >= 0 && gc >= 0 && (gr as u64) < m.rows && (gc as u64) < m.cols;
                    let v = if inside {
                        self.global
                            .load(op.src, (gr as u64 * m.cols + gc as u64) * eb, eb as u32)
                    } else {
                        0
                    };
                    let at = swizzle(dst + r * row_bytes + c * eb, span);
                    self.shared.store(at, eb as u32, v);
                }
            }
            self.tma_claim(t, regs, op, dst, total, tag, pc);
        }
        if let Some(b) = self.hopper.bars.get_mut(&(bar as u32)) {
            b.tx -= total as i64;
        }
        self.mbar_settle(t, regs, &op.bar, bar, pc);
    }

    /// Marks the chunks a load fills as pending (and written, for the shadow), after checking
    /// that no in-flight `wgmma` reads them.
    #[allow(clippy::too_many_arguments)]
    fn tma_claim(
        &mut self,
        t: &Thread,
        regs: &[u64],
        op: &TmaLoad,
        dst: u64,
        total: u64,
        tag: u32,
        pc: usize,
    ) {
        let range = chunks_of(dst, total);
        if let Some(c) = range
            .clone()
            .find(|&c| self.hopper.readers.get(c).is_some_and(|n| *n > 0))
        {
            let name = self.place_name(regs, &op.dst);
            self.hopper_report(FindingKind::WgmmaOperandOverwritten, t, pc, || {
                format!("the TMA load into {name} overwrites shared byte {} while a wgmma reading it is still in flight (wait for it with wgmma_wait before reusing the buffer)", c as u64 * CHUNK)
            });
        }
        for c in range {
            if let Some(f) = self.hopper.filling.get_mut(c) {
                *f = tag;
            }
        }
        if let Some(shadow) = self.shadow.as_deref_mut() {
            shadow.write_async(dst, total as u32);
        }
    }

    /// The decoded map of a load, checked against its source tensor, or `None` (reported).
    fn tensor_map(
        &mut self,
        t: &Thread,
        regs: &[u64],
        op: &TmaLoad,
        pc: usize,
    ) -> Option<EmulatedMap> {
        let name = self.place_name(regs, &op.map);
        let words = crate::tensor_map::TensorMap::WORDS as u64;
        let e = self.element(t, regs, &op.map, pc, 1)?;
        let Loc::Global(buf) = op.map.loc else {
            return None;
        };
        let problem = if op.map.len - e < words {
            format!(
                "the tensor map at {name} needs {words} u64 words but the slice ends after {}",
                op.map.len - e
            )
        } else {
            let w: Vec<u64> = (0..words)
                .map(|i| self.global.load(buf, (e + i) * 8, 8))
                .collect();
            match EmulatedMap::decode(&w) {
                None => format!("{name} does not hold a tensor map (build it with kiln::TensorMap::encode on the emulator device)"),
                Some(map) => {
                    let src = self.mem_name(op.src_mem).to_string();
                    let eb = op.src_k.size();
                    let m = map.map;
                    let addr = self.global.address(op.src);
                    let row_bytes = m.box_cols as u64 * map.elem_bytes as u64;
                    let span = m.swizzle.bytes() as u64;
                    if map.elem_bytes != eb {
                        format!("the tensor map at {name} has {}-byte elements but `{src}` has {eb}-byte ones", map.elem_bytes)
                    } else if addr.is_some_and(|a| a != map.address) {
                        format!("the tensor map at {name} was built over another buffer than `{src}`")
                    } else if m.rows.checked_mul(m.cols).is_none_or(|n| n > op.src_len) {
                        format!("the tensor map at {name} describes {} × {} elements but `{src}` holds {}", m.rows, m.cols, op.src_len)
                    } else if m.box_rows == 0 || row_bytes == 0 || !row_bytes.is_multiple_of(CHUNK) || (span > 0 && row_bytes > span) {
                        format!("the tensor map at {name} has a box of {} × {} elements, which the copy engine cannot load", m.box_rows, m.box_cols)
                    } else {
                        return Some(map);
                    }
                }
            }
        };
        self.hopper_report(FindingKind::TmaMisuse, t, pc, || problem);
        None
    }

    /// `wgmma`: this thread's entries of `acc += A·B`, then in flight until waited for.
    fn wgmma(
        &mut self,
        t: &mut Thread,
        regs: &mut [u64],
        (elem, trans_b): (K, bool),
        (acc, acc_len): (u64, u64),
        (a, db): (WgmmaA, u64),
        pc: usize,
    ) {
        self.check_warpgroup(t, pc);
        let b = Desc::decode(db);
        let lane = (t.linear % WARPGROUP) as u64;
        let (w, l) = (lane / 32, lane % 32);
        let n_blocks = acc_len / 4;
        let mut chunks = Vec::new();
        let mut read = |env: &mut Self, addr: u64| -> f64 {
            chunks.push((addr / CHUNK) as u32);
            half_value(elem, env.shared.load(addr, 2) as u32)
        };
        // A rows 16w + l/4 and + 8; B columns 8j + 2(l%4) and + 1
        let mut am = [[0f64; 16]; 2];
        for (h, row) in am.iter_mut().enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                *v = match a {
                    WgmmaA::Shared(da) => {
                        let a = Desc::decode(da);
                        read(self, a.k_major(16 * w + l / 4 + 8 * h as u64, k as u64))
                    }
                    WgmmaA::Rows(slot) => {
                        let pair = regs[slot + 8 * h + k / 2] as u32;
                        half_value(elem, pair >> (16 * (k % 2)))
                    }
                };
            }
        }
        let mut bm = vec![[0f64; 16]; 2 * n_blocks as usize];
        for (i, col) in bm.iter_mut().enumerate() {
            let n = 8 * (i as u64 / 2) + 2 * (l % 4) + i as u64 % 2;
            for (k, v) in col.iter_mut().enumerate() {
                let k = k as u64;
                *v = read(
                    self,
                    if trans_b {
                        b.mn_major(k, n)
                    } else {
                        b.k_major(n, k)
                    },
                );
            }
        }
        chunks.sort_unstable();
        chunks.dedup();
        if !self.wgmma_chunks_ok(t, &chunks, pc) {
            return;
        }
        for j in 0..n_blocks as usize {
            for r in 0..4 {
                let slot = (acc + 4 * j as u64 + r as u64) as usize;
                let (ar, bc) = (&am[r / 2], &bm[2 * j + r % 2]);
                let sum = (0..16).fold(f32::from_bits(regs[slot] as u32) as f64, |s, k| {
                    s + ar[k] * bc[k]
                });
                regs[slot] = (sum as f32).to_bits() as u64;
            }
        }
        for &c in &chunks {
            if let Some(n) = self.hopper.readers.get_mut(c as usize) {
                *n += 1;
            }
        }
        t.wgmma.in_flight.push(InFlight {
            group: t.wgmma.committed,
            acc: acc..acc + acc_len,
            chunks,
            pc: pc as u32,
        });
    }

    /// Whether every chunk a `wgmma` reads is in shared memory and filled (reported if not).
    fn wgmma_chunks_ok(&mut self, t: &Thread, chunks: &[u32], pc: usize) -> bool {
        let bytes = self.shared.len() as u64;
        if let Some(c) = chunks.iter().find(|&&c| (c as u64 + 1) * CHUNK > bytes) {
            let at = *c as u64 * CHUNK;
            self.hopper_report(FindingKind::SharedOutOfBounds, t, pc, || {
                format!("a wgmma operand reaches shared byte {at}, past the block's {bytes} bytes (check the descriptors)")
            });
            return false;
        }
        for &c in chunks {
            if let Some(load) = self.hopper.filling_load(c as usize, t) {
                let line = self.code.origin(load.pc as usize).line;
                self.hopper_report(FindingKind::TmaPendingAccess, t, pc, || {
                    format!("a wgmma reads shared byte {} while the TMA load of line {line} is still filling it (wait on its barrier first)", c as u64 * CHUNK)
                });
                break;
            }
        }
        true
    }

    /// Reports a `wgmma` whose warpgroup is not all in the block.
    fn check_warpgroup(&mut self, t: &Thread, pc: usize) {
        let threads = self.bdim.iter().product::<u32>();
        let first = t.linear / WARPGROUP * WARPGROUP;
        if first + WARPGROUP > threads {
            self.hopper_report(FindingKind::IncompleteWarp, t, pc, || {
                format!("wgmma needs a whole warpgroup (threads {first}..{}), but the block has {threads} threads", first + WARPGROUP)
            });
        }
    }

    /// Retires this thread's `wgmma`s: all (`keep == None`) or all but the `keep` most
    /// recently committed groups (uncommitted ones stay in flight).
    pub(crate) fn wgmma_retire(&mut self, t: &mut Thread, keep: Option<u32>) {
        let limit = match keep {
            None => u64::MAX,
            Some(n) => t.wgmma.committed.saturating_sub(n as u64),
        };
        let readers = &mut self.hopper.readers;
        t.wgmma.in_flight.retain(|f| {
            if f.group >= limit {
                return true;
            }
            for &c in &f.chunks {
                if let Some(n) = readers.get_mut(c as usize) {
                    *n = n.saturating_sub(1);
                }
            }
            false
        });
    }

    /// Reports an ordinary access of register slot `slot` while a `wgmma` on it is in flight.
    pub(crate) fn check_acc(&mut self, t: &Thread, slot: u64, at: &Access, pc: usize, write: bool) {
        let Some(f) = t.wgmma.in_flight.iter().find(|f| f.acc.contains(&slot)) else {
            return;
        };
        let (name, e, line) = (
            self.mem_name(at.mem).to_string(),
            slot - f.acc.start,
            self.code.origin(f.pc as usize).line,
        );
        let what = if write { "written" } else { "read" };
        self.hopper_report(FindingKind::WgmmaAccumulatorInFlight, t, pc, || {
            format!("`{name}`[{e}] is {what} while the wgmma of line {line} on it is in flight (wgmma_wait::<0>(&mut {name}) first)")
        });
    }

    /// Reports an ordinary shared access of `size` bytes at `off` that conflicts with an
    /// in-flight `wgmma` (stores) or a TMA load still filling it (reads and stores).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_async_shared(
        &mut self,
        t: &Thread,
        at: &Access,
        elem: u64,
        off: u64,
        size: u32,
        write: bool,
        pc: usize,
    ) {
        for c in chunks_of(off, size as u64) {
            if write && self.hopper.readers.get(c).is_some_and(|n| *n > 0) {
                let name = self.mem_name(at.mem).to_string();
                self.hopper_report(FindingKind::WgmmaOperandOverwritten, t, pc, || {
                    format!("`{name}`[{elem}] is stored to while a wgmma reading it is in flight (wgmma_wait first)")
                });
                return;
            }
            if let Some(load) = self.hopper.filling_load(c, t) {
                let name = self.mem_name(at.mem).to_string();
                let line = self.code.origin(load.pc as usize).line;
                let what = if write { "stored to" } else { "read" };
                self.hopper_report(FindingKind::TmaPendingAccess, t, pc, || {
                    format!("`{name}`[{elem}] is {what} while the TMA load of line {line} is still filling it (mbarrier_wait on its barrier first)")
                });
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swizzles_permute_chunks_within_lines() {
        // 128 B: chunk index ^= line index % 8
        assert_eq!(swizzle(0x000, 128), 0x000);
        assert_eq!(swizzle(0x080, 128), 0x090);
        assert_eq!(swizzle(0x3f0 + 5, 128), 0x385);
        assert_eq!(swizzle(0x180, 64), 0x1b0);
        assert_eq!(swizzle(0x080, 32), 0x090);
        assert_eq!(swizzle(0x0a3, 0), 0x0a3);
    }

    #[test]
    fn descriptors_round_trip() {
        let d = Desc::decode(wgmma_desc(0x2460, 16, 1024));
        assert_eq!((d.start, d.lbo, d.sbo, d.span), (0x2460, 16, 1024, 128));
        // K-major, 128 B: row 9, k 3 at start + 1024 + 128 + 6, chunk 0 ^ (line % 8)
        let d = Desc::decode(wgmma_desc(0, 16, 1024));
        assert_eq!(d.k_major(9, 3), swizzle(1024 + 128 + 6, 128));
    }
}
