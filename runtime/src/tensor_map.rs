//! Tensor maps: the 128-byte descriptors the copy engine (TMA, sm_90) reads to load a box of
//! a 2-D tensor into shared memory (`tma_load_2d` in a kernel).
//!
//! A map is built once on the host for a buffer and a box shape and handed to kernels as a
//! `&[u64]` of [`TensorMap::WORDS`] words in device memory (the copy engine reads maps from
//! global memory as well as from kernel parameters; a buffer keeps kernels' signatures plain
//! slices). On a GPU the words are the driver's own encoding (`cuTensorMapEncodeTiled`); on the
//! emulator they are Kiln's description of the same map ([`EmulatedMap`]), which the emulator's
//! `tma_load_2d` decodes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys;
use kiln_codegen::types::Scalar;

use crate::device::{Backend, Device};
use crate::error::RuntimeError;
use crate::memory::{DeviceBuffer, Element};

/// How a box is laid out in shared memory: 16-byte chunks of each row permuted by the row
/// index (bank-conflict-free reads, and the layouts `wgmma` descriptors name).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Swizzle {
    /// Row-major, unpermuted.
    None,
    /// 32-byte swizzle: a box row is at most 32 bytes.
    B32,
    /// 64-byte swizzle: a box row is at most 64 bytes.
    B64,
    /// 128-byte swizzle: a box row is at most 128 bytes (what `wgmma_desc` describes).
    B128,
}

impl Swizzle {
    /// The swizzle span in bytes (0 for none): the longest box row it allows.
    pub fn bytes(self) -> u32 {
        match self {
            Swizzle::None => 0,
            Swizzle::B32 => 32,
            Swizzle::B64 => 64,
            Swizzle::B128 => 128,
        }
    }
}

/// A 2-D box load: a row-major `rows × cols` tensor read in boxes of `box_rows × box_cols`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TensorMap {
    /// Rows of the tensor (the outer dimension).
    pub rows: u64,
    /// Columns of the tensor (contiguous elements).
    pub cols: u64,
    /// Rows of a box (1..=256).
    pub box_rows: u32,
    /// Columns of a box (1..=256, and at most the swizzle span in bytes).
    pub box_cols: u32,
    /// The box's shared-memory layout.
    pub swizzle: Swizzle,
}

/// The first word of an emulator map (so a wrong buffer is reported, not misread).
pub const EMULATED_MAGIC: u64 = 0x4b49_4c4e_544d_4150; // "KILNTMAP"

/// Kiln's encoding of a map for the emulator, word by word: magic, tensor address, rows,
/// cols, element bytes, box rows, box cols, swizzle bytes; the rest zero.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EmulatedMap {
    /// The tensor's first element (host address of the emulator's buffer).
    pub address: u64,
    /// The map's shape.
    pub map: TensorMap,
    /// Bytes per element.
    pub elem_bytes: u32,
}

impl EmulatedMap {
    /// The map's words.
    pub fn words(&self) -> [u64; TensorMap::WORDS] {
        let mut w = [0u64; TensorMap::WORDS];
        w[0] = EMULATED_MAGIC;
        w[1] = self.address;
        w[2] = self.map.rows;
        w[3] = self.map.cols;
        w[4] = self.elem_bytes as u64;
        w[5] = self.map.box_rows as u64;
        w[6] = self.map.box_cols as u64;
        w[7] = self.map.swizzle.bytes() as u64;
        w
    }

    /// Decodes the words of an emulator map; `None` when they are not one.
    pub fn decode(w: &[u64]) -> Option<EmulatedMap> {
        if w.len() < TensorMap::WORDS || w[0] != EMULATED_MAGIC {
            return None;
        }
        let swizzle = match w[7] {
            0 => Swizzle::None,
            32 => Swizzle::B32,
            64 => Swizzle::B64,
            128 => Swizzle::B128,
            _ => return None,
        };
        Some(EmulatedMap {
            address: w[1],
            map: TensorMap {
                rows: w[2],
                cols: w[3],
                box_rows: u32::try_from(w[5]).ok()?,
                box_cols: u32::try_from(w[6]).ok()?,
                swizzle,
            },
            elem_bytes: u32::try_from(w[4]).ok()?,
        })
    }
}

impl TensorMap {
    /// Words (of 8 bytes) in a map: 128 bytes.
    pub const WORDS: usize = 16;

    /// The map the Hopper kernels use for 16-bit tensors: `rows × cols`, boxes of
    /// `box_rows` rows of 64 elements (one 128-byte line each), 128-byte swizzle.
    pub fn swizzled_rows(rows: u64, cols: u64, box_rows: u32) -> TensorMap {
        TensorMap {
            rows,
            cols,
            box_rows,
            box_cols: 64,
            swizzle: Swizzle::B128,
        }
    }

