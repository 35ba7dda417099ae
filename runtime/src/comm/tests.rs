//! The communicator on the emulator (every operation, its counters, its refusals) and the
//! location and binding of NCCL without a GPU.

use std::path::PathBuf;

use super::*;
use crate::locate::{locate_nccl_in, SearchRoots, TryOutcome};

fn bufs<T: Element>(g: &CommGroup, data: &[Vec<T>]) -> Vec<DeviceBuffer<T>> {
    data.iter()
        .enumerate()
        .map(|(r, d)| g.device(r).upload(d).unwrap())
        .collect()
}

fn read<T: Element>(g: &CommGroup, b: &[DeviceBuffer<T>]) -> Vec<Vec<T>> {
    b.iter()
        .enumerate()
        .map(|(r, x)| g.device(r).download(x).unwrap())
        .collect()
}

#[test]
fn one_rank_copies() {
    let g = CommGroup::emulated(1).unwrap();
    assert_eq!(g.ranks(), 1);
    assert!(!g.is_nccl());
    let send = bufs(&g, &[vec![1u32, 2, 3, 4]]);
    let mut recv = bufs(&g, &[vec![0u32; 4]]);
    g.all_to_all_v(&[&send[0]], &mut [&mut recv[0]], &[vec![4]])
        .unwrap();
    assert_eq!(read(&g, &recv), vec![vec![1, 2, 3, 4]]);
    let s = g.stats();
    assert_eq!(
        (s.p2p_bytes_to_self, s.p2p_bytes_to_peers, s.operations),
        (16, 0, 1)
    );
}

#[test]
fn all_to_all_with_variable_counts_on_three_ranks() {
    let g = CommGroup::emulated(3).unwrap();
    // counts[s][d]; rank s's elements are 100·s + i
    let counts = vec![vec![1, 2, 0], vec![0, 1, 3], vec![2, 0, 1]];
    let data: Vec<Vec<f32>> = (0..3)
        .map(|s| {
            let n: usize = counts[s].iter().sum();
            (0..n).map(|i| (100 * s + i) as f32).collect()
        })
        .collect();
    let send = bufs(&g, &data);
    let mut recv = bufs(&g, &[vec![-1.0f32; 3], vec![-1.0; 3], vec![-1.0; 4]]);
    let sref: Vec<&DeviceBuffer<f32>> = send.iter().collect();
    let mut rref: Vec<&mut DeviceBuffer<f32>> = recv.iter_mut().collect();
    g.all_to_all_v(&sref, &mut rref, &counts).unwrap();
    assert_eq!(
        read(&g, &recv),
        vec![
            vec![0.0, 200.0, 201.0],
            vec![1.0, 2.0, 100.0],
            vec![101.0, 102.0, 103.0, 202.0]
        ]
    );
    let s = g.stats();
    // to self: 1 + 1 + 1 elements; to peers: 2 + 3 + 2
    assert_eq!((s.p2p_bytes_to_self, s.p2p_bytes_to_peers), (12, 28));
    g.reset_stats();
    assert_eq!(g.stats(), CommStats::default());
}

#[test]
fn fixed_all_to_all_all_reduce_and_all_gather() {
    let g = CommGroup::emulated(2).unwrap();
    let send = bufs(&g, &[vec![1u32, 2, 3, 4], vec![5, 6, 7, 8]]);
    let mut recv = bufs(&g, &[vec![0u32; 4], vec![0; 4]]);
    {
        let (a, b) = recv.split_at_mut(1);
        g.all_to_all(&[&send[0], &send[1]], &mut [&mut a[0], &mut b[0]], 2)
            .unwrap();
    }
    assert_eq!(read(&g, &recv), vec![vec![1, 2, 5, 6], vec![3, 4, 7, 8]]);

    let mut x = bufs(&g, &[vec![1.5f32, -2.0], vec![0.25, 4.0]]);
    {
        let (a, b) = x.split_at_mut(1);
        g.all_reduce_sum(&mut [&mut a[0], &mut b[0]]).unwrap();
    }
    assert_eq!(read(&g, &x), vec![vec![1.75, 2.0], vec![1.75, 2.0]]);
    let mut h = bufs(
        &g,
        &[
            vec![half::bf16::from_f32(1.0)],
            vec![half::bf16::from_f32(2.0)],
        ],
    );
    {
        let (a, b) = h.split_at_mut(1);
        g.all_reduce_sum(&mut [&mut a[0], &mut b[0]]).unwrap();
    }
    assert_eq!(read(&g, &h)[1], vec![half::bf16::from_f32(3.0)]);

    let parts = bufs(&g, &[vec![7u64, 8], vec![9, 10]]);
    let mut all = bufs(&g, &[vec![0u64; 4], vec![0; 4]]);
    {
        let (a, b) = all.split_at_mut(1);
        g.all_gather(&[&parts[0], &parts[1]], &mut [&mut a[0], &mut b[0]])
            .unwrap();
    }
    assert_eq!(read(&g, &all), vec![vec![7, 8, 9, 10]; 2]);
    let s = g.stats();
    assert_eq!(s.all_reduce_bytes, 2 * 8 + 2 * 2);
    assert_eq!(s.all_gather_bytes, 2 * 16);
    assert_eq!(s.operations, 4);
}

