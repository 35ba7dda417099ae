//! Finding and preloading NVRTC (and, with the same mechanism, the CUDA driver, cuBLAS and
//! NCCL) without panicking.
//!
//! cudarc loads its libraries lazily by soname and panics when none is found. Kiln therefore
//! searches for the library itself, in this order:
//!
//! 1. the environment variable named by the spec (`KILN_NVRTC_PATH`), a file or a folder;
//! 2. the loader path (`LD_LIBRARY_PATH` entries);
//! 3. `CUDA_HOME` / `CUDA_PATH` (their `lib64` and `lib` folders);
//! 4. fixed system folders (`/usr/local/cuda/lib64`);
//! 5. the `nvidia-cuda-nvrtc` wheel in the active Python's site-packages (`nvidia/cu13/lib`, and
//!    `nvidia/cuda_nvrtc/lib` for the CUDA 12 wheel layout), plus `$VIRTUAL_ENV`;
//! 6. the system loader's own search by bare file name (`ld.so.cache`).
//!
//! The first candidate that loads is preloaded by full path with `RTLD_NOW | RTLD_GLOBAL`, together
//! with its companion libraries from the same folder (`libnvrtc-builtins.so.*`, which NVRTC dlopens
//! by soname when it compiles). Libraries that need another one from their own folder (cuBLAS
//! needs `libcublasLt.so.*`) have that dependency preloaded first, so a toolkit folder that is
//! not on the loader path still works. Kiln then replays cudarc's own lookup and checks it
//! resolves to the very same loaded object before anything calls into cudarc.
//!
//! The search itself is [`locate_library_in`] over explicit [`SearchRoots`], so it can be tested
//! without touching the process environment; [`locate_nvrtc`] builds the roots from the
//! environment once and caches the result for the process.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::error::RuntimeError;
use crate::preload::{self, Binding};
pub use crate::search_log::{SearchOrigin, TriedPath, TryOutcome};

/// Describes one shared library Kiln must find: its file names, where it usually lives, and how
/// to check that cudarc will bind the copy Kiln loaded.
#[derive(Debug, Clone, Copy)]
pub struct LibrarySpec {
    /// Human name used in messages, e.g. "NVRTC (libnvrtc)".
    pub display_name: &'static str,
    /// Environment variable holding an explicit file or folder, e.g. `KILN_NVRTC_PATH`.
    pub env_var: &'static str,
    /// Accepted file names, most preferred first.
    pub file_names: &'static [&'static str],
    /// Folders under each CUDA toolkit root (`CUDA_HOME`, `CUDA_PATH`) to search.
    pub toolkit_subdirs: &'static [&'static str],
    /// Fixed system folders to search.
    pub system_dirs: &'static [&'static str],
    /// Folders under each Python site-packages folder to search (pip wheel layouts).
    pub wheel_subdirs: &'static [&'static str],
    /// File-name prefix of companion libraries to preload from the same folder, e.g.
    /// `libnvrtc-builtins.so.` (NVRTC dlopens it by soname at compile time).
    pub companion_prefix: Option<&'static str>,
    /// File-name prefix of libraries from the same folder to preload *before* the library
    /// itself, because it needs them at load time (`DT_NEEDED`) and may carry no `RUNPATH`
    /// pointing at its own folder, e.g. `libcublasLt.so.` for cuBLAS. Restricted to the
    /// library's major version like the companions.
    pub dependency_prefix: Option<&'static str>,
    /// A symbol the library must export; used to identify the loaded object.
    pub probe_symbol: &'static str,
    /// Library names as cudarc spells them for `get_lib_name_candidates` (e.g. `["nvrtc"]`).
    pub cudarc_lib_names: &'static [&'static str],
    /// cudarc's own presence check (`is_culib_present`) for this library.
    pub cudarc_present: unsafe fn() -> bool,
    /// Whether cudarc binds this library itself, by soname, so that Kiln must check that
    /// cudarc's lookup resolves to the copy Kiln loaded. `false` for a library whose functions
    /// Kiln binds from the located file itself (NCCL: cudarc's lookup tries `libnccl.so`,
    /// `libnccl.so.13`, `libnccl.so.12`, … but never NCCL's soname `libnccl.so.2`, so a
    /// preloaded `libnccl.so.2` would not satisfy it).
    pub cudarc_binds: bool,
    /// How to install the library, shown when it is not found.
    pub install_hint: &'static str,
}