    /// Bytes one box puts in shared memory (what a barrier must expect per load).
    pub fn box_bytes(&self, elem_bytes: u32) -> u32 {
        self.box_rows * self.box_cols * elem_bytes
    }

    /// Checks the shape against the copy engine's rules for elements of `elem_bytes`.
    fn validate(&self, elem_bytes: u32, len: usize) -> Result<(), RuntimeError> {
        let bad = |reason: String| {
            Err(RuntimeError::InvalidInput {
                what: "tensor map",
                reason,
            })
        };
        let (rows, cols) = (self.rows, self.cols);
        if rows == 0 || cols == 0 || rows > u32::MAX as u64 || cols > u32::MAX as u64 {
            return bad(format!(
                "a {rows} × {cols} tensor: each dimension must be 1 to 2^32 - 1"
            ));
        }
        if rows.checked_mul(cols).is_none_or(|n| n > len as u64) {
            return bad(format!(
                "a {rows} × {cols} tensor does not fit the buffer of {len} elements"
            ));
        }
        if !(cols * elem_bytes as u64).is_multiple_of(16) {
            return bad(format!("rows of {cols} elements of {elem_bytes} bytes: the copy engine needs a row stride that is a multiple of 16 bytes (pad the rows)"));
        }
        for (what, b) in [("rows", self.box_rows), ("columns", self.box_cols)] {
            if !(1..=256).contains(&b) {
                return bad(format!(
                    "a box of {b} {what}: boxes have 1 to 256 per dimension"
                ));
            }
        }
        let row_bytes = self.box_cols * elem_bytes;
        if !row_bytes.is_multiple_of(16) {
            return bad(format!(
                "box rows of {row_bytes} bytes: the copy engine moves multiples of 16 bytes"
            ));
        }
        let span = self.swizzle.bytes();
        if span > 0 && row_bytes > span {
            return bad(format!("box rows of {row_bytes} bytes exceed the {span}-byte swizzle: use at most {} columns per box", span / elem_bytes));
        }
        Ok(())
    }

    /// The map's words for `buf` on `device`, uploaded as a `&[u64]` kernel argument.
    pub fn encode<T: Element>(
        &self,
        device: &Device,
        buf: &DeviceBuffer<T>,
    ) -> Result<DeviceBuffer<u64>, RuntimeError> {
        let elem_bytes = std::mem::size_of::<T>() as u32;
        self.validate(elem_bytes, buf.len())?;
        let words = match device.backend() {
            Backend::Emulator(_) => EmulatedMap {
                address: buf.address(),
                map: *self,
                elem_bytes,
            }
            .words(),
            Backend::Gpu(_) => self.driver_words::<T>(buf.address())?,
        };
        device.upload(&words)
    }

    /// `cuTensorMapEncodeTiled` for a tensor at device address `address`.
    fn driver_words<T: Element>(
        &self,
        address: u64,
    ) -> Result<[u64; TensorMap::WORDS], RuntimeError> {
        use sys::CUtensorMapDataType as D;
        let dtype = match T::SCALAR {
            Scalar::Bf16 => D::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            Scalar::F16 => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            Scalar::F32 => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
            Scalar::F64 => D::CU_TENSOR_MAP_DATA_TYPE_FLOAT64,
            Scalar::U8 => D::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            Scalar::U16 => D::CU_TENSOR_MAP_DATA_TYPE_UINT16,
            Scalar::U32 => D::CU_TENSOR_MAP_DATA_TYPE_UINT32,
            Scalar::I32 => D::CU_TENSOR_MAP_DATA_TYPE_INT32,
            Scalar::U64 => D::CU_TENSOR_MAP_DATA_TYPE_UINT64,
            Scalar::I64 => D::CU_TENSOR_MAP_DATA_TYPE_INT64,
            other => {
                return Err(RuntimeError::InvalidInput {
                    what: "tensor map",
                    reason: format!("no copy-engine element type for `{}`", other.rust_name()),
                })
            }
        };
        let swizzle = match self.swizzle {
            Swizzle::None => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
            Swizzle::B32 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B,
            Swizzle::B64 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
            Swizzle::B128 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
        };
        let elem_bytes = std::mem::size_of::<T>() as u64;
        let dims = [self.cols, self.rows];
        let strides = [self.cols * elem_bytes];
        let boxes = [self.box_cols, self.box_rows];
        let element_strides = [1u32, 1];
        // SAFETY: plain data out, every pointer refers to a live local array of the rank's
        // length; the driver only reads the tensor's address, it does not dereference it here.
        let mut map: sys::CUtensorMap = unsafe { std::mem::zeroed() };
        let status = unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut map,
                dtype,
                2,
                address as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                element_strides.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                swizzle,
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        if status != sys::CUresult::CUDA_SUCCESS {
            return Err(RuntimeError::Driver(format!(
                "cuTensorMapEncodeTiled({self:?}) failed: {status:?}"
            )));
        }
        // SAFETY: CUtensorMap is 128 bytes of plain data.
        Ok(unsafe { std::mem::transmute::<sys::CUtensorMap, [u64; TensorMap::WORDS]>(map) })
    }
}

