//! Shadow state of shared memory: who last wrote and read each byte, in which barrier
//! interval, to find races and reads of bytes never written.
//!
//! Happens-before is kept simple and exact for the constructs Kiln has: `sync_threads`
//! orders everything before it in the block against everything after it (a new *epoch*);
//! `sync_warp` orders the accesses of one warp (a per-warp counter); atomics do not race
//! with each other. Two accesses of the same byte in the same epoch by different threads,
//! at least one a write, not both atomic and not ordered by a `sync_warp` of their common
//! warp, are a race — whichever order the scheduler happened to run them in. Each byte
//! remembers its last writer and its readers (one thread, or "several" with their warp if
//! they all share one).

/// "Several threads" in a reader record.
const MANY: u16 = u16::MAX;
/// The epoch of writes by the copy engine: never the epoch of a thread's access.
const ASYNC: u32 = u32::MAX;

/// One recorded access.
#[derive(Clone, Copy, Default, Debug)]
struct Stamp {
    /// Barrier interval (0: never).
    epoch: u32,
    /// The accessing warp's `sync_warp` count at the time (the largest, for readers).
    wepoch: u32,
    tid: u16,
    warp: u16,
    atomic: bool,
    pc: u32,
}

#[derive(Clone, Copy, Default, Debug)]
struct Cell {
    w: Stamp,
    r: Stamp,
}

/// The accessing thread, as the shadow sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Accessor {
    pub tid: u16,
    pub warp: u16,
    pub epoch: u32,
    /// The `sync_warp` count of the accessor's warp now.
    pub wepoch: u32,
    pub pc: u32,
}

/// Why an access is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    /// Nothing wrote this byte in this block yet.
    Uninit,
    /// Conflicts with an access of another thread (`other` is `None` for "several").
    Race {
        what: &'static str,
        other: Option<u16>,
        other_pc: u32,
    },
}

/// Shadow cells for the shared memory of one block.
#[derive(Default)]
pub(crate) struct Shadow {
    cells: Vec<Cell>,
}

impl Stamp {
    fn of(a: Accessor, atomic: bool) -> Stamp {
        Stamp {
            epoch: a.epoch,
            wepoch: a.wepoch,
            tid: a.tid,
            warp: a.warp,
            atomic,
            pc: a.pc,
        }
    }

    /// Whether this earlier access and one by `a` now are unordered and conflict.
    fn conflicts(&self, a: Accessor, atomic: bool) -> bool {
        self.epoch == a.epoch
            && self.tid != a.tid
            && !(self.warp == a.warp && self.wepoch < a.wepoch)
            && !(self.atomic && atomic)
    }

    fn race(&self, what: &'static str) -> Problem {
        Problem::Race {
            what,
            other: (self.tid != MANY).then_some(self.tid),
            other_pc: self.pc,
        }
    }
}

impl Shadow {
    /// Forgets everything for a new block using `n` bytes.
    pub(crate) fn reset(&mut self, n: usize) {
        if self.cells.len() < n {
            self.cells.resize(n, Cell::default());
        }
        self.cells[..n].fill(Cell::default());
    }

    fn cells(&mut self, off: u64, size: u32) -> &mut [Cell] {
        let s = (off as usize).min(self.cells.len());
        let e = (s + size as usize).min(self.cells.len());
        &mut self.cells[s..e]
    }

    /// Records a read of `size` bytes at `off`; the first problem, if any.
    pub(crate) fn read(&mut self, off: u64, size: u32, a: Accessor) -> Option<Problem> {
        let mut problem = None;
        for c in self.cells(off, size) {
            if problem.is_none() {
                if c.w.epoch == 0 {
                    problem = Some(Problem::Uninit);
                } else if c.w.conflicts(a, false) {
                    problem = Some(c.w.race("read of a value written"));
                }
            }
            if c.r.epoch != a.epoch {
                c.r = Stamp::of(a, false);
            } else {
                if c.r.tid != a.tid {
                    c.r.tid = MANY;
                }
                if c.r.warp != a.warp {
                    c.r.warp = MANY;
                }
                c.r.wepoch = c.r.wepoch.max(a.wepoch);
            }
        }
        problem
    }

    /// Records a write (`atomic`: a read-modify-write by an atomic) of `size` bytes at
    /// `off`; the first problem, if any. An atomic also reads, so it reports bytes never
    /// written.
    pub(crate) fn write(
        &mut self,
        off: u64,
        size: u32,
        a: Accessor,
        atomic: bool,
    ) -> Option<Problem> {
        let mut problem = None;
        for c in self.cells(off, size) {
            if problem.is_none() {
                if atomic && c.w.epoch == 0 {
                    problem = Some(Problem::Uninit);
                } else if c.w.conflicts(a, atomic) {
                    problem = Some(c.w.race("write of a value also written"));
                } else if c.r.conflicts(a, atomic) {
                    problem = Some(c.r.race("write of a value read"));
                }
            }
            c.w = Stamp::of(a, atomic);
        }
        problem
    }
}

impl Shadow {
    /// Records a write by the copy engine (a TMA load) of `size` bytes at `off`: the bytes
    /// count as written but race with nothing, since the load is ordered by its barrier
    /// (checked by `hopper`), not by `sync_threads`.
    pub(crate) fn write_async(&mut self, off: u64, size: u32) {
        for c in self.cells(off, size) {
            c.w = Stamp {
                epoch: ASYNC,
                tid: MANY,
                warp: MANY,
                ..Stamp::default()
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tid: u16, epoch: u32) -> Accessor {
        Accessor {
            tid,
            warp: tid / 32,
            epoch,
            wepoch: 0,
            pc: 7,
        }
    }

    #[test]
    fn races_only_within_an_epoch() {
        let mut s = Shadow::default();
        s.reset(8);
        assert_eq!(s.read(0, 4, at(0, 1)), Some(Problem::Uninit));
        assert!(matches!(
            s.write(0, 4, at(1, 1), false),
            Some(Problem::Race { other: Some(0), .. })
        ));
        let mut s = Shadow::default();
        s.reset(8);
        assert_eq!(s.write(0, 4, at(0, 1), false), None);
        assert!(matches!(
            s.read(0, 4, at(1, 1)),
            Some(Problem::Race { other: Some(0), .. })
        ));
        assert_eq!(s.read(0, 4, at(2, 2)), None);
        assert_eq!(s.write(4, 4, at(3, 2), true), Some(Problem::Uninit));
        assert_eq!(s.write(4, 4, at(4, 2), true), None);
    }
}