/// NVRTC, the runtime CUDA C++ compiler Kiln JIT-compiles kernels with.
pub const NVRTC: LibrarySpec = LibrarySpec {
    display_name: "NVRTC (libnvrtc)",
    env_var: "KILN_NVRTC_PATH",
    file_names: &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
    toolkit_subdirs: &["lib64", "lib"],
    system_dirs: &["/usr/local/cuda/lib64"],
    wheel_subdirs: &["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"],
    companion_prefix: Some("libnvrtc-builtins.so."),
    dependency_prefix: None,
    probe_symbol: "nvrtcVersion",
    cudarc_lib_names: &["nvrtc"],
    cudarc_present: cudarc::nvrtc::sys::is_culib_present,
    cudarc_binds: true,
    install_hint: "install the NVRTC wheel into the active Python with \
        `python3 -m pip install nvidia-cuda-nvrtc==13.0.88` (Kiln finds it in site-packages), \
        or install the CUDA toolkit and set CUDA_HOME to it, \
        or set KILN_NVRTC_PATH to libnvrtc.so.13 or to the folder that contains it.",
};

/// The CUDA driver library (`libcuda`), needed to launch kernels. Never the toolkit's
/// `lib64/stubs/libcuda.so`, which only exists for linking and fails at run time.
pub const CUDA_DRIVER: LibrarySpec = LibrarySpec {
    display_name: "the CUDA driver (libcuda)",
    env_var: "KILN_CUDA_PATH",
    file_names: &["libcuda.so.1", "libcuda.so"],
    toolkit_subdirs: &[],
    system_dirs: &[
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib/wsl/lib",
    ],
    wheel_subdirs: &[],
    companion_prefix: None,
    dependency_prefix: None,
    probe_symbol: "cuInit",
    cudarc_lib_names: &["cuda", "nvcuda"],
    cudarc_present: cudarc::driver::sys::is_culib_present,
    cudarc_binds: true,
    install_hint: "install the NVIDIA driver (libcuda.so.1 comes with it, not with the toolkit), \
        or set KILN_CUDA_PATH to libcuda.so.1 or to the folder that contains it.",
};

/// cuBLAS (`libcublas`, which loads `libcublasLt` from its folder), the baseline GEMM the benches
/// compare Kiln's kernels with (see `crate::blas`).
///
/// On a GPU machine it usually comes with PyTorch's CUDA wheels: the CUDA 13 wheel
/// `nvidia-cublas` installs `site-packages/nvidia/cu13/lib/libcublas.so.13` (next to NVRTC's),
/// the CUDA 12 wheel `nvidia-cublas-cu12` installs `site-packages/nvidia/cublas/lib/libcublas.so.12`;
/// a CUDA toolkit has it in `lib64/`. cudarc resolves it by the names
/// `cudarc::get_lib_name_candidates("cublas")` (`libcublas.so`, …, `libcublas.so.13`,
/// `libcublas.so.12`, …), the first that `dlopen`s winning; the preloaded copy answers to its
/// soname (`libcublas.so.13`), so cudarc binds it unless another `libcublas.so` is on the
/// loader path, which [`locate_library_in`] detects and reports.
pub const CUBLAS: LibrarySpec = LibrarySpec {
    display_name: "cuBLAS (libcublas)",
    env_var: "KILN_CUBLAS_PATH",
    file_names: &["libcublas.so.13", "libcublas.so.12", "libcublas.so"],
    toolkit_subdirs: &["lib64", "lib"],
    system_dirs: &["/usr/local/cuda/lib64"],
    wheel_subdirs: &["nvidia/cu13/lib", "nvidia/cublas/lib"],
    companion_prefix: None,
    dependency_prefix: Some("libcublasLt.so."),
    probe_symbol: "cublasGemmEx",
    cudarc_lib_names: &["cublas"],
    cudarc_present: cudarc::cublas::sys::is_culib_present,
    cudarc_binds: true,
    install_hint: "install cuBLAS into the active Python with `python3 -m pip install nvidia-cublas` \
        (CUDA 13; PyTorch's CUDA wheels bring it, or `nvidia-cublas-cu12` for CUDA 12; Kiln looks in \
        site-packages/nvidia/cu13/lib and site-packages/nvidia/cublas/lib), \
        or install the CUDA toolkit and set CUDA_HOME to it, \
        or set KILN_CUBLAS_PATH to libcublas.so.13 or to the folder that contains it.",
};

