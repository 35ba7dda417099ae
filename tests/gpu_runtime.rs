//! The runtime on a real device (GPU when present, else the emulator): launches are
//! validated before they run, buffers of every kind are accepted, and a warm kernel load
//! from the disk cache is fast.

mod common;

use common::{device, unavailable};
use half::bf16;
use kiln::algorithms::verify::Rng;
use kiln::codegen::Dtype;
use kiln::corpus::{basics, memory};
use kiln::runtime::{LaunchConfig, RuntimeError};

fn launch_error(r: Result<(), RuntimeError>) -> String {
    match r {
        Err(RuntimeError::Launch { reason, .. }) => reason,
        other => panic!("expected a launch error, got {other:?}"),
    }
}

#[test]
fn bad_launch_shapes_are_rejected_before_running() {
    let Some(dev) = device() else { return };
    let k = basics::saxpy::spec().build(&dev).expect("builds");
    let x = dev.upload(&[1.0f32; 64]).unwrap();
    let mut y = dev.upload(&[1.0f32; 64]).unwrap();
    let r = basics::saxpy::launch(&k, &LaunchConfig::linear(1, 2048), 1.0f32, &x, &mut y, 64);
    assert!(launch_error(r).contains("at most 1024"));
    let r = basics::saxpy::launch(&k, &LaunchConfig::linear(0, 32), 1.0f32, &x, &mut y, 64);
    assert!(launch_error(r).contains("zero dimension"));
    let bounded = basics::vector_add::spec()
        .t(Dtype::F32)
        .build(&dev)
        .unwrap();
    let mut out = dev.zeros::<f32>(64).unwrap();
    let r = basics::vector_add::launch(
        &bounded,
        &LaunchConfig::linear(1, 512),
        &x,
        &x,
        &mut out,
        64,
    );
    assert!(launch_error(r).contains("threads = 256"));
}

#[test]
fn element_type_must_match_the_specialisation() {
    let Some(dev) = device() else { return };
    let k = basics::vector_add::spec()
        .t(Dtype::Bf16)
        .build(&dev)
        .unwrap();
    let x = dev.upload(&[1.0f32; 64]).unwrap();
    let mut out = dev.zeros::<f32>(64).unwrap();
    let reason = launch_error(basics::vector_add::launch(
        &k,
        &LaunchConfig::linear(1, 64),
        &x,
        &x,
        &mut out,
        64,
    ));
    assert!(
        reason.contains("holds f32") && reason.contains("T=bf16"),
        "{reason}"
    );
}

#[test]
fn dynamic_shared_memory_must_be_given() {
    let Some(dev) = device() else { return };
    let k = memory::reverse_chunks::spec().build(&dev).unwrap();
    let x = dev.upload(&[1.0f32; 64]).unwrap();
    let mut out = dev.zeros::<f32>(64).unwrap();
    let reason = launch_error(memory::reverse_chunks::launch(
        &k,
        &LaunchConfig::linear(1, 64),
        &x,
        &mut out,
        64,
    ));
    assert!(reason.contains("dyn_shared"), "{reason}");
}

#[test]
fn mapped_host_memory_is_read_and_written_by_kernels() {
    let Some(dev) = device() else { return };
    let n = 5000usize;
    let mut rng = Rng::new(21);
    let (a, b) = (rng.f32s(n), rng.f32s(n));
    let k = basics::vector_add::spec()
        .t(Dtype::F32)
        .build(&dev)
        .unwrap();
    let mut ma = dev.mapped::<f32>(n).unwrap();
    ma.copy_from_slice(&a);
    let db = dev.upload(&b).unwrap();
    let mut mout = dev.mapped::<f32>(n).unwrap();
    mout.fill(f32::NAN);
    match basics::vector_add::launch(
        &k,
        &LaunchConfig::for_elements(n as u32, 256),
        &ma,
        &db,
        &mut mout,
        n as u32,
    ) {
        Err(e) if unavailable(&e) => return println!("SKIPPED: {e}"),
        r => r.unwrap(),
    }
    // no explicit synchronisation: reading mapped memory waits for the kernel that wrote it
    for i in 0..n {
        assert_eq!(mout[i], a[i] + b[i], "element {i}");
    }
}

