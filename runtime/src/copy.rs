//! Asynchronous copies on a chosen stream: pinned host memory to and from device memory,
//! and device to device, each a range of elements. The host does not wait: the copy is
//! queued behind the stream's earlier work, and pinned memory's host access (`Deref`) waits
//! for it as it does for a kernel. On the emulator the copy happens at once. A range outside
//! either buffer is an error before anything is queued.

use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::CudaStream;

use crate::error::{driver, RuntimeError};
use crate::host_memory::PinnedBuffer;
use crate::memory::{DeviceBuffer, Element};
use crate::stream::Stream;

/// The element range `[at, at + len)` of a buffer of `have` elements, or why not.
fn range(
    what: &'static str,
    at: usize,
    len: usize,
    have: usize,
) -> Result<Range<usize>, RuntimeError> {
    match at.checked_add(len) {
        Some(end) if end <= have => Ok(at..end),
        _ => Err(RuntimeError::InvalidInput {
            what,
            reason: format!("elements {at}..{at}+{len} of a buffer of {have}"),
        }),
    }
}

fn not_here() -> RuntimeError {
    RuntimeError::InvalidInput {
        what: "copy",
        reason: "the buffers and the stream must all be on the GPU or all on the emulator".into(),
    }
}

fn no_emulated_capture() -> RuntimeError {
    RuntimeError::InvalidInput {
        what: "copy",
        reason: "the emulator does not capture copies; issue them outside `Stream::capture`".into(),
    }
}

/// The device address of element `at` of a device buffer, with the stream it lives on.
fn device_at<T: Element>(buf: &DeviceBuffer<T>, at: usize) -> Option<(u64, Arc<CudaStream>)> {
    let s = buf.as_cuda_slice()?;
    Some((
        buf.address() + (at * std::mem::size_of::<T>()) as u64,
        s.stream().clone(),
    ))
}

impl Stream {
    /// Whether a copy may run now on the emulator: an emulator stream, outside a capture.
    fn emulated_copy(&self) -> Result<(), RuntimeError> {
        if self.cuda().is_some() {
            return Err(not_here());
        }
        if crate::graph::capturing() {
            return Err(no_emulated_capture());
        }
        Ok(())
    }

    /// Runs `copy` on this stream after the work queued on `buffer_stream` (the stream a
    /// device buffer was allocated on), and makes that stream wait for it, as a launch does;
    /// inside a capture the graph orders it instead.
    fn ordered(
        &self,
        buffer_streams: &[&Arc<CudaStream>],
        copy: impl FnOnce(&Arc<CudaStream>) -> Result<(), RuntimeError>,
    ) -> Result<(), RuntimeError> {
        let s = self.cuda().ok_or_else(not_here)?;
        s.context().bind_to_thread().map_err(driver)?;
        let capturing = crate::graph::capturing();
        let others: Vec<&&Arc<CudaStream>> = buffer_streams
            .iter()
            .filter(|b| !capturing && b.cu_stream() != s.cu_stream())
            .collect();
        for o in &others {
            s.join(o).map_err(driver)?;
        }
        copy(s)?;
        for o in &others {
            o.join(s).map_err(driver)?;
        }
        Ok(())
    }

    /// Leaves the event that host access to `host` waits for (outside a capture).
    fn mark_host_use<T: Element>(&self, host: &PinnedBuffer<T>) -> Result<(), RuntimeError> {
        if let (Some(s), false) = (self.cuda(), crate::graph::capturing()) {
            let event = s.record_event(None).map_err(driver)?;
            *host
                .last_use_slot()
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(event);
        }
        Ok(())
    }

    /// Copies `src[src_at .. src_at + len]` (pinned host memory) to `dst[dst_at ..]`.
    pub fn copy_htod_async<T: Element>(
        &self,
        src: &PinnedBuffer<T>,
        src_at: usize,
        dst: &mut DeviceBuffer<T>,
        dst_at: usize,
        len: usize,
    ) -> Result<(), RuntimeError> {
        self.copy_htod_rows(src, dst, &[(src_at, dst_at)], len)
    }

