//! NCCL, bound from the file [`crate::locate::locate_nccl`] found: the handful of functions
//! [`super::CommGroup`] calls, each checked to exist before the first call, and NCCL's result
//! codes turned into [`RuntimeError::Comm`] with NCCL's own message.
//!
//! Why not through cudarc's `nccl` module: with `dynamic-loading`, cudarc resolves NCCL by the
//! names `cudarc::get_lib_name_candidates("nccl")` — `libnccl.so`, `libnccl.so.13`,
//! `libnccl.so.12`, …, `libnccl.so.1` — and panics when none loads, and on the first call of a
//! symbol it lacks. NCCL's soname is `libnccl.so.2` and the `nvidia-nccl-cu13` wheel installs
//! only that file, so cudarc would not find a library Kiln has located and preloaded (glibc
//! answers a `dlopen` by bare name from memory only when the name is a loaded object's soname).
//! Kiln therefore opens the located file by its path and takes the function pointers itself;
//! cudarc's `nccl::sys` gives the ABI types (`ncclComm_t`, `ncclDataType_t`, `ncclRedOp_t`,
//! `cudaStream_t`). Result codes are read as plain integers, so a code newer than cudarc's enum
//! (NCCL 2.32 added `ncclTimeout = 8`) is reported, not undefined behaviour.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t};
use libloading::os::unix::Library;

use crate::error::RuntimeError;
use crate::locate::{locate_nccl, LibraryLocation};

/// The oldest NCCL Kiln accepts: 2.18 (point-to-point calls inside groups, `ncclGetLastError`,
/// and what PyTorch's CUDA 12/13 wheels have shipped for years).
pub const MIN_VERSION: i32 = 21800;

type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
type GetLastError = unsafe extern "C" fn(ncclComm_t) -> *const c_char;
type CommInitAll = unsafe extern "C" fn(*mut ncclComm_t, c_int, *const c_int) -> c_int;
type CommDestroy = unsafe extern "C" fn(ncclComm_t) -> c_int;
type Group = unsafe extern "C" fn() -> c_int;
type Send = unsafe extern "C" fn(
    *const c_void,
    usize,
    ncclDataType_t,
    c_int,
    ncclComm_t,
    cudaStream_t,
) -> c_int;
type Recv = unsafe extern "C" fn(
    *mut c_void,
    usize,
    ncclDataType_t,
    c_int,
    ncclComm_t,
    cudaStream_t,
) -> c_int;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    ncclRedOp_t,
    ncclComm_t,
    cudaStream_t,
) -> c_int;
type AllGather = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    ncclComm_t,
    cudaStream_t,
) -> c_int;

/// Every NCCL function Kiln calls, as the header of NCCL 2.18–2.32 declares them.
pub const SYMBOLS: &[&str] = &[
    "ncclGetVersion",
    "ncclGetErrorString",
    "ncclGetLastError",
    "ncclCommInitAll",
    "ncclCommDestroy",
    "ncclGroupStart",
    "ncclGroupEnd",
    "ncclSend",
    "ncclRecv",
    "ncclAllReduce",
    "ncclAllGather",
];

/// The loaded NCCL: its file, version and the functions Kiln calls. One per process
/// ([`library`]); it is never unloaded.
pub struct Nccl {
    path: PathBuf,
    version: i32,
    get_error_string: GetErrorString,
    get_last_error: GetLastError,
    pub(crate) comm_init_all: CommInitAll,
    pub(crate) comm_destroy: CommDestroy,
    pub(crate) group_start: Group,
    pub(crate) group_end: Group,
    pub(crate) send: Send,
    pub(crate) recv: Recv,
    pub(crate) all_reduce: AllReduce,
    pub(crate) all_gather: AllGather,
    // keeps the function pointers valid
    _lib: Library,
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NCCL {} from {}",
            self.version_string(),
            self.path.display()
        )
    }
}