#[test]
fn cudarc_slices_are_accepted_directly() {
    let Some(dev) = device() else { return };
    let Some(gpu) = dev.as_gpu() else {
        return println!("SKIPPED: cudarc interop needs a GPU");
    };
    let data: Vec<bf16> = (0..1000).map(|i| bf16::from_f32(i as f32)).collect();
    let a = gpu.stream.clone_htod(&data).unwrap();
    let mut out = gpu.stream.alloc_zeros::<bf16>(1000).unwrap();
    let k = basics::vector_add::spec()
        .t(Dtype::Bf16)
        .build(&dev)
        .unwrap();
    basics::vector_add::launch(
        &k,
        &LaunchConfig::for_elements(1000, 256),
        &a,
        &a,
        &mut out,
        1000,
    )
    .unwrap();
    let got = gpu.stream.clone_dtoh(&out).unwrap();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(*g, bf16::from_f32(2.0 * i as f32));
    }
}

#[test]
fn warm_load_from_the_disk_cache_is_under_10_ms() {
    let Some(dev) = device() else { return };
    if !dev.is_gpu() {
        return println!(
            "SKIPPED: module loading needs a GPU (the cache itself is tested in jit_cache.rs)"
        );
    }
    let dir = std::env::temp_dir().join(format!("kiln-warm-{}", std::process::id()));
    std::env::set_var("KILN_CACHE_DIR", &dir);
    let spec = memory::histogram::spec().bins(128);
    let cold = std::time::Instant::now();
    let k = spec.build(&dev).unwrap();
    let cold_ms = cold.elapsed().as_secs_f64() * 1e3;
    kiln::runtime::cache::clear_memory_cache();
    let warm = std::time::Instant::now();
    let k2 = spec.build(&dev).unwrap();
    let warm_ms = warm.elapsed().as_secs_f64() * 1e3;
    let image = k2.image.as_ref().unwrap();
    println!("histogram<128>: cold build {cold_ms:.1} ms ({:?}), warm build {warm_ms:.2} ms ({:?}, cache read {:.2} ms)", k.image.as_ref().unwrap().source, image.source, image.millis);
    assert_eq!(image.source, kiln::runtime::cache::CacheSource::Disk);
    assert!(warm_ms < 10.0, "warm load took {warm_ms:.2} ms");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn pinned_memory_that_is_not_mapped_is_refused_by_kernels() {
    let Some(dev) = device() else { return };
    let k = basics::vector_add::spec()
        .t(Dtype::F32)
        .build(&dev)
        .unwrap();
    let mut pinned = dev.pinned::<f32>(64).unwrap();
    pinned.fill(1.0);
    let x = dev.upload(&[1.0f32; 64]).unwrap();
    let reason = launch_error(basics::vector_add::launch(
        &k,
        &LaunchConfig::linear(1, 64),
        &pinned,
        &x,
        &mut dev.zeros::<f32>(64).unwrap(),
        64,
    ));
    assert!(reason.contains("Device::mapped"), "{reason}");
    // but it is a fast source for copies
    let mut d = dev.zeros::<f32>(64).unwrap();
    dev.write(&mut d, &pinned).unwrap();
    assert_eq!(dev.download(&d).unwrap(), vec![1.0f32; 64]);
}

#[test]
fn dynamic_shared_memory_above_48_kib_is_opted_in() {
    let Some(dev) = device() else { return };
    let k = memory::reverse_chunks::spec().build(&dev).unwrap();
    let n = 256 * 8usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut out = dev.zeros::<f32>(n).unwrap();
    let cfg = LaunchConfig::for_elements(n as u32, 256).with_dyn_shared(96 * 1024);
    match memory::reverse_chunks::launch(&k, &cfg, &dev.upload(&x).unwrap(), &mut out, n as u32) {
        Err(e) if unavailable(&e) => return println!("SKIPPED: {e}"),
        r => r.unwrap(),
    }
    let got = dev.download(&out).unwrap();
    assert_eq!(got[0], 255.0);
    let too_much = LaunchConfig::for_elements(n as u32, 256).with_dyn_shared(4 << 20);
    assert!(memory::reverse_chunks::launch(
        &k,
        &too_much,
        &dev.upload(&x).unwrap(),
        &mut out,
        n as u32
    )
    .is_err());
}

#[test]
fn fast_math_is_used_only_when_asked() {
    let Some(dev) = device() else { return };
    if !dev.is_gpu() {
        return println!("SKIPPED: compile options matter on a GPU");
    }
    let spec = kiln::corpus::reductions::row_softmax::spec().t(Dtype::F32);
    let precise = spec.build(&dev).unwrap();
    let fast = kiln::runtime::Kernel::build_with(
        &spec,
        &dev,
        &kiln::runtime::cache::JitOptions { fast_math: true },
    )
    .unwrap();
    assert_ne!(precise.image.unwrap().key, fast.image.unwrap().key);
}

#[test]
fn work_on_a_second_stream_is_ordered_by_events() {
    let Some(dev) = device() else { return };
    let n = 1 << 20;
    let x: Vec<f32> = (0..n).map(|i| (i % 97) as f32).collect();
    let k = basics::saxpy::spec().build(&dev).unwrap();
    let dx = dev.upload(&x).unwrap();
    let mut y = dev.zeros::<f32>(n).unwrap();
    // default stream: y = 2x; second stream, after it: y = 3x + y = 5x
    basics::saxpy::launch(
        &k,
        &LaunchConfig::linear(64, 256),
        2.0f32,
        &dx,
        &mut y,
        n as u32,
    )
    .unwrap();
    let ready = dev.default_stream().record().unwrap();
    let side = dev.new_stream().unwrap();
    side.wait(&ready).unwrap();
    basics::saxpy::launch_on(
        &k,
        &side,
        &LaunchConfig::linear(64, 256),
        3.0f32,
        &dx,
        &mut y,
        n as u32,
    )
    .unwrap();
    let done = side.record().unwrap();
    dev.default_stream().wait(&done).unwrap();
    let got = dev.download(&y).unwrap();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(*g, 5.0 * x[i], "element {i}");
    }
    assert!(done.is_done());
    // without events: a launch on another stream still waits for the buffers' stream
    let mut z = dev.zeros::<f32>(n).unwrap();
    basics::saxpy::launch_on(
        &k,
        &side,
        &LaunchConfig::linear(64, 256),
        1.0f32,
        &dx,
        &mut z,
        n as u32,
    )
    .unwrap();
    assert_eq!(dev.download(&z).unwrap(), x);
}

