//! The tensor-core instructions as warp collectives, with the fragment layouts of the PTX
//! ISA ("Warp-level matrix load instruction: ldmatrix", "Matrix fragments for
//! mma.m16n8k16 with floating point type").
//!
//! * `ldmatrix.m8n8.x{1,2,4}[.trans].b16`: lanes `8i..8i+7` give the addresses of the 8
//!   rows (8 × b16, 16 bytes each) of matrix `i`. Lane `l` receives one b32 per matrix:
//!   row `l/4`, elements `2(l%4)` and `2(l%4)+1` (the lower index in the low half); with
//!   `.trans` the matrix is read transposed, i.e. column `l/4`, rows `2(l%4)` and `+1`.
//!   The rows were loaded (and bounds-, alignment- and race-checked) by each addressing lane
//!   before the rendezvous, as a 16-byte shared load; here they are only redistributed.
//! * `mma.sync.m16n8k16.row.col.f32.T.T.f32`, with `g = l/4` (groupID) and `t = l%4`
//!   (threadID_in_group): A register `r` holds row `g + 8(r%2)`, columns `2t + 8(r/2)` and
//!   `+1`; B register `r` holds rows (k) `2t + 8r` and `+1` of column (n) `g`; C/D register
//!   `r` holds row `g + 8(r/2)`, column `2t + r%2`. Each result is the exact sum of its 16
//!   products and the accumulator (every product of two halves is exact in f64, and so is
//!   their sum for all but extreme exponent ranges), rounded once to f32.
//!
//! * `wgmma_rs`'s A operand: the warp hands each lane whole rows `l/4` and `l/4 + 8` of its
//!   16×16 A fragment, which the lane's `wgmma` entries (see `hopper`) multiply.
//!
//! All need all 32 lanes of the warp (`.sync.aligned`); a missing lane is reported
//! ([`FindingKind::IncompleteWarp`]) and its operands count as zeros.

use half::{bf16, f16};

use super::isa::{MatrixOp, Reg};
use super::report::FindingKind;
use super::value::K;
use super::warp::{lane_list, WarpView};

/// Lanes of a warp.
const LANES: usize = 32;

/// (row, column) of half `h` (0 low, 1 high) of A register `r` in lane `l`.
pub(crate) fn a_coord(l: usize, r: usize, h: usize) -> (usize, usize) {
    let (g, t) = (l / 4, l % 4);
    (g + 8 * (r % 2), 2 * t + h + 8 * (r / 2))
}

/// (row k, column n) of half `h` of B register `r` in lane `l`.
pub(crate) fn b_coord(l: usize, r: usize, h: usize) -> (usize, usize) {
    let (g, t) = (l / 4, l % 4);
    (2 * t + h + 8 * r, g)
}

/// (row, column) of C/D register `r` in lane `l`.
pub(crate) fn c_coord(l: usize, r: usize) -> (usize, usize) {
    let (g, t) = (l / 4, l % 4);
    (g + 8 * (r / 2), 2 * t + r % 2)
}

/// `ldmatrix`: lane `l` addressed row `rows[l]`; each lane's `num` registers.
pub(crate) fn ldmatrix(rows: &[[u16; 8]; LANES], num: usize, trans: bool) -> [[u32; 4]; LANES] {
    let mut out = [[0u32; 4]; LANES];
    for (l, regs) in out.iter_mut().enumerate() {
        for (i, reg) in regs.iter_mut().enumerate().take(num) {
            let half = |h: usize| -> u32 {
                let v = if trans {
                    rows[8 * i + 2 * (l % 4) + h][l / 4]
                } else {
                    rows[8 * i + l / 4][2 * (l % 4) + h]
                };
                v as u32
            };
            *reg = half(0) | half(1) << 16;
        }
    }
    out
}

/// The value of a 16-bit float of kind `elem`.
pub(crate) fn half_value(elem: K, bits: u32) -> f64 {
    let b = bits as u16;
    match elem {
        K::F16 => f16::from_bits(b).to_f64(),
        _ => bf16::from_bits(b).to_f64(),
    }
}