/// NCCL (`libnccl.so.2`), the collective-communication library multi-GPU layers exchange tokens
/// with (see `crate::comm`).
///
/// PyTorch's CUDA wheels bring it as `nvidia-nccl-cu13` (or `nvidia-nccl-cu12`), which installs
/// `site-packages/nvidia/nccl/lib/libnccl.so.2`; a system install (`libnccl2` package) puts it in
/// `/usr/lib/x86_64-linux-gnu`; some CUDA toolkits carry it in `lib64/`. Kiln binds NCCL's
/// functions from the located file itself (`crate::comm::nccl`), not through cudarc's lookup:
/// cudarc 0.19 asks the loader for `libnccl.so`, `libnccl.so.13`, `libnccl.so.12`, …,
/// `libnccl.so.1` (`cudarc::get_lib_name_candidates("nccl")`), none of which is NCCL's soname
/// `libnccl.so.2` or a file the wheel installs, so it would panic where Kiln has found the
/// library ([`LibrarySpec::cudarc_binds`] is `false`). cudarc's `nccl::sys` types are used for
/// the ABI.
pub const NCCL: LibrarySpec = LibrarySpec {
    display_name: "NCCL (libnccl)",
    env_var: "KILN_NCCL_PATH",
    file_names: &["libnccl.so.2", "libnccl.so"],
    toolkit_subdirs: &["lib64", "lib"],
    system_dirs: &[
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/local/cuda/lib64",
    ],
    wheel_subdirs: &["nvidia/nccl/lib", "nvidia/cu13/lib"],
    companion_prefix: None,
    dependency_prefix: None,
    probe_symbol: "ncclGetVersion",
    cudarc_lib_names: &["nccl"],
    cudarc_present: cudarc::nccl::sys::is_culib_present,
    cudarc_binds: false,
    install_hint:
        "install NCCL into the active Python with `python3 -m pip install nvidia-nccl-cu13` \
        (CUDA 13; `nvidia-nccl-cu12` for CUDA 12; PyTorch's CUDA wheels bring it; Kiln looks in \
        site-packages/nvidia/nccl/lib), or install the system package (`libnccl2`), \
        or set KILN_NCCL_PATH to libnccl.so.2 or to the folder that contains it.",
};

/// The places to search, in order. Build it with [`SearchRoots::from_env`] for real use, or fill
/// it by hand (starting from [`SearchRoots::empty`]) in tests.
#[derive(Debug, Clone, Default)]
pub struct SearchRoots {
    /// Explicit file or folder (from the spec's environment variable).
    pub explicit: Option<PathBuf>,
    /// Loader path entries (`LD_LIBRARY_PATH`), in order.
    pub loader_path: Vec<PathBuf>,
    /// CUDA toolkit roots (`CUDA_HOME`, `CUDA_PATH`); their `toolkit_subdirs` are searched.
    pub toolkit_roots: Vec<PathBuf>,
    /// Fixed system folders.
    pub system_dirs: Vec<PathBuf>,
    /// Python site-packages folders; their `wheel_subdirs` are searched.
    pub site_packages: Vec<PathBuf>,
    /// Whether to finally try the bare file names through the system loader's own search.
    pub system_loader: bool,
    /// Roots that were unavailable and why; repeated in the not-found error.
    pub notes: Vec<String>,
}

impl SearchRoots {
    /// No roots at all: searching finds nothing. A starting point for tests.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The roots for `spec` from the process environment, the spec's fixed folders and the
    /// active Python (`python3`; tolerated if missing).
    pub fn from_env(spec: &LibrarySpec) -> Self {
        let mut roots = Self {
            system_loader: true,
            ..Self::default()
        };
        roots.explicit = env_path(spec.env_var);
        match std::env::var_os("LD_LIBRARY_PATH") {
            Some(v) => {
                roots.loader_path = std::env::split_paths(&v).filter(|p| non_empty(p)).collect()
            }
            None => roots.notes.push("LD_LIBRARY_PATH is not set".into()),
        }
        if !spec.toolkit_subdirs.is_empty() {
            roots.toolkit_roots = ["CUDA_HOME", "CUDA_PATH"]
                .iter()
                .filter_map(|v| env_path(v))
                .collect();
            if roots.toolkit_roots.is_empty() {
                roots
                    .notes
                    .push("CUDA_HOME and CUDA_PATH are not set".into());
            }
        }
        roots.system_dirs = spec.system_dirs.iter().map(PathBuf::from).collect();
        if !spec.wheel_subdirs.is_empty() {
            let (dirs, note) = python_site_packages();
            roots.site_packages = dirs;
            roots.notes.extend(note);
        }
        roots
    }
}

