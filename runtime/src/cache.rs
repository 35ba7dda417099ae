//! The compile cache: a specialisation's machine code, kept in memory for the process and
//! on disk across processes. The key hashes everything that decides the output: the CUDA
//! source, the NVRTC options, NVRTC's version and the architecture. A corrupt or truncated
//! entry is recompiled, never fatal; entries are written to a temporary file and renamed
//! into place, so concurrent writers cannot leave a half-written entry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use kiln_codegen::{Arch, CudaModule};

use crate::error::RuntimeError;
use crate::jit::annotate_log;
use crate::nvrtc::{compile_ptx, nvrtc_version, CompileOptions};

/// Where a compiled image came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheSource {
    /// This process compiled or loaded it before.
    Memory,
    /// Read from the disk cache.
    Disk,
    /// Compiled by NVRTC now.
    Compiled,
}

/// Machine code for one specialisation, and how long getting it took.
#[derive(Clone, Debug)]
pub struct CachedImage {
    /// CUBIN bytes for the target architecture.
    pub cubin: Arc<Vec<u8>>,
    /// Where it came from.
    pub source: CacheSource,
    /// Wall time to obtain it (compile, disk read or memory lookup), in milliseconds.
    pub millis: f64,
    /// The cache key (hex).
    pub key: String,
    /// NVRTC's warnings, annotated with Rust lines (empty unless compiled now).
    pub log: String,
}

const MAGIC: &[u8; 8] = b"KILNCB01";