    /// One copy of `len` elements per `(src_at, dst_at)` pair, from pinned host memory to
    /// device memory, in order (a scatter/gather by rows: one driver copy each, ordered and
    /// checked once for the whole list).
    pub fn copy_htod_rows<T: Element>(
        &self,
        src: &PinnedBuffer<T>,
        dst: &mut DeviceBuffer<T>,
        rows: &[(usize, usize)],
        len: usize,
    ) -> Result<(), RuntimeError> {
        for &(s, d) in rows {
            range("copy source", s, len, src.len())?;
            range("copy destination", d, len, dst.len())?;
        }
        if let DeviceBuffer::Host(v) = dst {
            self.emulated_copy()?;
            for &(s, d) in rows {
                v[d..d + len].copy_from_slice(&src[s..s + len]);
            }
            return Ok(());
        }
        let (base, home) = device_at(dst, 0).ok_or_else(not_here)?;
        src.wait_for_kernels();
        if crate::graph::capturing() {
            crate::graph::note_addresses(&[dst.address(), src.address()]);
        }
        let size = std::mem::size_of::<T>();
        self.ordered(&[&home], |s| {
            for &(from, to) in rows {
                // SAFETY: both ranges lie inside their buffers (checked above); `src` stays
                // allocated until its drop, which waits for this copy (`mark_host_use`).
                unsafe {
                    let host = std::slice::from_raw_parts(src.host_ptr().add(from), len);
                    cudarc::driver::result::memcpy_htod_async(
                        base + (to * size) as u64,
                        host,
                        s.cu_stream(),
                    )
                }
                .map_err(driver)?;
            }
            Ok(())
        })?;
        self.mark_host_use(src)
    }

    /// Copies `src[src_at .. src_at + len]` (device memory) to `dst[dst_at ..]` (pinned
    /// host memory, whose host access then waits for the copy).
    pub fn copy_dtoh_async<T: Element>(
        &self,
        src: &DeviceBuffer<T>,
        src_at: usize,
        dst: &mut PinnedBuffer<T>,
        dst_at: usize,
        len: usize,
    ) -> Result<(), RuntimeError> {
        let from = range("copy source", src_at, len, src.len())?;
        let to = range("copy destination", dst_at, len, dst.len())?;
        if let DeviceBuffer::Host(v) = src {
            self.emulated_copy()?;
            dst[to].copy_from_slice(&v[from]);
            return Ok(());
        }
        let (ptr, home) = device_at(src, src_at).ok_or_else(not_here)?;
        dst.wait_for_kernels();
        if crate::graph::capturing() {
            crate::graph::note_addresses(&[src.address(), dst.address()]);
        }
        // SAFETY: as in `copy_htod_async`; the host range is written only by the copy.
        let host = unsafe {
            std::slice::from_raw_parts_mut((dst.host_ptr() as *mut T).add(to.start), len)
        };
        self.ordered(&[&home], |s| {
            // SAFETY: `ptr .. ptr + len` lies inside `src` (checked above).
            unsafe { cudarc::driver::result::memcpy_dtoh_async(host, ptr, s.cu_stream()) }
                .map_err(driver)
        })?;
        self.mark_host_use(dst)
    }

    /// Copies `src[src_at .. src_at + len]` to `dst[dst_at ..]`, both device memory.
    pub fn copy_dtod_async<T: Element>(
        &self,
        src: &DeviceBuffer<T>,
        src_at: usize,
        dst: &mut DeviceBuffer<T>,
        dst_at: usize,
        len: usize,
    ) -> Result<(), RuntimeError> {
        let from = range("copy source", src_at, len, src.len())?;
        let to = range("copy destination", dst_at, len, dst.len())?;
        let (src_dev, src_addr, dst_addr) = (device_at(src, src_at), src.address(), dst.address());
        match (src, dst) {
            (DeviceBuffer::Host(a), DeviceBuffer::Host(b)) if self.cuda().is_none() => {
                self.emulated_copy()?;
                b[to].copy_from_slice(&a[from]);
                Ok(())
            }
            (DeviceBuffer::Cuda(_), dst @ DeviceBuffer::Cuda(_)) => {
                let (sp, sh) = src_dev.ok_or_else(not_here)?;
                let (dp, dh) = device_at(dst, dst_at).ok_or_else(not_here)?;
                if crate::graph::capturing() {
                    crate::graph::note_addresses(&[src_addr, dst_addr]);
                }
                let bytes = len * std::mem::size_of::<T>();
                self.ordered(&[&sh, &dh], |s| {
                    // SAFETY: both ranges lie inside their buffers (checked above).
                    unsafe {
                        cudarc::driver::result::memcpy_dtod_async(dp, sp, bytes, s.cu_stream())
                    }
                    .map_err(driver)
                })
            }
            _ => Err(not_here()),
        }
    }
}
