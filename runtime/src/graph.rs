//! Graphs: a sequence of Kiln launches (and copies) captured once from a stream and replayed
//! with one call, so a decode step costs the host one launch instead of dozens, and never a
//! synchronisation. Work that changes from replay to replay must read what changes (a cache
//! length, a step counter) from device memory: a replay repeats the captured arguments.
//!
//! While [`Stream::capture`] runs its closure, every launch made on this thread is recorded
//! instead of run: on a GPU into a CUDA graph (the stream is in capture mode, and other
//! streams join the capture by waiting for an [`crate::Event`] recorded inside it), on the
//! emulator into a list that [`Graph::launch`] runs again in order. Inside a capture Kiln
//! adds none of its automatic orderings between a launch and its buffers' own streams: the
//! captured work is ordered by the streams it is issued on and the events recorded and
//! waited for inside the capture, and the whole graph runs after what came before it on the
//! stream it is launched on.
//!
//! The graph remembers the memory its launches use. Freeing (or reallocating, e.g. growing)
//! a captured buffer marks the graph stale, and replaying a stale graph is an error, never a
//! kernel that writes freed memory. Mapped host memory a replay uses waits for the replay
//! before the host reads it, as after an ordinary launch. (On the emulator a buffer is a
//! `Vec`; resizing that `Vec` by hand through [`crate::DeviceBuffer::Host`] is not seen.)

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use cudarc::driver::{sys, CudaEvent, CudaGraph};

use crate::emu::{self, EmuArg, EmuOptions};
use crate::error::{driver, RuntimeError};
use crate::launch::{LaunchConfig, ScalarValue};
use crate::memory::{KernelArg, SliceMem};
use crate::stream::Stream;
use kiln_codegen::Program;

/// A captured sequence of launches; replay it with [`Graph::launch`].
pub struct Graph {
    body: Body,
    guard: Arc<Guard>,
    /// The `last_use` slots of the mapped host buffers the graph uses.
    host_uses: Vec<Arc<Mutex<Option<CudaEvent>>>>,
}

enum Body {
    Cuda(CudaGraph),
    Emulated(Vec<EmuLaunch>),
}

/// Whether a graph's buffers are all still allocated, and if not, which was freed.
#[derive(Default)]
struct Guard {
    freed: Mutex<Option<String>>,
}

/// One recorded emulator launch.
struct EmuLaunch {
    program: Program,
    cfg: LaunchConfig,
    opts: EmuOptions,
    args: Vec<RawArg>,
}

/// An emulator argument by address, valid while the graph's guard says its buffer lives.
enum RawArg {
    Slice {
        ptr: *mut u8,
        len: usize,
        writable: bool,
    },
    Scalar(ScalarValue),
}

// SAFETY: the raw pointers of an emulated graph are only dereferenced by `Graph::launch`,
// which takes `&mut self` and first checks that no recorded buffer was freed.
unsafe impl Send for Graph {}

/// What a capture collects on its thread.
#[derive(Default)]
struct Recorder {
    addresses: Vec<u64>,
    host_uses: Vec<Arc<Mutex<Option<CudaEvent>>>>,
    emulated: Vec<EmuLaunch>,
}

