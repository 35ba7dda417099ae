//! The measured ceilings of the present card, for the "% of roofline" column of every
//! bench: device copy bandwidth (a 1 GiB device-to-device copy, bytes read plus written) and
//! pinned host-to-device bandwidth. Stored per device name next to the compile cache.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cudarc::driver::sys;

use crate::device::Device;
use crate::error::{driver, RuntimeError};
use crate::memory::DeviceBuffer;
use crate::timing::time;

/// Measured ceilings of one device.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Roofline {
    /// Device name.
    pub device: String,
    /// Device memory bandwidth of a large device-to-device copy, GB/s (read + write).
    pub copy_gb_s: f64,
    /// Pinned host-to-device copy bandwidth, GB/s.
    pub h2d_gb_s: f64,
    /// `mma.sync` m16n8k16 bf16 rate measured by a Kiln kernel, TFLOP/s (when measured).
    #[serde(default)]
    pub mma_bf16_tflops: Option<f64>,
}

fn store_path() -> Option<PathBuf> {
    crate::cache::cache_dir().map(|d| d.join("roofline.json"))
}

impl Roofline {
    /// Measures the bandwidth ceilings of `device` (a GPU) and stores them (the tensor-core
    /// rate needs a Kiln kernel: `kiln::roofline::measure` adds it).
    pub fn measure(device: &Device) -> Result<Roofline, RuntimeError> {
        let g = device
            .as_gpu()
            .ok_or_else(|| RuntimeError::NoGpu("the roofline is measured on a GPU".into()))?;
        let n: usize = 1 << 28; // 1 GiB of u32
        let src = device.zeros::<u32>(n)?;
        let mut dst = device.zeros::<u32>(n)?;
        let (DeviceBuffer::Cuda(s), DeviceBuffer::Cuda(d)) = (&src, &mut dst) else {
            return Err(RuntimeError::NoGpu("GPU buffers expected".into()));
        };
        let copy = time(device, 5, 20, || g.stream.memcpy_dtod(s, d).map_err(driver))?;
        // SAFETY: the pinned buffer is fully written before it is read.
        let mut pinned = unsafe {
            g.ctx
                .alloc_pinned_with_flags::<u32>(n, sys::CU_MEMHOSTALLOC_PORTABLE)
        }
        .map_err(driver)?;
        pinned.as_mut_slice().map_err(driver)?.fill(7);
        let h2d = time(device, 2, 8, || {
            g.stream.memcpy_htod(&pinned, d).map_err(driver)
        })?;
        let roofline = Roofline {
            device: device.name(),
            copy_gb_s: copy.gb_per_s(2.0 * (n * 4) as f64),
            h2d_gb_s: h2d.gb_per_s((n * 4) as f64),
            mma_bf16_tflops: None,
        };
        roofline.save()?;
        Ok(roofline)
    }

    fn all() -> BTreeMap<String, Roofline> {
        store_path()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The stored ceilings of the device called `name`.
    pub fn load(name: &str) -> Option<Roofline> {
        Roofline::all().remove(name)
    }

    /// Stores these ceilings for the device (replacing earlier ones).
    pub fn save(&self) -> Result<(), RuntimeError> {
        let Some(path) = store_path() else {
            return Ok(());
        };
        let io = |e: std::io::Error| RuntimeError::InvalidInput {
            what: "roofline store",
            reason: format!("{}: {e}", path.display()),
        };
        let mut all = Roofline::all();
        all.insert(self.device.clone(), self.clone());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let json = serde_json::to_vec_pretty(&all).map_err(|e| RuntimeError::InvalidInput {
            what: "roofline store",
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}
