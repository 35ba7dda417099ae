//! Global and shared memory.
//!
//! Global memory is shared by the host threads that run blocks in parallel, so it must stay
//! free of data races in the Rust sense whatever the kernel does. Read-only slices are
//! only ever read, so they are used in place. Writable slices are copied into 64-bit
//! atomic words for the launch and copied back afterwards: plain loads and stores are
//! relaxed atomic operations (a narrower store is a compare-and-swap loop on its word, so
//! neighbouring elements written by other blocks are never clobbered), and the kernel's
//! atomics are real read-modify-writes on those words (acquire/release), so they combine
//! correctly across blocks. `thread_fence` is a sequentially consistent fence.
//!
//! Shared memory belongs to one block, which one host thread runs: a plain byte buffer.

use std::sync::atomic::{fence, AtomicU64, Ordering};

/// One global buffer of a launch.
pub(crate) enum GlobalBuf<'a> {
    /// A read-only slice, read in place.
    Ro(&'a [u8]),
    /// A writable slice's bytes in atomic words (the last one zero-padded).
    Rw(Vec<AtomicU64>),
}

/// The global memory of a launch: one buffer per slice argument.
pub(crate) struct Global<'a> {
    pub bufs: Vec<GlobalBuf<'a>>,
    /// The caller's address of each buffer (what a tensor map names its tensor by).
    pub addresses: Vec<u64>,
}

fn mask(size: u32) -> u64 {
    u64::MAX >> (64 - 8 * size.clamp(1, 8))
}

fn le_bytes(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take(8)
        .enumerate()
        .fold(0u64, |v, (i, b)| v | (*b as u64) << (8 * i))
}

impl<'a> GlobalBuf<'a> {
    /// A writable buffer holding a copy of `bytes`.
    pub(crate) fn writable(bytes: &[u8]) -> GlobalBuf<'a> {
        GlobalBuf::Rw(
            bytes
                .chunks(8)
                .map(|c| AtomicU64::new(le_bytes(c)))
                .collect(),
        )
    }

    /// Copies a writable buffer's contents back into `out`.
    pub(crate) fn copy_back(&self, out: &mut [u8]) {
        if let GlobalBuf::Rw(words) = self {
            for (chunk, w) in out.chunks_mut(8).zip(words) {
                let bytes = w.load(Ordering::Relaxed).to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }
    }
}

impl Global<'_> {
    /// `size` bytes at byte offset `off` (naturally aligned, in bounds).
    pub(crate) fn load(&self, buf: u16, off: u64, size: u32) -> u64 {
        match self.bufs.get(buf as usize) {
            Some(GlobalBuf::Ro(b)) => {
                let start = off as usize;
                b.get(start..start + size as usize)
                    .map(le_bytes)
                    .unwrap_or(0)
            }
            Some(GlobalBuf::Rw(words)) => match words.get((off / 8) as usize) {
                Some(w) => (w.load(Ordering::Relaxed) >> ((off % 8) * 8)) & mask(size),
                None => 0,
            },
            None => 0,
        }
    }

    /// Stores the low `size` bytes of `bits` at byte offset `off`.
    pub(crate) fn store(&self, buf: u16, off: u64, size: u32, bits: u64) {
        if size == 8 {
            if let Some(GlobalBuf::Rw(words)) = self.bufs.get(buf as usize) {
                if let Some(w) = words.get((off / 8) as usize) {
                    w.store(bits, Ordering::Relaxed);
                }
            }
            return;
        }
        self.update(buf, off, size, Ordering::Relaxed, &|_| bits);
    }

    /// Atomically replaces the value at `off` by `f(old)`; returns the old value.
    pub(crate) fn rmw(&self, buf: u16, off: u64, size: u32, f: &dyn Fn(u64) -> u64) -> u64 {
        self.update(buf, off, size, Ordering::AcqRel, f)
    }

    fn update(
        &self,
        buf: u16,
        off: u64,
        size: u32,
        order: Ordering,
        f: &dyn Fn(u64) -> u64,
    ) -> u64 {
        let Some(GlobalBuf::Rw(words)) = self.bufs.get(buf as usize) else {
            return 0;
        };
        let Some(w) = words.get((off / 8) as usize) else {
            return 0;
        };
        let shift = (off % 8) * 8;
        let m = mask(size) << shift;
        let mut cur = w.load(Ordering::Relaxed);
        loop {
            let old = (cur & m) >> shift;
            let new = (cur & !m) | ((f(old) << shift) & m);
            match w.compare_exchange_weak(cur, new, order, Ordering::Relaxed) {
                Ok(_) => return old,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The caller's address of buffer `buf`.
    pub(crate) fn address(&self, buf: u16) -> Option<u64> {
        self.addresses.get(buf as usize).copied()
    }

    /// `__threadfence()`.
    pub(crate) fn fence(&self) {
        fence(Ordering::SeqCst);
    }
}

/// A block's shared memory.
#[derive(Default)]
pub(crate) struct SharedBytes {
    bytes: Vec<u8>,
    /// Bytes the current block has.
    used: usize,
}

impl SharedBytes {
    /// Zeroes the first `n` bytes for a new block (growing the buffer if needed).
    pub(crate) fn reset(&mut self, n: usize) {
        if self.bytes.len() < n {
            self.bytes.resize(n, 0);
        }
        self.bytes[..n].fill(0);
        self.used = n;
    }

    /// Bytes the current block has.
    pub(crate) fn len(&self) -> usize {
        self.used
    }

    pub(crate) fn load(&self, off: u64, size: u32) -> u64 {
        let s = off as usize;
        self.bytes
            .get(s..s + size as usize)
            .map(le_bytes)
            .unwrap_or(0)
    }

    pub(crate) fn store(&mut self, off: u64, size: u32, bits: u64) {
        let s = off as usize;
        if let Some(dst) = self.bytes.get_mut(s..s + size as usize) {
            dst.copy_from_slice(&bits.to_le_bytes()[..size as usize]);
        }
    }
}