/// `mma.sync.m16n8k16` on whole-warp fragments: D = A·B + C (C and D as f32 bits).
pub(crate) fn mma(
    elem: K,
    a: &[[u32; 4]; LANES],
    b: &[[u32; 2]; LANES],
    c: &[[u32; 4]; LANES],
) -> [[u32; 4]; LANES] {
    let mut am = [[0f64; 16]; 16];
    let mut bm = [[0f64; 8]; 16];
    for (l, (ar, br)) in a.iter().zip(b).enumerate() {
        for h in 0..2 {
            for (r, v) in ar.iter().enumerate() {
                let (i, k) = a_coord(l, r, h);
                am[i][k] = half_value(elem, v >> (16 * h));
            }
            for (r, v) in br.iter().enumerate() {
                let (k, j) = b_coord(l, r, h);
                bm[k][j] = half_value(elem, v >> (16 * h));
            }
        }
    }
    let mut d = [[0u32; 4]; LANES];
    for l in 0..LANES {
        for r in 0..4 {
            let (i, j) = c_coord(l, r);
            let acc = f32::from_bits(c[l][r]) as f64;
            let sum = (0..16).fold(acc, |s, k| s + am[i][k] * bm[k][j]);
            d[l][r] = (sum as f32).to_bits();
        }
    }
    d
}

/// For `wgmma_rs`: each lane's rows `l/4` and `l/4 + 8` of the warp's 16×16 A (from its
/// `mma` A fragments), 8 slots per row, two halves (k even low) per slot.
pub(crate) fn a_rows(a: &[[u32; 4]; LANES]) -> [[u32; 16]; LANES] {
    let mut am = [[0u16; 16]; 16];
    for (l, regs) in a.iter().enumerate() {
        for (r, v) in regs.iter().enumerate() {
            for h in 0..2 {
                let (i, k) = a_coord(l, r, h);
                am[i][k] = (v >> (16 * h)) as u16;
            }
        }
    }
    std::array::from_fn(|l| {
        std::array::from_fn(|s| {
            let (row, k) = (l / 4 + 8 * (s / 8), 2 * (s % 8));
            am[row][k] as u32 | (am[row][k + 1] as u32) << 16
        })
    })
}