fn non_empty(p: &Path) -> bool {
    !p.as_os_str().is_empty()
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| non_empty(p))
}

/// Prints one site-packages folder per line; tolerant of old `site` modules.
const PYTHON_SITE_SCRIPT: &str = "import site\n\
p = []\n\
try:\n    p += site.getsitepackages()\nexcept Exception:\n    pass\n\
try:\n    p.append(site.getusersitepackages())\nexcept Exception:\n    pass\n\
print('\\n'.join(p))\n";

/// The active Python's site-packages folders (via `python3`) followed by those of
/// `$VIRTUAL_ENV`, plus a note when Python could not be asked.
fn python_site_packages() -> (Vec<PathBuf>, Option<String>) {
    let mut dirs = Vec::new();
    let mut note = None;
    let out = Command::new("python3")
        .args(["-c", PYTHON_SITE_SCRIPT])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            dirs.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(PathBuf::from),
            );
        }
        Ok(o) => {
            note = Some(format!(
                "`python3` failed ({}); its site-packages were not searched",
                o.status
            ))
        }
        Err(e) => {
            note = Some(format!(
                "`python3` could not be run ({e}); its site-packages were not searched"
            ))
        }
    }
    if let Some(venv) = env_path("VIRTUAL_ENV") {
        for lib in ["lib", "lib64"] {
            let Ok(entries) = std::fs::read_dir(venv.join(lib)) else {
                continue;
            };
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
                .map(|e| e.path().join("site-packages"))
                .collect();
            found.sort();
            dirs.extend(found);
        }
    }
    (dirs, note)
}

/// A library Kiln found and preloaded for the rest of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryLocation {
    /// The file that was loaded (as the loader reports it).
    pub library: PathBuf,
    /// Companion and dependency libraries preloaded from the same folder (NVRTC's
    /// `libnvrtc-builtins.so.*`, cuBLAS's `libcublasLt.so.*`).
    pub companions: Vec<PathBuf>,
    /// The search root it was found in.
    pub origin: SearchOrigin,
}

/// Where NVRTC was found; see [`LibraryLocation`].
pub type NvrtcLocation = LibraryLocation;

/// One thing to try: a path (or bare name, for the system loader) and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    path: PathBuf,
    origin: SearchOrigin,
}

/// All candidates for `spec` under `roots`, in search order, without duplicates.
fn candidates(spec: &LibrarySpec, roots: &SearchRoots) -> Vec<Candidate> {
    let mut dirs: Vec<(PathBuf, SearchOrigin)> = Vec::new();
    let mut files: Vec<Candidate> = Vec::new();
    if let Some(p) = &roots.explicit {
        if p.is_dir() {
            dirs.push((p.clone(), SearchOrigin::EnvVar));
        } else {
            // An explicit file is tried as given (and reported as not found if missing).
            files.push(Candidate {
                path: p.clone(),
                origin: SearchOrigin::EnvVar,
            });
        }
    }
    let mut out = files;
    dirs.extend(
        roots
            .loader_path
            .iter()
            .map(|d| (d.clone(), SearchOrigin::LoaderPath)),
    );
    for root in &roots.toolkit_roots {
        for sub in spec.toolkit_subdirs {
            dirs.push((root.join(sub), SearchOrigin::Toolkit));
        }
    }
    dirs.extend(
        roots
            .system_dirs
            .iter()
            .map(|d| (d.clone(), SearchOrigin::SystemDir)),
    );
    for site in &roots.site_packages {
        for sub in spec.wheel_subdirs {
            dirs.push((site.join(sub), SearchOrigin::PythonWheel));
        }
    }
    for (dir, origin) in dirs {
        for name in spec.file_names {
            out.push(Candidate {
                path: dir.join(name),
                origin,
            });
        }
    }
    if roots.system_loader {
        for name in spec.file_names {
            out.push(Candidate {
                path: PathBuf::from(name),
                origin: SearchOrigin::SystemLoader,
            });
        }
    }
    let mut seen = HashSet::new();
    out.retain(|c| seen.insert(c.path.clone()));
    out
}