thread_local! {
    static RECORDER: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

/// Buffers some live graph uses, with that graph's guard.
static WATCHED: Mutex<Vec<(u64, Weak<Guard>)>> = Mutex::new(Vec::new());
/// `WATCHED.len()`, read without the lock on every buffer free.
static WATCHED_LEN: AtomicUsize = AtomicUsize::new(0);

/// Whether a capture is running on this thread (launches are recorded, not run).
pub(crate) fn capturing() -> bool {
    RECORDER.with(|r| r.borrow().is_some())
}

/// Records the memory of a launch's arguments in this thread's capture.
pub(crate) fn note_args(args: &[KernelArg<'_>]) {
    RECORDER.with(|r| {
        if let Some(rec) = r.borrow_mut().as_mut() {
            // an empty buffer has no memory to free (and may share its address with others)
            for a in args {
                if let KernelArg::Slice { mem, len, .. } = a {
                    if *len == 0 {
                        continue;
                    }
                    match mem {
                        SliceMem::Device { ptr, last_use, .. } => {
                            rec.addresses.push(*ptr);
                            if let Some(slot) = last_use {
                                if !rec.host_uses.iter().any(|u| Arc::ptr_eq(u, slot)) {
                                    rec.host_uses.push(Arc::clone(slot));
                                }
                            }
                        }
                        SliceMem::Host(b) => rec.addresses.push(b.as_ptr() as u64),
                        SliceMem::HostMut(b) => rec.addresses.push(b.as_ptr() as u64),
                    }
                }
            }
        }
    });
}

/// Records buffers a captured copy uses.
pub(crate) fn note_addresses(addresses: &[u64]) {
    RECORDER.with(|r| {
        if let Some(rec) = r.borrow_mut().as_mut() {
            rec.addresses.extend_from_slice(addresses);
        }
    });
}

/// Records an emulator launch (instead of running it).
pub(crate) fn record_emulated(
    program: &Program,
    cfg: &LaunchConfig,
    opts: &EmuOptions,
    args: &mut [EmuArg<'_>],
) {
    let raw = args
        .iter_mut()
        .map(|a| match a {
            EmuArg::Slice(b) => RawArg::Slice {
                ptr: b.as_ptr() as *mut u8,
                len: b.len(),
                writable: false,
            },
            EmuArg::SliceMut(b) => RawArg::Slice {
                ptr: b.as_mut_ptr(),
                len: b.len(),
                writable: true,
            },
            EmuArg::Scalar(v) => RawArg::Scalar(*v),
        })
        .collect();
    RECORDER.with(|r| {
        if let Some(rec) = r.borrow_mut().as_mut() {
            rec.emulated.push(EmuLaunch {
                program: program.clone(),
                cfg: *cfg,
                opts: *opts,
                args: raw,
            });
        }
    });
}

/// Called when memory at `address` is freed: every graph that uses it becomes stale.
pub(crate) fn released(address: u64, what: &str) {
    if WATCHED_LEN.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
    watched.retain(|(a, guard)| {
        let Some(g) = guard.upgrade() else {
            return false;
        };
        if *a != address {
            return true;
        }
        let mut freed = g.freed.lock().unwrap_or_else(|p| p.into_inner());
        freed.get_or_insert_with(|| format!("a {what} at {address:#x}"));
        false
    });
    WATCHED_LEN.store(watched.len(), Ordering::Release);
}

fn watch(addresses: &[u64], guard: &Arc<Guard>) {
    let mut watched = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
    watched.retain(|(_, g)| g.strong_count() > 0);
    for &a in addresses {
        watched.push((a, Arc::downgrade(guard)));
    }
    WATCHED_LEN.store(watched.len(), Ordering::Release);
}

/// Clears this thread's capture when the closure returns or panics.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        RECORDER.with(|r| r.borrow_mut().take());
    }
}

fn already() -> RuntimeError {
    RuntimeError::InvalidInput {
        what: "capture",
        reason: "a capture is already running on this thread (captures do not nest)".into(),
    }
}

impl Stream {
    /// Captures the work `body` issues (on this stream, and on streams that join it through
    /// events) into a [`Graph`], without running it. Buffers must not be allocated inside
    /// the closure (a GPU allocation would be captured as well).
    pub fn capture(
        &self,
        body: impl FnOnce(&Stream) -> Result<(), RuntimeError>,
    ) -> Result<Graph, RuntimeError> {
        if capturing() {
            return Err(already());
        }
        RECORDER.with(|r| *r.borrow_mut() = Some(Recorder::default()));
        let _clear = Capturing;
        let cuda = match self.cuda() {
            Some(s) => {
                s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                    .map_err(driver)?;
                Some(s)
            }
            None => None,
        };
        let result = body(self);
        let graph = match cuda {
            // end the capture even when the body failed, so the stream is usable again
            Some(s) => s
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map_err(driver),
            None => Ok(None),
        };
        result?;
        let rec = RECORDER.with(|r| r.borrow_mut().take()).unwrap_or_default();
        let body = match graph? {
            Some(g) => Body::Cuda(g),
            None if cuda.is_some() => {
                return Err(RuntimeError::InvalidInput {
                    what: "capture",
                    reason: "the driver returned no graph (nothing was captured)".into(),
                })
            }
            None => Body::Emulated(rec.emulated),
        };
        let guard = Arc::new(Guard::default());
        watch(&rec.addresses, &guard);
        Ok(Graph {
            body,
            guard,
            host_uses: rec.host_uses,
        })
    }
}

impl Graph {
    /// Enqueues one replay on `stream` (GPU: one driver call; the host does not wait). On
    /// the emulator the recorded launches run now, in order. Fails, before anything runs,
    /// when a buffer the graph uses has been freed since the capture.
    pub fn launch(&mut self, stream: &Stream) -> Result<(), RuntimeError> {
        if let Some(what) = self
            .guard
            .freed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(RuntimeError::InvalidInput {
                what: "graph",
                reason: format!(
                    "{what} that the graph uses was freed or reallocated after the capture; capture again"
                ),
            });
        }
        match &self.body {
            Body::Cuda(g) => {
                let s = stream.cuda().ok_or_else(|| RuntimeError::InvalidInput {
                    what: "graph",
                    reason: "a GPU graph cannot be launched on an emulator stream".into(),
                })?;
                s.context().bind_to_thread().map_err(driver)?;
                // SAFETY: the executable graph is alive and every buffer it uses still is
                // (checked above); `s` belongs to the graph's context (checked by the driver).
                unsafe { cudarc::driver::result::graph::launch(g.cu_graph_exec(), s.cu_stream()) }
                    .map_err(driver)?;
                for slot in &self.host_uses {
                    let event = s.record_event(None).map_err(driver)?;
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(event);
                }
                Ok(())
            }
            Body::Emulated(launches) => {
                for l in launches {
                    // SAFETY: every pointer was a live buffer's at capture and none has been
                    // freed since (checked above); `&mut self` keeps replays from overlapping.
                    let mut args: Vec<EmuArg<'_>> = l
                        .args
                        .iter()
                        .map(|a| match *a {
                            RawArg::Slice {
                                ptr,
                                len,
                                writable: false,
                            } => EmuArg::Slice(unsafe { std::slice::from_raw_parts(ptr, len) }),
                            RawArg::Slice {
                                ptr,
                                len,
                                writable: true,
                            } => EmuArg::SliceMut(unsafe {
                                std::slice::from_raw_parts_mut(ptr, len)
                            }),
                            RawArg::Scalar(v) => EmuArg::Scalar(v),
                        })
                        .collect();
                    let reject = |reason: String| RuntimeError::Launch {
                        kernel: l.program.kernel.name.clone(),
                        reason,
                    };
                    emu::run(&l.program, &l.cfg, &mut args, &l.opts)
                        .map_err(|e| reject(e.to_string()))?
                        .into_result()
                        .map_err(|e| reject(e.to_string()))?;
                }
                Ok(())
            }
        }
    }

    /// Whether a buffer the graph uses has been freed or reallocated since the capture (a
    /// replay would be refused): the owner of a cached graph captures again instead.
    pub fn is_stale(&self) -> bool {
        self.guard
            .freed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Launches recorded (emulator) or `None` on a GPU, where the driver owns the nodes.
    pub fn emulated_launches(&self) -> Option<usize> {
        match &self.body {
            Body::Cuda(_) => None,
            Body::Emulated(l) => Some(l.len()),
        }
    }
}
