//! `kiln tune`: searches the launch shape (and any comptime values given as lists) of a
//! registered kernel on random inputs, checks every candidate's output against the first
//! one's, stores the winner, and prints the table; `kiln tune --show` prints the store.

use kiln_codegen::SpecBuilder;
use kiln_runtime::tune::{self, Point, Space, Store, TuneKey, TuneOptions};
use kiln_runtime::{time, Device, Kernel, LaunchConfig};

use crate::cli_error::CliError;
use crate::runner::{spec_for, Inputs, RunRequest, Values};

/// What to search besides the request's fixed values.
pub struct TuneRequest<'a> {
    /// The kernel, its fixed comptime values, dtype, input size and scalar arguments.
    pub run: RunRequest<'a>,
    /// Comptime values to search, `NAME=v1,v2,…`.
    pub search: &'a [String],
    /// Search again even if the store has a result.
    pub force: bool,
}

/// Threads per block tried.
const THREADS: [i64; 5] = [64, 128, 256, 512, 1024];
/// Blocks per multiprocessor tried.
const PER_SM: [i64; 5] = [1, 2, 4, 8, 16];

/// The launch-shape dimensions every search has: `threads` per block and blocks `per_sm`.
pub fn launch_space() -> Space {
    Space::new().dim("threads", &THREADS).dim("per_sm", &PER_SM)
}

/// The launch a point of [`launch_space`] stands for on `device`.
pub fn launch_config(device: &Device, p: &Point) -> LaunchConfig {
    LaunchConfig::linear(
        device.multiprocessors() * p.get("per_sm") as u32,
        p.get("threads") as u32,
    )
}

/// The store key of a specialisation on a device for `len` elements.
pub fn key(spec: &SpecBuilder, device: &Device, len: u64) -> TuneKey {
    let name = format!(
        "{} [{}]",
        spec.def.qualified_name(),
        spec.bindings.describe()
    );
    TuneKey::new(&name, &device.name(), &device.arch().sm_name(), &[len])
}

/// The search space: the launch shape and the requested comptime lists.
fn space(search: &[String]) -> Result<(Space, Vec<String>), CliError> {
    let mut space = launch_space();
    let mut consts = Vec::new();
    for s in search {
        let (name, values) = s
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("`--search {s}`: write NAME=v1,v2,…")))?;
        let values: Vec<i64> = values
            .split(',')
            .map(|v| v.trim().parse::<i64>())
            .collect::<Result<_, _>>()
            .map_err(|_| CliError::usage(format!("`--search {s}`: values must be integers")))?;
        space = space.dim(name.trim(), &values);
        consts.push(name.trim().to_string());
    }
    Ok((space, consts))
}

/// A launch's writable slices, by parameter name.
type Outputs = Vec<(String, Values)>;

fn same(a: &Outputs, b: &Outputs) -> Result<(), String> {
    for ((name, x), (_, y)) in a.iter().zip(b) {
        match (x, y) {
            (Values::Int(x), Values::Int(y)) if x != y => return Err(format!("`{name}` differs")),
            (Values::Float(x), Values::Float(y)) => {
                let err = kiln_algorithms::verify::rel_err(y, x);
                if err > 1e-5 {
                    return Err(format!("`{name}` differs (relative error {err:.1e})"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs (or reuses) the search and returns the table.
pub fn run(req: &TuneRequest<'_>) -> Result<String, CliError> {
    let failed = |e: kiln_runtime::RuntimeError| CliError {
        message: e.to_string(),
        code: 1,
    };
    let device = if req.run.emulate {
        Device::emulator()
    } else {
        Device::from_env().map_err(failed)?
    };
    let (space, searched) = space(req.search)?;
    let key = key(&spec_for(&req.run, &[])?, &device, req.run.len as u64);
    let consts_of = |p: &Point| -> Vec<(String, i64)> {
        searched.iter().map(|n| (n.clone(), p.get(n))).collect()
    };
    let cfg_of = |p: &Point| launch_config(&device, p).with_dyn_shared(req.run.dyn_shared);
    let compile = |p: &Point| -> Result<Kernel, String> {
        let spec = spec_for(&req.run, &consts_of(p)).map_err(|e| e.message)?;
        Kernel::build(&spec, &device).map_err(|e| e.to_string())
    };
    let measure = |p: &Point, k: &Kernel| -> Result<(f64, Option<Outputs>), String> {
        let cfg = cfg_of(p);
        // the output of one launch on fresh inputs, for the check against the first candidate
        let mut fresh = Inputs::random(k, &req.run).map_err(|e| e.message)?;
        fresh.launch(k, &cfg).map_err(|e| e.to_string())?;
        let out = fresh.outputs(&device).map_err(|e| e.to_string())?;
        let timing = time(&device, 3, 15, || fresh.launch(k, &cfg)).map_err(|e| e.to_string())?;
        Ok((timing.median_ms, Some(out)))
    };
    let options = TuneOptions {
        progress: true,
        force: req.force,
    };
    let entry = tune::tune(
        &key,
        &space,
        &Store::default_location(),
        &options,
        compile,
        measure,
        same,
    )
    .map_err(failed)?;
    Ok(tune::table(&entry))
}

/// `kiln tune --show`: every stored search.
pub fn show() -> String {
    let entries = Store::default_location().entries();
    if entries.is_empty() {
        return "the tuning store is empty (run `kiln tune <kernel>`)\n".into();
    }
    entries
        .iter()
        .map(tune::table)
        .collect::<Vec<_>>()
        .join("\n")
}