/// Searches `roots` for `spec`'s library, preloads the first one that loads (with its companion
/// libraries) for the rest of the process, and checks that cudarc will bind exactly that copy.
///
/// On failure the error lists every candidate tried. A library that was loaded stays loaded even
/// if the cudarc check then fails (unloading a CUDA library is not safe).
pub fn locate_library_in(
    spec: &LibrarySpec,
    roots: &SearchRoots,
) -> Result<LibraryLocation, RuntimeError> {
    let mut tried = Vec::new();
    for cand in candidates(spec, roots) {
        let by_name = cand.origin == SearchOrigin::SystemLoader;
        if !by_name && !cand.path.is_file() {
            tried.push(TriedPath {
                path: cand.path,
                origin: cand.origin,
                outcome: TryOutcome::NotFound,
            });
            continue;
        }
        match load_candidate(spec, &cand.path) {
            Ok((library, companions, probe)) => {
                let location = LibraryLocation {
                    library,
                    companions,
                    origin: cand.origin,
                };
                if spec.cudarc_binds {
                    verify_cudarc_binds(spec, &location, probe)?;
                }
                return Ok(location);
            }
            Err(why) => tried.push(TriedPath {
                path: cand.path,
                origin: cand.origin,
                // A bare name the system loader cannot resolve is simply "not found".
                outcome: if by_name && why.contains("No such file") {
                    TryOutcome::NotFound
                } else {
                    TryOutcome::LoadFailed(why)
                },
            }),
        }
    }
    Err(RuntimeError::LibraryNotFound {
        library: spec.display_name,
        tried,
        notes: roots.notes.clone(),
        hint: spec.install_hint,
    })
}

/// Loads one candidate and its companions; returns the loaded file, the companion files and the
/// address of the probe symbol. Every handle is kept alive for the process once accepted.
fn load_candidate(
    spec: &LibrarySpec,
    path: &Path,
) -> Result<(PathBuf, Vec<PathBuf>, usize), String> {
    // dependencies first, so that loading the library itself finds them by soname
    let mut handles = Vec::new();
    let mut companions = Vec::new();
    if let Some(prefix) = spec.dependency_prefix {
        for file in companion_files(path, prefix) {
            match preload::open_global(file.as_os_str()) {
                Ok(h) => {
                    handles.push(h);
                    companions.push(file);
                }
                Err(e) => {
                    return Err(format!(
                        "the library it needs, {}, failed to load: {e}",
                        file.display()
                    ))
                }
            }
        }
    }
    let lib = preload::open_global(path.as_os_str())?;
    let Some(addr) = preload::symbol_address(&lib, spec.probe_symbol) else {
        return Err(format!(
            "it does not export `{}`, so it is not {}",
            spec.probe_symbol, spec.display_name
        ));
    };
    let loaded = preload::file_of_address(addr).unwrap_or_else(|| path.to_path_buf());
    handles.push(lib);
    if let Some(prefix) = spec.companion_prefix {
        for file in companion_files(&loaded, prefix) {
            match preload::open_global(file.as_os_str()) {
                Ok(h) => {
                    handles.push(h);
                    companions.push(file);
                }
                Err(e) => {
                    return Err(format!(
                        "its companion {} failed to load: {e}",
                        file.display()
                    ))
                }
            }
        }
    }
    for h in handles {
        preload::keep_alive(h);
    }
    Ok((loaded, companions, addr))
}

/// Companion files (`<prefix><version>`) next to `library`, restricted to the library's major
/// version when it can be read from the (symlink-resolved) file name.
fn companion_files(library: &Path, prefix: &str) -> Vec<PathBuf> {
    let Some(dir) = library.parent() else {
        return Vec::new();
    };
    let major = major_version(library);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix(prefix)?;
            let matches = match &major {
                Some(m) => version == m || version.starts_with(&format!("{m}.")),
                None => true,
            };
            matches.then(|| e.path())
        })
        .collect();
    found.sort();
    found
}

/// The major version in a file name like `libnvrtc.so.13` or `libnvrtc.so.13.0.88`, following
/// symlinks (`libnvrtc.so -> libnvrtc.so.13`).
fn major_version(library: &Path) -> Option<String> {
    let real = std::fs::canonicalize(library).unwrap_or_else(|_| library.to_path_buf());
    let name = real.file_name()?.to_string_lossy().into_owned();
    let (_, after) = name.split_once(".so.")?;
    let major = after.split('.').next()?;
    (!major.is_empty() && major.bytes().all(|b| b.is_ascii_digit())).then(|| major.to_string())
}

