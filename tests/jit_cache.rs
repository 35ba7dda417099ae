//! The compile cache without a GPU: memory and disk hits, recompilation of corrupt or
//! truncated entries, and concurrent writers that never leave a broken entry.

use kiln::codegen::{cuda, spec, Arch, Bindings};
use kiln::runtime::cache::{clear_memory_cache, compile_cached_in, CacheSource, JitOptions};

const JIT: JitOptions = JitOptions { fast_math: false };

fn module(tile: i128) -> kiln::codegen::CudaModule {
    let def = kiln::codegen::find_kernel("transpose").unwrap();
    cuda::print(
        &spec::specialize(
            def,
            &Bindings::default().with_const("TILE", tile),
            Arch::SM90,
        )
        .unwrap(),
    )
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cache-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn memory_disk_and_corruption() {
    let Some(_) = kiln::runtime::require::nvrtc_or_skip() else {
        return;
    };
    let dir = temp_dir("basic");
    let m = module(17);
    let first = compile_cached_in(&m, Arch::SM90, &JIT, Some(&dir)).unwrap();
    assert_eq!(first.source, CacheSource::Compiled);
    assert_eq!(
        compile_cached_in(&m, Arch::SM90, &JIT, Some(&dir))
            .unwrap()
            .source,
        CacheSource::Memory
    );
    clear_memory_cache();
    let disk = compile_cached_in(&m, Arch::SM90, &JIT, Some(&dir)).unwrap();
    assert_eq!(disk.source, CacheSource::Disk);
    assert_eq!(disk.cubin, first.cubin);
    println!(
        "cold compile {:.1} ms, disk hit {:.2} ms",
        first.millis, disk.millis
    );
    assert!(disk.millis < 10.0);
    // truncate the entry: it is recompiled, not fatal
    let entry = dir.join(format!("{}.cubin", first.key));
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    clear_memory_cache();
    assert_eq!(
        compile_cached_in(&m, Arch::SM90, &JIT, Some(&dir))
            .unwrap()
            .source,
        CacheSource::Compiled
    );
    // flip a byte: the checksum catches it
    let mut bytes = std::fs::read(&entry).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();
    clear_memory_cache();
    assert_eq!(
        compile_cached_in(&m, Arch::SM90, &JIT, Some(&dir))
            .unwrap()
            .source,
        CacheSource::Compiled
    );
    // the key depends on the options and the architecture
    let fast = JitOptions { fast_math: true };
    assert_ne!(
        compile_cached_in(&m, Arch::SM90, &fast, Some(&dir))
            .unwrap()
            .key,
        first.key
    );
    assert_ne!(
        compile_cached_in(&m, Arch::SM80, &JIT, Some(&dir))
            .unwrap()
            .key,
        first.key
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn concurrent_writers_leave_a_valid_entry() {
    let Some(_) = kiln::runtime::require::nvrtc_or_skip() else {
        return;
    };
    let dir = temp_dir("race");
    let m = module(29);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| compile_cached_in(&m, Arch::SM90, &JIT, Some(&dir)).unwrap());
        }
    });
    clear_memory_cache();
    let hit = compile_cached_in(&m, Arch::SM90, &JIT, Some(&dir)).unwrap();
    assert_eq!(hit.source, CacheSource::Disk);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
    let _ = std::fs::remove_dir_all(dir);
}