/// Encoded maps by buffer address and shape, so that kernels called again on the same buffers
/// upload nothing. A map depends only on the address, the element type (part of the key
/// through the buffer type's size) and the shape, so a cached map stays right for any buffer
/// later allocated at that address. A caller that passes ever new buffers (a decoder's
/// prompts) would grow it without end, so past [`TensorMapCache::MAX_MAPS`] entries it starts
/// over (maps already handed out stay valid: they are shared, not freed).
#[derive(Default)]
pub struct TensorMapCache {
    maps: Mutex<HashMap<CacheKey, Arc<DeviceBuffer<u64>>>>,
}

/// Buffer address, element bytes, and the [`TensorMap`]'s fields.
type CacheKey = (u64, usize, (u64, u64, u32, u32, u32));

impl TensorMapCache {
    /// Entries kept before the cache starts over (a map is 128 bytes of device memory).
    pub const MAX_MAPS: usize = 256;

    /// [`TensorMapCache::get`] of [`TensorMap::swizzled_rows`]`(rows, cols, box_rows)`.
    pub fn swizzled_rows<T: Element>(
        &self,
        device: &Device,
        buf: &DeviceBuffer<T>,
        (rows, cols): (u64, u64),
        box_rows: u32,
    ) -> Result<Arc<DeviceBuffer<u64>>, RuntimeError> {
        self.get(device, buf, TensorMap::swizzled_rows(rows, cols, box_rows))
    }

    /// The map of `buf` with shape `map` on `device`, encoded on first use.
    pub fn get<T: Element>(
        &self,
        device: &Device,
        buf: &DeviceBuffer<T>,
        map: TensorMap,
    ) -> Result<Arc<DeviceBuffer<u64>>, RuntimeError> {
        let shape = (
            map.rows,
            map.cols,
            map.box_rows,
            map.box_cols,
            map.swizzle.bytes(),
        );
        let key = (buf.address(), std::mem::size_of::<T>(), shape);
        let mut maps = self.maps.lock().map_err(|_| RuntimeError::InvalidInput {
            what: "tensor map",
            reason: "the tensor-map cache was poisoned by a panic".into(),
        })?;
        if let Some(m) = maps.get(&key) {
            return Ok(m.clone());
        }
        let encoded = Arc::new(map.encode(device, buf)?);
        if maps.len() >= TensorMapCache::MAX_MAPS {
            maps.clear();
        }
        maps.insert(key, encoded.clone());
        Ok(encoded)
    }

    /// Frees every cached map.
    pub fn clear(&self) {
        if let Ok(mut m) = self.maps.lock() {
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rows: u64, cols: u64, box_rows: u32, box_cols: u32) -> TensorMap {
        TensorMap {
            rows,
            cols,
            box_rows,
            box_cols,
            swizzle: Swizzle::B128,
        }
    }

    #[test]
    fn shapes_the_copy_engine_cannot_load_are_refused() {
        assert!(map(128, 64, 64, 64).validate(2, 128 * 64).is_ok());
        let reason = |m: TensorMap, len| match m.validate(2, len) {
            Err(RuntimeError::InvalidInput { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(reason(map(128, 64, 64, 128), 128 * 64).contains("exceed the 128-byte swizzle"));
        assert!(reason(map(128, 60, 64, 32), 128 * 60).contains("multiple of 16 bytes"));
        assert!(reason(map(128, 64, 300, 64), 128 * 64).contains("1 to 256"));
        assert!(reason(map(128, 64, 64, 64), 100).contains("does not fit"));
        assert!(reason(map(0, 64, 64, 64), 100).contains("each dimension"));
    }

    #[test]
    fn emulator_maps_round_trip() {
        let m = EmulatedMap {
            address: 0x1000,
            map: map(256, 128, 64, 64),
            elem_bytes: 2,
        };
        assert_eq!(EmulatedMap::decode(&m.words()), Some(m));
        let mut words = m.words();
        words[0] = 0;
        assert_eq!(EmulatedMap::decode(&words), None);
    }
}