/// Checks, before anything calls into cudarc, that cudarc's own lookup by soname succeeds
/// (`is_culib_present`) and resolves to the object Kiln loaded (same probe-symbol address).
fn verify_cudarc_binds(
    spec: &LibrarySpec,
    location: &LibraryLocation,
    ours: usize,
) -> Result<(), RuntimeError> {
    let mismatch = |detail: String| RuntimeError::CudarcMismatch {
        library: spec.display_name,
        loaded: location.library.display().to_string(),
        detail,
        env_var: spec.env_var,
    };
    // SAFETY: only dlopen/dlclose by name, which is what cudarc does.
    if !unsafe { (spec.cudarc_present)() } {
        return Err(mismatch(
            "cudarc's is_culib_present() finds no library by soname".into(),
        ));
    }
    match preload::cudarc_binding(spec.cudarc_lib_names, spec.probe_symbol) {
        Binding::Found { probe, .. } if probe == Some(ours) => Ok(()),
        // a profiler (Nsight Compute) interposes its own libcuda, which forwards to the driver
        // Kiln loaded: binding it is what profiling a Kiln program needs
        Binding::Found {
            probe: Some(_),
            file: Some(f),
            ..
        } if is_profiler_interposer(&f) => Ok(()),
        Binding::Found { name, probe, file } => {
            let other = match (probe, file) {
                (Some(_), Some(f)) => format!("another copy, {}", f.display()),
                (Some(_), None) => "another copy (file unknown)".into(),
                (None, _) => format!("an object that does not export `{}`", spec.probe_symbol),
            };
            Err(mismatch(format!(
                "cudarc's lookup of `{name}` resolves to {other}"
            )))
        }
        Binding::Nothing { names } => Err(mismatch(format!(
            "none of cudarc's names {names:?} resolves"
        ))),
    }
}

/// Whether `file` is a profiler's stand-in for the CUDA driver (Nsight Compute's
/// `libcuda-injection.so`), which forwards every call to the real driver.
fn is_profiler_interposer(file: &Path) -> bool {
    let path = file.to_string_lossy().to_ascii_lowercase();
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    path.contains("nsight") && name.starts_with("libcuda") && name.contains("injection")
}

/// Searches the given roots for NVRTC; see [`locate_library_in`]. Tests call this with
/// hand-made [`SearchRoots`] so they need not change the environment.
pub fn locate_nvrtc_in(roots: &SearchRoots) -> Result<NvrtcLocation, RuntimeError> {
    locate_library_in(&NVRTC, roots)
}

/// Finds and preloads NVRTC using the process environment ([`SearchRoots::from_env`]). The
/// search runs once per process; later calls return the cached location or error. Call this
/// (directly or through `compile_ptx`) before anything that uses `cudarc::nvrtc`.
pub fn locate_nvrtc() -> Result<&'static NvrtcLocation, RuntimeError> {
    static NVRTC_LOCATION: OnceLock<Result<NvrtcLocation, RuntimeError>> = OnceLock::new();
    cached(&NVRTC_LOCATION, &NVRTC)
}

/// Finds and preloads the CUDA driver (`libcuda`) using the process environment, once per
/// process, like [`locate_nvrtc`]. Call it before anything that uses `cudarc::driver`.
pub fn locate_cuda_driver() -> Result<&'static LibraryLocation, RuntimeError> {
    static DRIVER_LOCATION: OnceLock<Result<LibraryLocation, RuntimeError>> = OnceLock::new();
    cached(&DRIVER_LOCATION, &CUDA_DRIVER)
}

/// Searches the given roots for cuBLAS; see [`locate_library_in`] and [`CUBLAS`].
pub fn locate_cublas_in(roots: &SearchRoots) -> Result<LibraryLocation, RuntimeError> {
    locate_library_in(&CUBLAS, roots)
}

/// Finds and preloads cuBLAS (with `libcublasLt`) using the process environment, once per
/// process, like [`locate_nvrtc`]. Call it before anything that uses `cudarc::cublas`
/// (`crate::blas::Blas::new` does).
pub fn locate_cublas() -> Result<&'static LibraryLocation, RuntimeError> {
    static CUBLAS_LOCATION: OnceLock<Result<LibraryLocation, RuntimeError>> = OnceLock::new();
    cached(&CUBLAS_LOCATION, &CUBLAS)
}

/// Searches the given roots for NCCL; see [`locate_library_in`] and [`NCCL`].
pub fn locate_nccl_in(roots: &SearchRoots) -> Result<LibraryLocation, RuntimeError> {
    locate_library_in(&NCCL, roots)
}