impl WarpView<'_> {
    /// Lane `l`'s `n` slots from `r` (zeros for a lane that is not a member).
    fn slots<const N: usize>(&self, members: u32, r: Reg) -> [[u32; N]; LANES] {
        let mut out = [[0u32; N]; LANES];
        for (l, regs) in out.iter_mut().enumerate() {
            if members >> l & 1 == 1 {
                for (k, v) in regs.iter_mut().enumerate() {
                    *v = self.reg(l, r + k as Reg) as u32;
                }
            }
        }
        out
    }

    /// Runs a tensor-core instruction for the lanes `members` stopped at it.
    pub(crate) fn matrix(
        &mut self,
        pc: usize,
        op: MatrixOp,
        members: u32,
        dst: Reg,
        src: [Reg; 3],
    ) {
        self.check_whole_warp(pc, op, members);
        let widen =
            |r: [[u32; 4]; LANES]| r.map(|v| std::array::from_fn(|k| v.get(k).map_or(0, |x| *x)));
        let (out, n): ([[u32; 16]; LANES], usize) = match op {
            MatrixOp::Ldmatrix { num, trans } => {
                let rows16: [[u32; 8]; LANES] = self.slots(members, src[0]);
                let rows = rows16.map(|r| r.map(|v| v as u16));
                (widen(ldmatrix(&rows, num as usize, trans)), num as usize)
            }
            MatrixOp::Mma { elem } => {
                let a = self.slots(members, src[0]);
                let b = self.slots(members, src[1]);
                let c = self.slots(members, src[2]);
                (widen(mma(elem, &a, &b, &c)), 4)
            }
            MatrixOp::WgmmaRows => (a_rows(&self.slots(members, src[0])), 16),
        };
        for l in (0..LANES).filter(|l| members >> l & 1 == 1) {
            for (k, v) in out[l].iter().take(n).enumerate() {
                self.regs[l * self.frame + dst as usize + k] = *v as u64;
            }
        }
    }

    fn check_whole_warp(&mut self, pc: usize, op: MatrixOp, members: u32) {
        if members == u32::MAX {
            return;
        }
        let Some(first) = (0..LANES).find(|l| members >> l & 1 == 1) else {
            return;
        };
        let name = match op {
            MatrixOp::Ldmatrix { num, trans } => {
                format!("ldmatrix_x{num}{}", if trans { "_trans" } else { "" })
            }
            MatrixOp::Mma { .. } => "mma".to_string(),
            MatrixOp::WgmmaRows => "wgmma_rs".to_string(),
        };
        let missing = !members;
        let detail = format!(
            "`{name}` is executed by lane(s) {} only; it needs all 32 lanes of the warp: {}",
            lane_list(members),
            self.describe(missing)
        );
        let who = self.who(first);
        self.findings
            .report(FindingKind::IncompleteWarp, pc, who, || detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each lane's fragment registers of a row-major `m × n` matrix of halves.
    fn fragment<const R: usize>(
        m: &[Vec<f32>],
        coord: fn(usize, usize, usize) -> (usize, usize),
    ) -> [[u32; R]; LANES] {
        let mut out = [[0u32; R]; LANES];
        for (l, regs) in out.iter_mut().enumerate() {
            for (r, reg) in regs.iter_mut().enumerate() {
                for h in 0..2 {
                    let (i, j) = coord(l, r, h);
                    *reg |= (bf16::from_f32(m[i][j]).to_bits() as u32) << (16 * h);
                }
            }
        }
        out
    }

    #[test]
    fn mma_of_small_integers_is_exact() {
        let a: Vec<Vec<f32>> = (0..16)
            .map(|i| {
                (0..16)
                    .map(|k| ((i * 3 + k * 5) % 9) as f32 - 4.0)
                    .collect()
            })
            .collect();
        let b: Vec<Vec<f32>> = (0..16)
            .map(|k| (0..8).map(|j| ((k * 7 + j) % 5) as f32 - 2.0).collect())
            .collect();
        let mut c = [[0u32; 4]; LANES];
        for (l, regs) in c.iter_mut().enumerate() {
            for (r, v) in regs.iter_mut().enumerate() {
                let (i, j) = c_coord(l, r);
                *v = ((i * 8 + j) as f32).to_bits();
            }
        }
        let d = mma(K::Bf16, &fragment(&a, a_coord), &fragment(&b, b_coord), &c);
        for (l, regs) in d.iter().enumerate() {
            for (r, v) in regs.iter().enumerate() {
                let (i, j) = c_coord(l, r);
                let want: f32 =
                    (0..16).map(|k| a[i][k] * b[k][j]).sum::<f32>() + (i * 8 + j) as f32;
                assert_eq!(
                    f32::from_bits(*v),
                    want,
                    "D[{i}][{j}] in lane {l} register {r}"
                );
            }
        }
    }

    #[test]
    fn wgmma_rows_hand_each_lane_its_two_rows() {
        let m: Vec<Vec<f32>> = (0..16)
            .map(|i| (0..16).map(|k| (16 * i + k) as f32).collect())
            .collect();
        let rows = a_rows(&fragment::<4>(&m, a_coord));
        for (l, slots) in rows.iter().enumerate() {
            for (s, v) in slots.iter().enumerate() {
                let (row, k) = (l / 4 + 8 * (s / 8), 2 * (s % 8));
                for h in 0..2 {
                    let got = bf16::from_bits((v >> (16 * h)) as u16).to_f32();
                    assert_eq!(got, m[row][k + h], "lane {l} slot {s} half {h}");
                }
            }
        }
    }

    #[test]
    fn fragment_layouts_cover_each_element_once() {
        let mut a = [[0u8; 16]; 16];
        let mut b = [[0u8; 8]; 16];
        let mut c = [[0u8; 8]; 16];
        for l in 0..LANES {
            for h in 0..2 {
                for r in 0..4 {
                    let (i, k) = a_coord(l, r, h);
                    a[i][k] += 1;
                }
                for r in 0..2 {
                    let (k, j) = b_coord(l, r, h);
                    b[k][j] += 1;
                }
            }
            for r in 0..4 {
                let (i, j) = c_coord(l, r);
                c[i][j] += 1;
            }
        }
        assert!(a.iter().flatten().all(|n| *n == 1));
        assert!(b.iter().flatten().all(|n| *n == 1));
        assert!(c.iter().flatten().all(|n| *n == 1));
    }

    #[test]
    fn ldmatrix_follows_the_ptx_layout() {
        let mut rows = [[0u16; 8]; LANES];
        for (l, row) in rows.iter_mut().enumerate() {
            for (e, v) in row.iter_mut().enumerate() {
                *v = (l * 8 + e) as u16;
            }
        }
        let plain = ldmatrix(&rows, 4, false);
        let trans = ldmatrix(&rows, 4, true);
        for l in 0..LANES {
            for i in 0..4 {
                // matrix i, row l/4, elements 2(l%4), +1
                let base = (8 * i + l / 4) * 8 + 2 * (l % 4);
                assert_eq!(plain[l][i], base as u32 | (base as u32 + 1) << 16);
                // transposed: column l/4 of rows 2(l%4) and 2(l%4) + 1
                let lo = (8 * i + 2 * (l % 4)) * 8 + l / 4;
                assert_eq!(trans[l][i], lo as u32 | (lo as u32 + 8) << 16);
            }
        }
        let x1 = ldmatrix(&rows, 1, false);
        assert!(x1.iter().all(|r| r[1..] == [0, 0, 0]));
    }
}