fn memory() -> &'static Mutex<HashMap<String, Arc<Vec<u8>>>> {
    static MEMORY: OnceLock<Mutex<HashMap<String, Arc<Vec<u8>>>>> = OnceLock::new();
    MEMORY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The disk cache folder: `KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else
/// `$HOME/.cache/kiln`; `None` when none is set.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KILN_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("kiln"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("kiln"))
}

/// 64-bit FNV-1a of `bytes`, starting from `seed`.
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes
        .iter()
        .fold(seed, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A 128-bit hex digest (two independent FNV-1a lanes); enough to key a cache whose entries
/// are verified by a checksum on read.
pub fn digest(parts: &[&[u8]]) -> String {
    let mut a = 0xcbf2_9ce4_8422_2325u64;
    let mut b = 0x6c62_272e_07bb_0142u64;
    for p in parts {
        a = fnv1a(p, a);
        a = fnv1a(&[0xff], a);
        b = fnv1a(p, b ^ 0x9e37_79b9_7f4a_7c15);
        b = fnv1a(&(p.len() as u64).to_le_bytes(), b);
    }
    format!("{a:016x}{b:016x}")
}

/// Reads an entry; `None` when missing, truncated or corrupt.
fn read_entry(path: &Path) -> Option<Vec<u8>> {
    let data = std::fs::read(path).ok()?;
    if data.len() < 24 || &data[..8] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(data[8..16].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(data[16..24].try_into().ok()?);
    let payload = data.get(24..)?;
    if payload.len() != len || fnv1a(payload, 0xcbf2_9ce4_8422_2325) != sum {
        return None;
    }
    Some(payload.to_vec())
}

/// Writes an entry atomically (temporary file, then rename). Failures are ignored: the
/// cache is an optimisation.
fn write_entry(dir: &Path, path: &Path, payload: &[u8]) {
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".tmp-{}-{nanos}", std::process::id()));
    let mut data = Vec::with_capacity(payload.len() + 24);
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    data.extend_from_slice(&fnv1a(payload, 0xcbf2_9ce4_8422_2325).to_le_bytes());
    data.extend_from_slice(payload);
    if std::fs::write(&tmp, &data).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// How kernels are compiled, beyond the architecture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct JitOptions {
    /// `--use_fast_math`: approximate transcendentals and flushed denormals. Off unless asked.
    pub fast_math: bool,
}

/// The NVRTC options Kiln compiles kernels with.
pub fn kernel_options(arch: Arch, jit: &JitOptions) -> CompileOptions {
    kernel_options_for(&arch.sm_name(), jit.fast_math)
}

/// The NVRTC options for `module`: [`kernel_options`], with the architecture-specific target
/// (`sm_90a`) when the module uses its instructions (warpgroup MMA, `setmaxnreg`).
pub fn module_options(module: &CudaModule, arch: Arch, jit: &JitOptions) -> CompileOptions {
    match module.needs_sm90a {
        true => kernel_options_for(&format!("{}a", arch.sm_name()), jit.fast_math),
        false => kernel_options(arch, jit),
    }
}

/// [`kernel_options`] by architecture name (what a compile worker receives).
pub fn kernel_options_for(sm: &str, fast_math: bool) -> CompileOptions {
    CompileOptions {
        cubin: true,
        fast_math,
        ..CompileOptions::for_arch(sm)
    }
}

/// The CUBIN of `module` for `arch`: from memory, from the disk cache in `dir`, or compiled.
pub fn compile_cached_in(
    module: &CudaModule,
    arch: Arch,
    jit: &JitOptions,
    dir: Option<&Path>,
) -> Result<CachedImage, RuntimeError> {
    let start = Instant::now();
    let opts = module_options(module, arch, jit);
    let (major, minor) = nvrtc_version()?;
    let args = opts.nvrtc_args()?.join(" ");
    let version = format!("nvrtc {major}.{minor}");
    let key = digest(&[
        module.source.as_bytes(),
        args.as_bytes(),
        version.as_bytes(),
        arch.sm_name().as_bytes(),
    ]);
    let done = |cubin: Arc<Vec<u8>>, source, log: String| CachedImage {
        cubin,
        source,
        millis: start.elapsed().as_secs_f64() * 1e3,
        key: key.clone(),
        log,
    };
    if let Some(hit) = memory().lock().map_err(|_| poisoned())?.get(&key).cloned() {
        return Ok(done(hit, CacheSource::Memory, String::new()));
    }
    let path = dir.map(|d| d.join(format!("{key}.cubin")));
    if let Some(bytes) = path.as_deref().and_then(read_entry) {
        let bytes = Arc::new(bytes);
        memory()
            .lock()
            .map_err(|_| poisoned())?
            .insert(key.clone(), bytes.clone());
        return Ok(done(bytes, CacheSource::Disk, String::new()));
    }
    let program = format!("{}.cu", module.entry);
    let annotate = |e| match e {
        RuntimeError::Compile { program, log } => {
            let log = annotate_log(&log, &program, module);
            RuntimeError::Compile { program, log }
        }
        other => other,
    };
    // a cache miss compiles here, or in a child process when a compile worker is set
    let (cubin, raw_log) = match crate::isolated::compile_worker() {
        Some(worker) => crate::isolated::compile_in_child(&worker, &module.source, &program, &opts)
            .map_err(annotate)?,
        None => {
            let compiled = compile_ptx(&module.source, &program, &opts).map_err(annotate)?;
            let cubin = compiled.cubin.ok_or_else(|| RuntimeError::InvalidInput {
                what: "NVRTC output",
                reason: "no CUBIN was produced".into(),
            })?;
            (cubin, compiled.log)
        }
    };
    if let (Some(dir), Some(path)) = (dir, &path) {
        write_entry(dir, path, &cubin);
    }
    let cubin = Arc::new(cubin);
    memory()
        .lock()
        .map_err(|_| poisoned())?
        .insert(key.clone(), cubin.clone());
    Ok(done(
        cubin,
        CacheSource::Compiled,
        annotate_log(&raw_log, &program, module),
    ))
}

/// [`compile_cached_in`] with the default cache folder ([`cache_dir`]).
pub fn compile_cached(
    module: &CudaModule,
    arch: Arch,
    jit: &JitOptions,
) -> Result<CachedImage, RuntimeError> {
    compile_cached_in(module, arch, jit, cache_dir().as_deref())
}

/// Forgets the in-memory cache (for measuring disk hits).
pub fn clear_memory_cache() {
    if let Ok(mut m) = memory().lock() {
        m.clear();
    }
}

fn poisoned() -> RuntimeError {
    RuntimeError::InvalidInput {
        what: "compile cache",
        reason: "a thread panicked while holding the cache lock".into(),
    }
}