/// Finds and preloads NCCL (`libnccl.so.2`) using the process environment, once per process,
/// like [`locate_nvrtc`]. `crate::comm` calls it before binding NCCL's functions.
pub fn locate_nccl() -> Result<&'static LibraryLocation, RuntimeError> {
    static NCCL_LOCATION: OnceLock<Result<LibraryLocation, RuntimeError>> = OnceLock::new();
    cached(&NCCL_LOCATION, &NCCL)
}

fn cached(
    cell: &'static OnceLock<Result<LibraryLocation, RuntimeError>>,
    spec: &LibrarySpec,
) -> Result<&'static LibraryLocation, RuntimeError> {
    cell.get_or_init(|| locate_library_in(spec, &SearchRoots::from_env(spec)))
        .as_ref()
        .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {

    #[test]
    fn nsight_compute_driver_interposer_is_accepted_and_nothing_else() {
        let ncu = Path::new(
            "/opt/nvidia/nsight-compute/2025.3.1/target/linux-desktop-glibc_2_11_3-x64/./libcuda-injection.so",
        );
        assert!(is_profiler_interposer(ncu));
        assert!(!is_profiler_interposer(Path::new(
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
        )));
        assert!(!is_profiler_interposer(Path::new(
            "/tmp/libcuda-injection.so"
        )));
        assert!(!is_profiler_interposer(Path::new(
            "/opt/nvidia/nsight-compute/libnvrtc.so"
        )));
    }

    use super::*;

    #[test]
    fn candidate_order_follows_the_roots() {
        let roots = SearchRoots {
            explicit: Some("/x/libnvrtc.so.13".into()),
            loader_path: vec!["/ld".into()],
            toolkit_roots: vec!["/cuda".into()],
            system_dirs: vec!["/sys".into()],
            site_packages: vec!["/site".into()],
            system_loader: true,
            notes: vec![],
        };
        let c = candidates(&NVRTC, &roots);
        let paths: Vec<String> = c.iter().map(|c| c.path.display().to_string()).collect();
        assert_eq!(paths[0], "/x/libnvrtc.so.13");
        assert_eq!(paths[1], "/ld/libnvrtc.so.13");
        assert_eq!(paths[4], "/cuda/lib64/libnvrtc.so.13");
        assert_eq!(paths[7], "/cuda/lib/libnvrtc.so.13");
        assert_eq!(paths[10], "/sys/libnvrtc.so.13");
        assert_eq!(paths[13], "/site/nvidia/cu13/lib/libnvrtc.so.13");
        assert_eq!(paths[16], "/site/nvidia/cuda_nvrtc/lib/libnvrtc.so.13");
        assert_eq!(paths[19], "libnvrtc.so.13");
        assert_eq!(paths.len(), 22);
    }

    #[test]
    fn duplicates_are_dropped() {
        let roots = SearchRoots {
            loader_path: vec!["/a".into(), "/a".into()],
            system_dirs: vec!["/a".into()],
            ..SearchRoots::empty()
        };
        assert_eq!(candidates(&NVRTC, &roots).len(), NVRTC.file_names.len());
    }

    #[test]
    fn major_version_from_file_name() {
        assert_eq!(
            major_version(Path::new("/nope/libnvrtc.so.13")).as_deref(),
            Some("13")
        );
        assert_eq!(
            major_version(Path::new("/nope/libnvrtc.so.12.4.1")).as_deref(),
            Some("12")
        );
        assert_eq!(major_version(Path::new("/nope/libnvrtc.so")), None);
    }

    #[test]
    fn cublas_is_searched_in_both_wheel_layouts_and_the_toolkit() {
        let roots = SearchRoots {
            toolkit_roots: vec!["/cuda".into()],
            site_packages: vec!["/site".into()],
            ..SearchRoots::empty()
        };
        let paths: Vec<String> = candidates(&CUBLAS, &roots)
            .iter()
            .map(|c| c.path.display().to_string())
            .collect();
        assert_eq!(paths[0], "/cuda/lib64/libcublas.so.13");
        assert!(paths.contains(&"/site/nvidia/cu13/lib/libcublas.so.13".to_string()));
        assert!(paths.contains(&"/site/nvidia/cublas/lib/libcublas.so.13".to_string()));
        assert!(paths.contains(&"/site/nvidia/cublas/lib/libcublas.so.12".to_string()));
    }

    #[test]
    fn nccl_is_searched_under_its_soname_in_the_wheel_the_toolkit_and_system_folders() {
        let roots = SearchRoots {
            toolkit_roots: vec!["/cuda".into()],
            site_packages: vec!["/site".into()],
            system_dirs: NCCL.system_dirs.iter().map(PathBuf::from).collect(),
            ..SearchRoots::empty()
        };
        let paths: Vec<String> = candidates(&NCCL, &roots)
            .iter()
            .map(|c| c.path.display().to_string())
            .collect();
        assert_eq!(paths[0], "/cuda/lib64/libnccl.so.2");
        assert!(paths.contains(&"/usr/lib/x86_64-linux-gnu/libnccl.so.2".to_string()));
        let wheel = paths
            .iter()
            .position(|p| p == "/site/nvidia/nccl/lib/libnccl.so.2")
            .expect("the nvidia-nccl-cu13 wheel's folder");
        let cu13 = paths
            .iter()
            .position(|p| p == "/site/nvidia/cu13/lib/libnccl.so.2")
            .expect("the CUDA 13 wheel folder");
        assert!(wheel < cu13, "{paths:?}");
        // Kiln binds NCCL itself: cudarc's names never include the soname
        const { assert!(!NCCL.cudarc_binds) };
        assert!(!cudarc::get_lib_name_candidates("nccl").contains(&"libnccl.so.2".to_string()));
    }

    #[test]
    fn missing_cublas_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("kiln-no-cublas-{}", std::process::id()));
        let roots = SearchRoots {
            site_packages: vec![dir.clone()],
            notes: vec!["LD_LIBRARY_PATH is not set".into()],
            ..SearchRoots::empty()
        };
        let err = locate_cublas_in(&roots).expect_err("nothing to find");
        assert!(matches!(err, RuntimeError::LibraryNotFound { .. }));
        let msg = err.to_string();
        for needle in [
            "cuBLAS (libcublas) could not be loaded",
            "nvidia/cu13/lib/{libcublas.so.13, libcublas.so.12, libcublas.so} [Python wheel]: not found",
            "nvidia/cublas/lib/{libcublas.so.13",
            "LD_LIBRARY_PATH is not set",
            "python3 -m pip install nvidia-cublas",
            "KILN_CUBLAS_PATH",
        ] {
            assert!(msg.contains(needle), "`{needle}` missing from:\n{msg}");
        }
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
    }

    #[test]
    fn a_file_that_is_not_a_library_is_reported_with_the_loader_message() {
        let dir = std::env::temp_dir().join(format!("kiln-fake-cublas-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let fake = dir.join("libcublas.so.13");
        std::fs::write(&fake, b"not an ELF file").expect("write");
        let roots = SearchRoots {
            explicit: Some(fake.clone()),
            ..SearchRoots::empty()
        };
        let err = locate_cublas_in(&roots).expect_err("not a library");
        let RuntimeError::LibraryNotFound { tried, .. } = &err else {
            panic!("unexpected error: {err}");
        };
        assert_eq!(tried.len(), 1);
        assert_eq!(tried[0].path, fake);
        assert!(
            matches!(tried[0].outcome, TryOutcome::LoadFailed(_)),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dependencies_are_found_next_to_the_library_with_its_major_version() {
        let dir = std::env::temp_dir().join(format!("kiln-cublas-deps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for f in [
            "libcublas.so.13",
            "libcublasLt.so.13",
            "libcublasLt.so.12",
            "libcublasLt_static.a",
        ] {
            std::fs::write(dir.join(f), b"").expect("write");
        }
        let deps = companion_files(&dir.join("libcublas.so.13"), "libcublasLt.so.");
        assert_eq!(deps, vec![dir.join("libcublasLt.so.13")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// With `KILN_TEST_CUBLAS_SITE` set to a folder laid out like site-packages (e.g. made with
    /// `pip install --no-deps --target DIR nvidia-cublas`), the real library is found, preloaded
    /// and bound by cudarc. Without it the test has nothing to check.
    #[test]
    fn a_real_cublas_wheel_is_located() {
        let Some(site) = std::env::var_os("KILN_TEST_CUBLAS_SITE") else {
            return;
        };
        let roots = SearchRoots {
            site_packages: vec![PathBuf::from(site)],
            ..SearchRoots::empty()
        };
        let loc = locate_cublas_in(&roots).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loc.origin, SearchOrigin::PythonWheel);
        assert!(loc
            .companions
            .iter()
            .any(|c| c.to_string_lossy().contains("libcublasLt.so.")));
    }
}