#[test]
fn bad_counts_and_buffers_are_refused_before_anything_moves() {
    let g = CommGroup::emulated(2).unwrap();
    let send = bufs(&g, &[vec![1u32; 4], vec![2; 4]]);
    let mut recv = bufs(&g, &[vec![0u32; 4], vec![0; 4]]);
    let sref: Vec<&DeviceBuffer<u32>> = send.iter().collect();
    let mut rref: Vec<&mut DeviceBuffer<u32>> = recv.iter_mut().collect();
    let says = |e: RuntimeError, what: &str| {
        assert!(matches!(e, RuntimeError::InvalidInput { .. }), "{e}");
        assert!(e.to_string().contains(what), "`{what}` not in: {e}");
    };
    // not N × N
    says(
        g.all_to_all_v(&sref, &mut rref, &[vec![1, 1]]).unwrap_err(),
        "needs 2 × 2",
    );
    says(
        g.all_to_all_v(&sref, &mut rref, &[vec![1], vec![1, 1]])
            .unwrap_err(),
        "needs 2 × 2",
    );
    // a row sum past the send buffer, a column sum past the receive buffer
    says(
        g.all_to_all_v(&sref, &mut rref, &[vec![3, 2], vec![0, 0]])
            .unwrap_err(),
        "reads past rank 0's send buffer",
    );
    says(
        g.all_to_all_v(&sref, &mut rref, &[vec![0, 3], vec![0, 2]])
            .unwrap_err(),
        "writes past rank 1's receive buffer",
    );
    // overflowing counts
    says(
        g.all_to_all_v(&sref, &mut rref, &[vec![usize::MAX, 1], vec![0, 0]])
            .unwrap_err(),
        "overflow",
    );
    // overlapping receive windows, a rank out of range, too few buffers
    let t = |from, to, recv_offset| Transfer {
        from,
        to,
        send_offset: 0,
        recv_offset,
        count: 2,
    };
    says(
        g.send_recv(&sref, &mut rref, &[t(0, 1, 0), t(1, 1, 1)])
            .unwrap_err(),
        "must not overlap",
    );
    says(
        g.send_recv(&sref, &mut rref, &[t(0, 2, 0)]).unwrap_err(),
        "ranks are 0..2",
    );
    says(
        g.send_recv(&sref[..1], &mut rref, &[]).unwrap_err(),
        "1 buffers for a group of 2 ranks",
    );
    drop(rref);
    assert_eq!(read(&g, &recv), vec![vec![0; 4]; 2], "nothing moved");
    assert_eq!(g.stats(), CommStats::default(), "nothing counted");
    // all-reduce: lengths must match, u16 has no NCCL type
    let mut a = bufs(&g, &[vec![1u32; 2], vec![1; 3]]);
    {
        let (x, y) = a.split_at_mut(1);
        says(
            g.all_reduce_sum(&mut [&mut x[0], &mut y[0]]).unwrap_err(),
            "all must match",
        );
    }
    let mut u = bufs(&g, &[vec![1u16; 2], vec![1; 2]]);
    {
        let (x, y) = u.split_at_mut(1);
        says(
            g.all_reduce_sum(&mut [&mut x[0], &mut y[0]]).unwrap_err(),
            "no NCCL type",
        );
    }
    let mut small = bufs(&g, &[vec![0u32; 3], vec![0; 8]]);
    {
        let (x, y) = small.split_at_mut(1);
        says(
            g.all_gather(&sref, &mut [&mut x[0], &mut y[0]])
                .unwrap_err(),
            "need 8",
        );
    }
    says(CommGroup::new(&[]).unwrap_err(), "no devices");
}

