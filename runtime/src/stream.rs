//! Streams and events: queues of device work and markers in them, so that independent work
//! (e.g. prefetching the next layer's data while this layer computes) can overlap and be
//! ordered by the device, never by the host blocking. On the emulator every launch runs to
//! completion when issued, so streams and events are trivially ordered.

use std::sync::Arc;

use cudarc::driver::{sys, CudaEvent, CudaStream};

use crate::device::{Backend, Device};
use crate::error::{driver, RuntimeError};

/// A queue of device work. Work on one stream runs in order; work on different streams may
/// overlap. A launch on a stream first waits for the streams its buffers belong to (device
/// buffers are allocated and copied on the device's default stream) and makes them wait for
/// it, so buffers are never freed or overwritten under a running kernel; use [`Event`]s to
/// order anything else.
#[derive(Clone)]
pub struct Stream {
    inner: Option<Arc<CudaStream>>,
}

/// A point in a stream's work that other streams can wait for.
pub struct Event {
    inner: Option<CudaEvent>,
    /// When it was recorded, for timed events on the emulator.
    at: Option<std::time::Instant>,
}

impl Device {
    /// The stream every copy and `launch` of this device uses.
    pub fn default_stream(&self) -> Stream {
        match self.backend() {
            Backend::Gpu(g) => Stream {
                inner: Some(g.stream.clone()),
            },
            Backend::Emulator(_) => Stream { inner: None },
        }
    }

    /// A new stream, for work that may overlap the default stream's.
    pub fn new_stream(&self) -> Result<Stream, RuntimeError> {
        match self.backend() {
            Backend::Gpu(g) => Ok(Stream {
                inner: Some(g.ctx.new_stream().map_err(driver)?),
            }),
            Backend::Emulator(_) => Ok(Stream { inner: None }),
        }
    }
}

impl Stream {
    /// The cudarc stream (GPU only), for interop.
    pub fn cuda(&self) -> Option<&Arc<CudaStream>> {
        self.inner.as_ref()
    }

    /// Marks the current end of this stream's work.
    pub fn record(&self) -> Result<Event, RuntimeError> {
        self.record_with(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
    }

    /// Marks the current end of this stream's work with an event that can be timed against
    /// another ([`Event::elapsed_ms`]); on the emulator the host clock stands in.
    pub fn record_timed(&self) -> Result<Event, RuntimeError> {
        self.record_with(sys::CUevent_flags::CU_EVENT_DEFAULT)
    }

    fn record_with(&self, flags: sys::CUevent_flags) -> Result<Event, RuntimeError> {
        match &self.inner {
            Some(s) => {
                let e = s.context().new_event(Some(flags)).map_err(driver)?;
                e.record(s).map_err(driver)?;
                Ok(Event {
                    inner: Some(e),
                    at: None,
                })
            }
            None => Ok(Event {
                inner: None,
                at: Some(std::time::Instant::now()),
            }),
        }
    }

    /// Makes later work on this stream wait (on the device) until `event` has happened.
    pub fn wait(&self, event: &Event) -> Result<(), RuntimeError> {
        match (&self.inner, &event.inner) {
            (Some(s), Some(e)) => s.wait(e).map_err(driver),
            _ => Ok(()),
        }
    }

    /// Blocks the host until this stream's work is done.
    pub fn synchronize(&self) -> Result<(), RuntimeError> {
        match &self.inner {
            Some(s) => s.synchronize().map_err(driver),
            None => Ok(()),
        }
    }
}

impl Event {
    /// Whether the work before the event has finished (never blocks).
    pub fn is_done(&self) -> bool {
        self.inner.as_ref().is_none_or(|e| e.is_complete())
    }

    /// Milliseconds from this event to `later` (both from [`Stream::record_timed`]); waits
    /// for `later`.
    pub fn elapsed_ms(&self, later: &Event) -> Result<f64, RuntimeError> {
        match (&self.inner, &later.inner, self.at, later.at) {
            (Some(a), Some(b), _, _) => {
                b.synchronize().map_err(driver)?;
                a.elapsed_ms(b).map(|ms| ms as f64).map_err(driver)
            }
            (None, None, Some(a), Some(b)) => Ok(b.duration_since(a).as_secs_f64() * 1e3),
            _ => Err(RuntimeError::InvalidInput {
                what: "event",
                reason: "time events of one device, both from `record_timed`".into(),
            }),
        }
    }

    /// Blocks the host until the event has happened.
    pub fn synchronize(&self) -> Result<(), RuntimeError> {
        match &self.inner {
            Some(e) => e.synchronize().map_err(driver),
            None => Ok(()),
        }
    }
}