/// NCCL, located ([`locate_nccl`]: `KILN_NCCL_PATH`, the loader path, `CUDA_HOME`, system
/// folders, the `nvidia-nccl-cu13` wheel) and bound once per process. A missing library is the
/// not-found error listing every path tried and how to install NCCL; a library without a
/// function Kiln calls, or older than [`MIN_VERSION`], is a [`RuntimeError::Comm`].
pub fn library() -> Result<&'static Nccl, RuntimeError> {
    static NCCL: OnceLock<Result<Nccl, RuntimeError>> = OnceLock::new();
    NCCL.get_or_init(|| {
        let loc: &LibraryLocation = locate_nccl()?;
        bind(&loc.library)
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Opens `path` and binds every function in [`SYMBOLS`], then checks the version. Public
/// within the crate so tests can bind a wheel they installed without changing the
/// environment.
pub(crate) fn bind(path: &Path) -> Result<Nccl, RuntimeError> {
    let lib = crate::preload::open_global(path.as_os_str()).map_err(|why| RuntimeError::Comm {
        call: "loading NCCL",
        detail: format!("{} could not be opened: {why}", path.display()),
    })?;
    let missing = |symbol: &str| RuntimeError::Comm {
        call: "loading NCCL",
        detail: format!(
            "{} does not export `{symbol}`; install NCCL 2.18 or newer \
             (`python3 -m pip install nvidia-nccl-cu13`)",
            path.display()
        ),
    };
    for &symbol in SYMBOLS {
        if crate::preload::symbol_address(&lib, symbol).is_none() {
            return Err(missing(symbol));
        }
    }
    macro_rules! sym {
        ($name:literal, $ty:ty) => {{
            // SAFETY: the symbol exists (checked above) and has this C signature in every NCCL
            // from 2.18 on (nccl.h); the library stays loaded for as long as `Nccl` lives.
            let s = unsafe { lib.get::<$ty>(concat!($name, "\0").as_bytes()) }
                .map_err(|_| missing($name))?;
            *s
        }};
    }
    let get_version = sym!("ncclGetVersion", GetVersion);
    let mut version: c_int = 0;
    // SAFETY: a valid out-pointer; ncclGetVersion touches no device.
    let code = unsafe { get_version(&mut version) };
    let get_error_string = sym!("ncclGetErrorString", GetErrorString);
    if code != 0 {
        return Err(RuntimeError::Comm {
            call: "ncclGetVersion",
            detail: describe(get_error_string, code),
        });
    }
    if version < MIN_VERSION {
        return Err(RuntimeError::Comm {
            call: "loading NCCL",
            detail: format!(
                "{} is NCCL {}, Kiln needs {} or newer (`python3 -m pip install nvidia-nccl-cu13`)",
                path.display(),
                version_string(version),
                version_string(MIN_VERSION)
            ),
        });
    }
    Ok(Nccl {
        path: crate::preload::symbol_address(&lib, "ncclGetVersion")
            .and_then(crate::preload::file_of_address)
            .unwrap_or_else(|| path.to_path_buf()),
        version,
        get_error_string,
        get_last_error: sym!("ncclGetLastError", GetLastError),
        comm_init_all: sym!("ncclCommInitAll", CommInitAll),
        comm_destroy: sym!("ncclCommDestroy", CommDestroy),
        group_start: sym!("ncclGroupStart", Group),
        group_end: sym!("ncclGroupEnd", Group),
        send: sym!("ncclSend", Send),
        recv: sym!("ncclRecv", Recv),
        all_reduce: sym!("ncclAllReduce", AllReduce),
        all_gather: sym!("ncclAllGather", AllGather),
        _lib: lib,
    })
}

/// `code` as NCCL names it (`ncclGetErrorString`), with the number.
fn describe(get_error_string: GetErrorString, code: c_int) -> String {
    // SAFETY: ncclGetErrorString returns a static string for any code (or "unknown result").
    let p = unsafe { get_error_string(code) };
    let text = if p.is_null() {
        "unknown result".to_string()
    } else {
        // SAFETY: a NUL-terminated static string owned by NCCL.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    format!("{} (ncclResult_t {code})", text)
}

/// A version code (`major·10000 + minor·100 + patch`) as `"2.32.6"`.
pub fn version_string(code: i32) -> String {
    format!("{}.{}.{}", code / 10000, code / 100 % 100, code % 100)
}

impl Nccl {
    /// The version code, e.g. `23206` for 2.32.6.
    pub fn version(&self) -> i32 {
        self.version
    }

    /// The version as `"2.32.6"`.
    pub fn version_string(&self) -> String {
        version_string(self.version)
    }

    /// The file that was loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Ok` for `ncclSuccess`, else a [`RuntimeError::Comm`] naming `call`, NCCL's name for
    /// the code and, when a communicator is at hand, NCCL's last error message.
    pub(crate) fn check(
        &self,
        call: &'static str,
        code: c_int,
        comm: Option<ncclComm_t>,
    ) -> Result<(), RuntimeError> {
        if code == 0 {
            return Ok(());
        }
        let mut detail = describe(self.get_error_string, code);
        if let Some(c) = comm {
            // SAFETY: `c` is a live communicator (or null, which NCCL accepts here).
            let p = unsafe { (self.get_last_error)(c) };
            if !p.is_null() {
                // SAFETY: a NUL-terminated string owned by NCCL.
                let last = unsafe { CStr::from_ptr(p) }.to_string_lossy();
                if !last.trim().is_empty() {
                    detail.push_str(": ");
                    detail.push_str(last.trim());
                }
            }
        }
        if code == 1 || code == 2 {
            detail.push_str(" (set NCCL_DEBUG=WARN for NCCL's own report)");
        }
        Err(RuntimeError::Comm { call, detail })
    }
}