#[test]
fn zero_counts_are_skipped() {
    let g = CommGroup::emulated(2).unwrap();
    let send = bufs(&g, &[vec![1u8], vec![2]]);
    let mut recv = bufs(&g, &[vec![0u8; 1], vec![0; 1]]);
    let sref: Vec<&DeviceBuffer<u8>> = send.iter().collect();
    let mut rref: Vec<&mut DeviceBuffer<u8>> = recv.iter_mut().collect();
    g.all_to_all_v(&sref, &mut rref, &[vec![0, 1], vec![1, 0]])
        .unwrap();
    drop(rref);
    assert_eq!(read(&g, &recv), vec![vec![2], vec![1]]);
    assert_eq!(g.stats().p2p_bytes_to_peers, 2);
}

#[test]
fn plan_offsets() {
    let p = all_to_all_plan(2, &[vec![1, 2], vec![3, 4]]).unwrap();
    let got: Vec<(usize, usize, usize, usize, usize)> = p
        .iter()
        .map(|t| (t.from, t.to, t.send_offset, t.recv_offset, t.count))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 0, 0, 0, 1),
            (0, 1, 1, 0, 2),
            (1, 0, 0, 1, 3),
            (1, 1, 3, 2, 4)
        ]
    );
}

/// A machine without NCCL gets an error that names every place searched, including the
/// pip wheel's folder, and how to install it — never a panic.
#[test]
fn missing_nccl_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("kiln-no-nccl-{}", std::process::id()));
    let roots = SearchRoots {
        toolkit_roots: vec![dir.join("cuda")],
        site_packages: vec![dir.clone()],
        notes: vec!["LD_LIBRARY_PATH is not set".into()],
        ..SearchRoots::empty()
    };
    let err = locate_nccl_in(&roots).expect_err("nothing to find");
    assert!(matches!(err, RuntimeError::LibraryNotFound { .. }));
    let msg = err.to_string();
    for needle in [
        "NCCL (libnccl) could not be loaded",
        "nvidia/nccl/lib/{libnccl.so.2, libnccl.so} [Python wheel]: not found",
        "cuda/lib64/{libnccl.so.2, libnccl.so} [CUDA_HOME/CUDA_PATH]: not found",
        "LD_LIBRARY_PATH is not set",
        "python3 -m pip install nvidia-nccl-cu13",
        "KILN_NCCL_PATH",
    ] {
        assert!(msg.contains(needle), "`{needle}` missing from:\n{msg}");
    }
}

/// A file that is not NCCL (here: not even a library) is reported with the loader's message,
/// and binding it directly is an error too.
#[test]
fn a_file_that_is_not_nccl_is_refused() {
    let dir = std::env::temp_dir().join(format!("kiln-fake-nccl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("libnccl.so.2");
    std::fs::write(&fake, b"not an ELF file").unwrap();
    let roots = SearchRoots {
        explicit: Some(dir.clone()),
        ..SearchRoots::empty()
    };
    let err = locate_nccl_in(&roots).expect_err("not a library");
    let RuntimeError::LibraryNotFound { tried, .. } = &err else {
        panic!("unexpected error: {err}");
    };
    assert!(
        matches!(tried[0].outcome, TryOutcome::LoadFailed(_)),
        "{err}"
    );
    let e = nccl::bind(&fake).expect_err("not NCCL");
    assert!(e.to_string().contains("could not be opened"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `KILN_TEST_NCCL_SITE` pointing at a site-packages-like folder holding the
/// `nvidia-nccl-cu13` wheel (`pip install --no-deps --target DIR nvidia-nccl-cu13`), the real
/// library is found in `nvidia/nccl/lib`, exports every function Kiln calls and reports its
/// version — all without a GPU (`ncclGetVersion` touches no device).
#[test]
fn a_real_nccl_wheel_is_located_and_bound() {
    let Some(site) = std::env::var_os("KILN_TEST_NCCL_SITE") else {
        return;
    };
    let roots = SearchRoots {
        site_packages: vec![PathBuf::from(site)],
        ..SearchRoots::empty()
    };
    let loc = locate_nccl_in(&roots).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loc.origin, crate::locate::SearchOrigin::PythonWheel);
    assert!(
        loc.library.ends_with("nvidia/nccl/lib/libnccl.so.2"),
        "{loc:?}"
    );
    let api = nccl::bind(&loc.library).unwrap_or_else(|e| panic!("{e}"));
    assert!(api.version() >= nccl::MIN_VERSION, "{api:?}");
    println!("bound {api:?}");
    // an error code comes back with NCCL's own name for it
    let e = api.check("ncclSend", 4, None).unwrap_err();
    assert!(e.to_string().contains("invalid argument"), "{e}");
    assert!(e.to_string().contains("ncclResult_t 4"), "{e}");
}

#[test]
fn version_codes() {
    assert_eq!(nccl::version_string(23206), "2.32.6");
    assert_eq!(nccl::version_string(nccl::MIN_VERSION), "2.18.0");
}
