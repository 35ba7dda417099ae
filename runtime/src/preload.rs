//! Low-level dynamic loading: open a library by path so that later `dlopen`s by soname find it,
//! keep it loaded for the life of the process, and ask which file a loaded symbol came from.
//!
//! cudarc resolves NVRTC and the driver by *soname* (`libnvrtc.so.13`, `libcuda.so.1`, ...) and
//! panics when that fails. Loading the file Kiln located with `RTLD_NOW | RTLD_GLOBAL` first makes
//! the dynamic linker answer cudarc's later `dlopen("libnvrtc.so.13")` with the copy already in
//! memory (glibc matches loaded objects by their `DT_SONAME`).

use std::ffi::{c_char, c_int, c_void, CStr, OsStr};
use std::path::PathBuf;
use std::sync::Mutex;

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_LAZY, RTLD_NOW};

/// Handles of every library Kiln preloaded. They are never dropped, so the libraries are never
/// unloaded: cudarc holds raw function pointers into them for the life of the process.
static KEPT: Mutex<Vec<Library>> = Mutex::new(Vec::new());

/// Opens `path` (a full path, or a bare name for the system loader's search) with
/// `RTLD_NOW | RTLD_GLOBAL`. Returns the loader's message on failure.
pub(crate) fn open_global(path: &OsStr) -> Result<Library, String> {
    // SAFETY: loading a CUDA library runs its initialisers; NVRTC and libcuda are designed to be
    // dlopen'ed this way (it is what cudarc itself does).
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| error_chain(&e))
}

/// `e` and its sources joined with ": " (libloading's own message is only "dlopen failed"; the
/// loader's explanation is in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

/// Keeps `lib` loaded until the process exits.
pub(crate) fn keep_alive(lib: Library) {
    KEPT.lock().unwrap_or_else(|p| p.into_inner()).push(lib);
}

/// Address of the exported symbol `name` in `lib`, or `None` if the library does not export it.
pub(crate) fn symbol_address(lib: &Library, name: &str) -> Option<usize> {
    // SAFETY: the symbol is only read as an address, never called or dereferenced.
    let sym = unsafe { lib.get::<*const c_void>(name.as_bytes()) }.ok()?;
    let ptr: *const c_void = *sym;
    Some(ptr as usize)
}

#[repr(C)]
struct DlInfo {
    dli_fname: *const c_char,
    dli_fbase: *mut c_void,
    dli_sname: *const c_char,
    dli_saddr: *mut c_void,
}

extern "C" {
    fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
}

/// The file that the loaded object containing `addr` was loaded from (via `dladdr`).
pub(crate) fn file_of_address(addr: usize) -> Option<PathBuf> {
    let mut info = DlInfo {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr only inspects the loader's tables; `info` is a valid out-pointer.
    let ok = unsafe { dladdr(addr as *const c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader, valid while loaded.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(name.to_string_lossy().into_owned()))
}

/// What a soname lookup in cudarc's order resolves to.
pub(crate) enum Binding {
    /// The first name in cudarc's candidate list that loads, the address of the probe symbol in
    /// the object it resolves to (`None` if that object lacks the symbol), and that object's file
    /// (looked up while it was still open).
    Found {
        name: String,
        probe: Option<usize>,
        file: Option<PathBuf>,
    },
    /// None of cudarc's candidate names loads: cudarc would panic.
    Nothing { names: Vec<String> },
}

/// Replays cudarc's library lookup (`get_lib_name_candidates` over `lib_names`, first that
/// `dlopen`s wins) and reports which object it resolves to, identified by `probe`'s address.
pub(crate) fn cudarc_binding(lib_names: &[&str], probe: &str) -> Binding {
    let names: Vec<String> = lib_names
        .iter()
        .flat_map(|l| cudarc::get_lib_name_candidates(l))
        .collect();
    for name in &names {
        // SAFETY: same as `open_global`; cudarc would perform exactly this dlopen.
        if let Ok(lib) = unsafe { Library::open(Some(OsStr::new(name)), RTLD_LAZY) } {
            let probe = symbol_address(&lib, probe);
            let file = probe.and_then(file_of_address);
            return Binding::Found {
                name: name.clone(),
                probe,
                file,
            };
        }
    }
    Binding::Nothing { names }
}