/// cuBLAS's grouped GEMM (the MoE benches' grouped baseline, bf16 C) gives what one cuBLAS
/// GEMM per group gives (f32 C) up to bf16 rounding, over groups of uneven size with an
/// empty one, and leaves nothing else of C unwritten. On the emulator there is no cuBLAS: the test passes there without running, and
/// on a GPU a missing or too old cuBLAS fails it only with KILN_REQUIRE_CUBLAS=1.
#[test]
fn cublas_grouped_gemm_matches_one_gemm_per_group() {
    use kiln::runtime::blas::{Blas, Layout};
    let Some(dev) = device() else { return };
    if !dev.is_gpu() {
        println!("skipped: cuBLAS needs a GPU");
        return;
    }
    let require = std::env::var("KILN_REQUIRE_CUBLAS").is_ok_and(|v| v.trim() == "1");
    let blas = match Blas::new(&dev) {
        Ok(b) => b,
        Err(e) if !require => {
            println!("skipped: {e}");
            return;
        }
        Err(e) => panic!("KILN_REQUIRE_CUBLAS=1: {e}"),
    };
    let (rows, k, n) = ([37usize, 0, 130, 1, 64], 96usize, 80usize);
    let total: usize = rows.iter().sum();
    let mut rng = Rng::new(5);
    let random = |rng: &mut Rng, len: usize| -> Vec<bf16> {
        rng.f32s(len).into_iter().map(bf16::from_f32).collect()
    };
    let a_host = random(&mut rng, total * k);
    let w_host = random(&mut rng, rows.len() * k * n);
    let (a, w) = (dev.upload(&a_host).unwrap(), dev.upload(&w_host).unwrap());
    let mut c = dev.upload(&vec![bf16::NAN; total * n]).unwrap();
    {
        let call = match blas.grouped_gemm(&a, &w, &mut c, &rows, k, n) {
            Ok(call) => call,
            Err(e) if !require => {
                println!("skipped: {e}");
                return;
            }
            Err(e) => panic!("KILN_REQUIRE_CUBLAS=1: {e}"),
        };
        assert_eq!(call.parts().len(), 4, "the empty group is left out");
        blas.run_grouped(&call).unwrap();
    }
    let got = dev.download(&c).unwrap();
    let mut start = 0;
    for (g, &r) in rows.iter().enumerate() {
        if r == 0 {
            continue;
        }
        let ag = dev.upload(&a_host[start * k..(start + r) * k]).unwrap();
        let wg = dev.upload(&w_host[g * k * n..(g + 1) * k * n]).unwrap();
        let mut cg = dev.zeros::<f32>(r * n).unwrap();
        blas.gemm_bf16(&ag, &wg, &mut cg, r, n, k, Layout::RowMajor)
            .unwrap();
        let want = dev.download(&cg).unwrap();
        let part = &got[start * n..(start + r) * n];
        let err = kiln::algorithms::metrics::rel_err(
            &part.iter().map(|&x| x.to_f64()).collect::<Vec<_>>(),
            &want.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        );
        // bf16 keeps 8 significant bits: a rounding of at most 2^-9 per element
        assert!(err < 3e-3, "group {g} ({r} rows): relative error {err:.2e}");
        start += r;
    }
}
