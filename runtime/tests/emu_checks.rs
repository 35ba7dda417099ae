//! Deliberately broken kernels: each check fires with the right kind, Rust line, block and
//! thread — and the fixed version of each kernel is clean. Also: a shuffled schedule makes
//! an order-dependent bug change the results, and the race is reported on every schedule.

mod emu_common;

use emu_common::*;
use kiln_codegen::Bindings;
use kiln_runtime::emu::{
    self, EmuArg, EmuError, EmuOptions, EmuReport, Finding, FindingKind, Schedule,
};
use kiln_runtime::launch::{LaunchConfig, ScalarValue};

/// The single finding of `kind` at the line marked `marker`.
fn finding<'r>(r: &'r EmuReport, src: &str, kind: FindingKind, marker: &str) -> &'r Finding {
    let line = line_of(src, marker);
    let hits: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| f.kind == kind && f.line == line)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "expected one {kind:?} at line {line} ({marker}); got:\n{}",
        r.findings
            .iter()
            .map(|f| format!("  {f}\n"))
            .collect::<String>()
    );
    hits[0]
}

fn at(f: &Finding, block: (u32, u32, u32), thread: (u32, u32, u32)) {
    assert_eq!(
        (f.block, f.thread),
        (block, thread),
        "attributed to the wrong thread: {f}"
    );
    assert!(!f.kernel.is_empty());
    assert_eq!(f.file, FILE);
}

const GLOBAL_OOB: &str = "fn global_oob(x: &[f32], out: &mut [f32]) {
    let i = block_idx().x * block_dim().x + thread_idx().x;
    out[i] = x[i + 1]; // read past the end
}";

#[test]
fn global_out_of_bounds() {
    let p = program(GLOBAL_OOB);
    let x = bytes(&[1f32; 128]);
    let mut out = bytes(&[0f32; 128]);
    let r = run(
        &p,
        LaunchConfig::linear(2, 64),
        &mut [EmuArg::Slice(&x), EmuArg::SliceMut(&mut out)],
    );
    let f = finding(
        &r,
        GLOBAL_OOB,
        FindingKind::GlobalOutOfBounds,
        "read past the end",
    );
    at(f, (1, 0, 0), (63, 0, 0));
    assert!(
        f.detail.contains("index 128")
            && f.detail.contains("`x`")
            && f.detail.contains("length 128"),
        "{f}"
    );
    assert_eq!(r.findings.len(), 1);
    let text = f.to_string();
    assert!(
        text.starts_with("kernel `global_oob` (emu_test.rs:3), block (1,0,0) thread (63,0,0): out-of-bounds global access: "),
        "{text}"
    );
    assert_eq!(values::<f32>(&out)[127], 0.0, "the faulty read yields 0");
}

const SHARED_OOB: &str = "fn shared_oob(out: &mut [u32]) {
    let tile = shared::<[u32; 65]>();
    let grid = shared::<[[u32; 8]; 8]>();
    let t = thread_idx().x;
    tile[t] = 0;
    tile[t + 2] = t; // one past the end
    grid[t / 8][t % 8 + t / 63] = t; // inner dimension
    sync_threads();
    out[t] = tile[t] + grid[t / 8][t % 8];
}";

const DYN_OOB: &str = "fn dyn_oob(out: &mut [f32]) {
    let buf = dyn_shared::<f32>();
    let t = thread_idx().x;
    buf[t] = 1.0; // past the dynamic size
    sync_threads();
    out[t] = buf[t % 32];
}";

const LOCAL_OOB: &str = "fn local_oob(idx: &[u32], out: &mut [u32]) {
    let t = thread_idx().x;
    let mut r = [0u32; 4];
    r[idx[t]] = 1; // register array
    out[t] = r[0] + r[1] + r[2] + r[3];
}";

#[test]
fn shared_and_register_out_of_bounds() {
    let p = program(SHARED_OOB);
    let mut out = bytes(&[0u32; 64]);
    let r = run(
        &p,
        LaunchConfig::linear(1, 64),
        &mut [EmuArg::SliceMut(&mut out)],
    );
    let f = finding(
        &r,
        SHARED_OOB,
        FindingKind::SharedOutOfBounds,
        "one past the end",
    );
    at(f, (0, 0, 0), (63, 0, 0));
    assert!(
        f.detail.contains("index 65") && f.detail.contains("`tile`"),
        "{f}"
    );
    let f = finding(
        &r,
        SHARED_OOB,
        FindingKind::SharedOutOfBounds,
        "inner dimension",
    );
    at(f, (0, 0, 0), (63, 0, 0));
    assert!(
        f.detail.contains("index 8") && f.detail.contains("`grid`"),
        "{f}"
    );

    let p = program(DYN_OOB);
    let mut out = bytes(&[0f32; 64]);
    let r = run(
        &p,
        LaunchConfig::linear(3, 64).with_dyn_shared(32 * 4),
        &mut [EmuArg::SliceMut(&mut out)],
    );
    let f = finding(
        &r,
        DYN_OOB,
        FindingKind::SharedOutOfBounds,
        "past the dynamic size",
    );
    at(f, (0, 0, 0), (32, 0, 0));
    assert_eq!(f.occurrences, 3 * 32);
    assert_eq!(r.findings.len(), 1);

    let p = program(LOCAL_OOB);
    let idx: Vec<u32> = (0..32).map(|t| if t == 5 { 4 } else { t % 4 }).collect();
    let mut out = bytes(&[0u32; 32]);
    let r = run(
        &p,
        LaunchConfig::linear(1, 32),
        &mut [EmuArg::Slice(&bytes(&idx)), EmuArg::SliceMut(&mut out)],
    );
    let f = finding(
        &r,
        LOCAL_OOB,
        FindingKind::LocalOutOfBounds,
        "register array",
    );
    at(f, (0, 0, 0), (5, 0, 0));
    assert_eq!(r.findings.len(), 1);
}

const RACY: &str = "fn racy(x: &[f32], out: &mut [f32]) {
    let buf = shared::<[f32; 64]>();
    let t = thread_idx().x;
    buf[t] = 0.0;
    sync_threads();
    buf[t] = x[t]; // racy write
    out[t] = buf[(t + 1) % 64]; // racy read
}";

const FIXED: &str = "fn fixed(x: &[f32], out: &mut [f32]) {
    let buf = shared::<[f32; 64]>();
    let t = thread_idx().x;
    buf[t] = 0.0;
    sync_threads();
    buf[t] = x[t];
    sync_threads();
    out[t] = buf[(t + 1) % 64];
}";

const WRITE_WRITE: &str = "fn write_write(out: &mut [u32]) {
    let s = shared::<[u32; 2]>();
    let t = thread_idx().x;
    if t < 2 {
        s[1] = t; // both write
    }
    sync_threads();
    out[t] = s[1];
}";

const ATOMIC_THEN_READ: &str = "fn atomic_then_read(out: &mut [u32]) {
    let count = shared::<[u32; 1]>();
    let t = thread_idx().x;
    if t == 0 {
        count[0] = 0;
    }
    sync_threads();
    atomic_add(&mut count[0], 1); // others still add
    out[t] = count[0]; // read without a barrier
}";

const WARP_EXCHANGE: &str = "fn warp_exchange(out: &mut [u32]) {
    let s = shared::<[u32; 64]>();
    let t = thread_idx().x;
    s[t] = t * 2;
    sync_warp();
    out[t] = s[t ^ 31]; // same warp, ordered by sync_warp
}";

const WARP_EXCHANGE_RACY: &str = "fn warp_exchange_racy(out: &mut [u32]) {
    let s = shared::<[u32; 64]>();
    let t = thread_idx().x;
    s[t] = t * 2;
    out[t] = s[t ^ 31]; // lockstep is not guaranteed
}";

#[test]
fn shared_memory_races() {
    let x = bytes(&(0..64).map(|i| i as f32).collect::<Vec<_>>());
    let mut out = bytes(&[0f32; 64]);
    let r = run(
        &program(RACY),
        LaunchConfig::linear(1, 64),
        &mut [EmuArg::Slice(&x), EmuArg::SliceMut(&mut out)],
    );
    // thread 1 overwrites buf[1] after thread 0 read it, in the same barrier interval
    let w = finding(&r, RACY, FindingKind::SharedRace, "racy write");
    at(w, (0, 0, 0), (1, 0, 0));
    let read_line = line_of(RACY, "racy read");
    assert!(
        w.detail.contains("read by thread (0,0,0)")
            && w.detail.contains(&format!("line {read_line}")),
        "{w}"
    );
    // thread 63 reads buf[0], which thread 0 wrote in this interval
    let rd = finding(&r, RACY, FindingKind::SharedRace, "racy read");
    at(rd, (0, 0, 0), (63, 0, 0));
    assert!(
        rd.detail.contains("thread (0,0,0)") && rd.detail.contains("`buf`[0]"),
        "{rd}"
    );
    assert!(r.findings.iter().all(|f| f.kind == FindingKind::SharedRace));

    let mut out = bytes(&[0f32; 64]);
    run_clean(
        &program(FIXED),
        LaunchConfig::linear(1, 64),
        &mut [EmuArg::Slice(&x), EmuArg::SliceMut(&mut out)],
    );

    let mut out = bytes(&[0u32; 32]);
    let r = run(
        &program(WRITE_WRITE),
        LaunchConfig::linear(1, 32),
        &mut [EmuArg::SliceMut(&mut out)],
    );
    let f = finding(&r, WRITE_WRITE, FindingKind::SharedRace, "both write");
    at(f, (0, 0, 0), (1, 0, 0));
    assert!(f.detail.contains("also written by thread (0,0,0)"), "{f}");

    let mut out = bytes(&[0u32; 64]);
    let r = run(
        &program(ATOMIC_THEN_READ),
        LaunchConfig::linear(1, 64),
        &mut [EmuArg::SliceMut(&mut out)],
    );
    // thread 0 read the counter; thread 1's atomic then changes it in the same interval
    let f = finding(
        &r,
        ATOMIC_THEN_READ,
        FindingKind::SharedRace,
        "others still add",
    );
    at(f, (0, 0, 0), (1, 0, 0));
    let read_line = line_of(ATOMIC_THEN_READ, "read without a barrier");
    assert!(
        f.detail
            .contains(&format!("read by thread (0,0,0) at line {read_line}")),
        "{f}"
    );
    assert_eq!(r.findings.len(), 1, "atomics do not race with each other");

    let mut out = bytes(&[0u32; 64]);
    run_clean(
        &program(WARP_EXCHANGE),
        LaunchConfig::linear(1, 64),
        &mut [EmuArg::SliceMut(&mut out)],
    );
    assert_eq!(
        values::<u32>(&out),
        (0..64u32).map(|t| (t ^ 31) * 2).collect::<Vec<_>>()
    );
    let r = run(
        &program(WARP_EXCHANGE_RACY),
        LaunchConfig::linear(1, 64),
        &mut [EmuArg::SliceMut(&mut out)],
    );
    // lanes 0-15 read before their partners wrote (uninitialised); lane 16 is the first to
    // read a partner's write of this interval
    let f = finding(
        &r,
        WARP_EXCHANGE_RACY,
        FindingKind::SharedRace,
        "lockstep is not guaranteed",
    );
    at(f, (0, 0, 0), (16, 0, 0));
    assert!(!of_kind(&r, FindingKind::UninitializedSharedRead).is_empty());
}

// The front end rejects a `sync_threads` it can see is under a thread-dependent condition;
// these kernels hide it behind a variable that only becomes thread-dependent later in the
// loop, so the divergence shows only at run time.
const DIVERGE_EXIT: &str = "fn diverge_exit(out: &mut [u32]) {
    let mut go = true;
    let mut k = 0u32;
    while go {
        sync_threads(); // loop barrier
        k += 1;
        if k > thread_idx().x {
            go = false;
        }
    }
    out[thread_idx().x] = k;
}";

const DIVERGE_TWO: &str = "fn diverge_two(out: &mut [u32]) {
    let mut phase = 0u32;
    let mut round = 0u32;
    while round < 2 {
        if phase == 0 {
            sync_threads(); // barrier A
        } else {
            sync_threads(); // barrier B
        }
        phase = parity();
        round += 1;
    }
    out[thread_idx().x] = phase;
}";

/// Thread-dependent through a device function, which the front end's barrier check does not
/// look into: only the emulator can see the divergence.
const PARITY: &str = "fn parity() -> u32 { thread_idx().x % 2 }";

#[test]
fn barrier_divergence() {
    let mut out = bytes(&[0u32; 64]);
    let r = run(
        &program(DIVERGE_EXIT),
        LaunchConfig::linear(2, 64),
        &mut [EmuArg::SliceMut(&mut out)],
    );
    let f = finding(
        &r,
        DIVERGE_EXIT,
        FindingKind::BarrierDivergence,
        "loop barrier",
    );
    at(f, (0, 0, 0), (1, 0, 0));
    assert!(
        f.detail.contains("63 thread(s) wait")
            && f.detail.contains("1 thread(s) of the block exited"),
        "{f}"
    );
    assert!(f.detail.contains("thread (0,0,0)"), "{f}");
    assert_eq!(r.findings.len(), 1);

    let mut out = bytes(&[0u32; 64]);
    let r = run(
        &program_with(DIVERGE_TWO, &[PARITY], Bindings::default()),
        LaunchConfig::linear(1, 64),
        &mut [EmuArg::SliceMut(&mut out)],
    );
    let f = finding(&r, DIVERGE_TWO, FindingKind::BarrierDivergence, "barrier A");
    at(f, (0, 0, 0), (0, 0, 0));
    let (a, b) = (
        line_of(DIVERGE_TWO, "barrier A"),
        line_of(DIVERGE_TWO, "barrier B"),
    );
    assert!(
        f.detail.contains(&format!("32 at line {a}"))
            && f.detail.contains(&format!("32 at line {b}")),
        "{f}"
    );
    assert_eq!(r.findings.len(), 1);
}

const HALF_WARP_SHUFFLE: &str = "fn half_warp_shuffle(x: &[u32], out: &mut [u32]) {
    let t = thread_idx().x;
    let mut v = x[t];
    if t < 16 {
        v = shfl_down_sync(0x0000_ffff, v, 8); // reads lanes 16-23
    }
    out[t] = v;
}";

const PARTIAL_WARP: &str = "fn partial_warp(x: &[u32], out: &mut [u32]) {
    let t = thread_idx().x;
    out[t] = shfl_down_sync(0xffff_ffff, x[t], 8); // lanes 20-31 do not exist
}";

const FULL_MASK_HALF_WARP: &str = "fn full_mask_half_warp(x: &[f32], out: &mut [f32]) {
    let t = thread_idx().x;
    let mut v = x[t];
    if t % 32 < 16 {
        v += shfl_xor_sync(0xffff_ffff, v, 1); // mask names absent lanes
    }
    out[t] = v;
}";

#[test]
fn shuffles_from_inactive_lanes_and_bad_masks() {
    let x: Vec<u32> = (0..32).map(|i| 100 + i).collect();
    let mut out = bytes(&[0u32; 32]);
    let r = run(
        &program(HALF_WARP_SHUFFLE),
        LaunchConfig::linear(1, 32),
        &mut [EmuArg::Slice(&bytes(&x)), EmuArg::SliceMut(&mut out)],
    );
    let f = finding(
        &r,
        HALF_WARP_SHUFFLE,
        FindingKind::InactiveLaneShuffle,
        "reads lanes 16-23",
    );
    at(f, (0, 0, 0), (8, 0, 0));
    assert!(
        f.detail.contains("reads lane 16") && f.detail.contains("has exited"),
        "{f}"
    );
    assert_eq!(f.occurrences, 8);
    assert_eq!(r.findings.len(), 1, "the mask itself is right");
    let out: Vec<u32> = values(&out);
    assert_eq!(out[3], 111, "active source lanes are read");
    assert_eq!(
        out[9], 109,
        "an inactive source leaves the lane's own value"
    );

    let mut out = bytes(&[0u32; 20]);
    let r = run(
        &program(PARTIAL_WARP),
        LaunchConfig::linear(1, 20),
        &mut [EmuArg::Slice(&bytes(&x[..20])), EmuArg::SliceMut(&mut out)],
    );
    let f = finding(
        &r,
        PARTIAL_WARP,
        FindingKind::InactiveLaneShuffle,
        "do not exist",
    );
    at(f, (0, 0, 0), (12, 0, 0));
    assert!(f.detail.contains("does not exist"), "{f}");

    let xf = bytes(&[1f32; 64]);
    let mut out = bytes(&[0f32; 64]);
    let r = run(
        &program(FULL_MASK_HALF_WARP),
        LaunchConfig::linear(1, 64),
        &mut [EmuArg::Slice(&xf), EmuArg::SliceMut(&mut out)],
    );
    let f = finding(
        &r,
        FULL_MASK_HALF_WARP,
        FindingKind::WarpMaskMismatch,
        "mask names absent lanes",
    );
    at(f, (0, 0, 0), (0, 0, 0));
    assert!(
        f.detail.contains("0xffffffff") && f.detail.contains("lane(s) 16-31 has exited"),
        "{f}"
    );
    assert_eq!(f.occurrences, 2, "once per warp");
}

const UNINIT: &str = "fn uninit(out: &mut [f32]) {
    let s = shared::<[f32; 64]>();
    let t = thread_idx().x;
    if t < 32 {
        s[t] = 1.0;
    }
    sync_threads();
    out[t] = s[t]; // half of it was never written
}";

const NO_WAIT: &str = "fn no_wait(x: &[f32], out: &mut [f32]) {
    let tile = shared::<[f32; 128]>();
    let t = thread_idx().x;
    cp_async(&mut tile[4 * t], &x[4 * t]);
    cp_async_commit();
    sync_threads();
    out[t] = tile[t]; // the copies have not landed
}";

#[test]
fn uninitialised_shared_reads() {
    let mut out = bytes(&[0f32; 64]);
    let r = run(
        &program(UNINIT),
        LaunchConfig::linear(1, 64),
        &mut [EmuArg::SliceMut(&mut out)],
    );
    let f = finding(
        &r,
        UNINIT,
        FindingKind::UninitializedSharedRead,
        "never written",
    );
    at(f, (0, 0, 0), (32, 0, 0));
    assert!(f.detail.contains("`s`[32]"), "{f}");
    assert_eq!(r.findings.len(), 1);

    let x = bytes(&[2f32; 128]);
    let mut out = bytes(&[0f32; 32]);
    let r = run(
        &program(NO_WAIT),
        LaunchConfig::linear(1, 32),
        &mut [EmuArg::Slice(&x), EmuArg::SliceMut(&mut out)],
    );
    let f = finding(
        &r,
        NO_WAIT,
        FindingKind::UninitializedSharedRead,
        "have not landed",
    );
    at(f, (0, 0, 0), (0, 0, 0));
    assert_eq!(
        values::<f32>(&out)[0],
        0.0,
        "the data arrives only at a wait"
    );
}

const MISALIGNED: &str = "fn misaligned(x: &[f32], out: &mut [f32]) {
    let t = thread_idx().x;
    let v = x.vload(4 * t + 1); // 4 bytes past a 16-byte boundary
    out.vstore(4 * t, v);
}";

const DIV_ZERO: &str = "fn div_zero(a: &[u32], b: &[u32], out: &mut [u32]) {
    let t = thread_idx().x;
    out[t] = a[t] / b[t]; // b[3] is zero
}";

#[test]
fn misaligned_vectors_and_division_by_zero() {
    let x = bytes(&[1f32; 256]);
    let mut out = bytes(&[0f32; 128]);
    let r = run(
        &program(MISALIGNED),
        LaunchConfig::linear(1, 32),
        &mut [EmuArg::Slice(&x), EmuArg::SliceMut(&mut out)],
    );
    let f = finding(
        &r,
        MISALIGNED,
        FindingKind::MisalignedAccess,
        "16-byte boundary",
    );
    at(f, (0, 0, 0), (0, 0, 0));

    let a = bytes(&[7u32; 32]);
    let b = bytes(
        &(0..32u32)
            .map(|i| if i == 3 { 0 } else { 2 })
            .collect::<Vec<_>>(),
    );
    let mut out = bytes(&[0u32; 32]);
    let r = run(
        &program(DIV_ZERO),
        LaunchConfig::linear(1, 32),
        &mut [
            EmuArg::Slice(&a),
            EmuArg::Slice(&b),
            EmuArg::SliceMut(&mut out),
        ],
    );
    let f = finding(&r, DIV_ZERO, FindingKind::DivisionByZero, "is zero");
    at(f, (0, 0, 0), (3, 0, 0));
    assert_eq!(
        values::<u32>(&out)[3],
        u32::MAX,
        "all ones, as the GPU's division gives"
    );
    let err = r
        .into_result()
        .expect_err("findings become an error on request");
    assert!(
        matches!(err, EmuError::Findings(ref v) if v.len() == 1),
        "{err}"
    );
}

/// Each thread publishes a value and reads its neighbour's without a barrier between.
const ORDER_DEPENDENT: &str = "fn order_dependent(out: &mut [u32]) {
    let buf = shared::<[u32; 64]>();
    let t = thread_idx().x;
    buf[t] = 0;
    sync_threads();
    buf[t] = t + 1;
    out[t] = buf[(t + 1) % 64]; // neighbour, unsynchronised
}";

#[test]
fn shuffled_schedules_expose_order_dependent_bugs() {
    let p = program(ORDER_DEPENDENT);
    let run_with_schedule = |schedule: Schedule| {
        let mut out = bytes(&[0u32; 64]);
        let opts = EmuOptions {
            schedule,
            ..EmuOptions::default()
        };
        let r = run_with(
            &p,
            LaunchConfig::linear(1, 64),
            &mut [EmuArg::SliceMut(&mut out)],
            &opts,
        );
        assert!(
            r.findings.iter().any(|f| f.kind == FindingKind::SharedRace
                && f.line == line_of(ORDER_DEPENDENT, "unsynchronised")),
            "the race is reported whatever the interleaving: {:?}",
            r.findings
        );
        values::<u32>(&out)
    };
    // in thread order every thread reads its neighbour before the neighbour writes
    let det = run_with_schedule(Schedule::Deterministic);
    assert_eq!(det[..63], [0; 63]);
    assert_eq!(det[63], 1);
    let shuffled: Vec<Vec<u32>> = (0..8)
        .map(|seed| run_with_schedule(Schedule::Shuffled { seed }))
        .collect();
    assert!(
        shuffled.iter().any(|s| *s != det),
        "some interleaving changes the result"
    );
    assert_eq!(
        shuffled[3],
        run_with_schedule(Schedule::Shuffled { seed: 3 }),
        "a seed reproduces its schedule"
    );
}

#[test]
fn invalid_launches_and_arguments_are_errors() {
    let p = program(GLOBAL_OOB);
    let x = bytes(&[1f32; 8]);
    let mut out = bytes(&[0f32; 8]);
    let opts = EmuOptions::default();
    let go = |cfg: LaunchConfig, args: &mut [EmuArg<'_>]| emu::run(&p, &cfg, args, &opts);
    assert!(matches!(
        go(
            LaunchConfig::linear(1, 2048),
            &mut [EmuArg::Slice(&x), EmuArg::SliceMut(&mut out)]
        ),
        Err(EmuError::BadLaunch(_))
    ));
    assert!(matches!(
        go(
            LaunchConfig::linear(0, 32),
            &mut [EmuArg::Slice(&x), EmuArg::SliceMut(&mut out)]
        ),
        Err(EmuError::BadLaunch(_))
    ));
    let too_much = LaunchConfig::linear(1, 32).with_dyn_shared(229 * 1024);
    assert!(matches!(
        go(
            too_much,
            &mut [EmuArg::Slice(&x), EmuArg::SliceMut(&mut out)]
        ),
        Err(EmuError::BadLaunch(_))
    ));
    let cfg = LaunchConfig::linear(1, 8);
    let e = go(cfg, &mut [EmuArg::Slice(&x)]).unwrap_err();
    assert!(
        matches!(&e, EmuError::BadArguments(m) if m.contains("takes 2 argument(s)")),
        "{e}"
    );
    let e = go(
        cfg,
        &mut [
            EmuArg::SliceMut(&mut out.clone()),
            EmuArg::SliceMut(&mut out),
        ],
    )
    .unwrap_err();
    assert!(
        matches!(&e, EmuError::BadArguments(m) if m.contains("pass EmuArg::Slice")),
        "{e}"
    );
    let e = go(
        cfg,
        &mut [EmuArg::Slice(&x[..5]), EmuArg::SliceMut(&mut out)],
    )
    .unwrap_err();
    assert!(
        matches!(&e, EmuError::BadArguments(m) if m.contains("whole number")),
        "{e}"
    );
    let e = go(
        cfg,
        &mut [
            EmuArg::Scalar(ScalarValue::of(1u32)),
            EmuArg::SliceMut(&mut out),
        ],
    )
    .unwrap_err();
    assert!(matches!(&e, EmuError::BadArguments(_)), "{e}");

    let n_arg = program("fn k(n: u32, out: &mut [u32]) { out[0] = n; }");
    let mut o = bytes(&[0u32]);
    let e = emu::run(
        &n_arg,
        &cfg,
        &mut [
            EmuArg::Scalar(ScalarValue::of(1i32)),
            EmuArg::SliceMut(&mut o),
        ],
        &opts,
    )
    .unwrap_err();
    assert!(
        matches!(&e, EmuError::BadArguments(m) if m.contains("is `u32` but a `i32`")),
        "{e}"
    );
    let bad_bits = ScalarValue {
        ty: kiln_codegen::types::Scalar::U32,
        bits: 1 << 40,
    };
    let e = emu::run(
        &n_arg,
        &cfg,
        &mut [EmuArg::Scalar(bad_bits), EmuArg::SliceMut(&mut o)],
        &opts,
    )
    .unwrap_err();
    assert!(matches!(&e, EmuError::BadArguments(_)), "{e}");

    let spin = program("fn spin(flag: &[u32], out: &mut [u32]) { let mut k = 0u32; while flag[0] == 0 { k += 1; } out[0] = k; }");
    let opts = EmuOptions {
        max_steps_per_thread: 10_000,
        ..EmuOptions::default()
    };
    let e = emu::run(
        &spin,
        &cfg,
        &mut [EmuArg::Slice(&bytes(&[0u32])), EmuArg::SliceMut(&mut o)],
        &opts,
    )
    .unwrap_err();
    assert!(matches!(&e, EmuError::StepLimit { line: 1, .. }), "{e}");
}

#[test]
fn findings_in_a_device_function_name_its_file() {
    let device = "fn read_past(x: &[f32], i: u32) -> f32 {
    x[i + 1] // past the end
}";
    let kernel = "fn calls_it(x: &[f32], out: &mut [f32]) {
    let i = thread_idx().x;
    let v: f32 = read_past(x, i);
    out[i] = v + x[i + 2]; // kernel read
}";
    let p = program_with_files(
        kernel,
        &[(device, "lib/device_fns.rs")],
        kiln_codegen::spec::Bindings::default(),
    );
    let x = bytes(&[1f32; 32]);
    let mut out = bytes(&[0f32; 32]);
    let r = run(
        &p,
        LaunchConfig::linear(1, 32),
        &mut [EmuArg::Slice(&x), EmuArg::SliceMut(&mut out)],
    );
    let in_device = finding(
        &r,
        device,
        FindingKind::GlobalOutOfBounds,
        "// past the end",
    );
    assert_eq!(in_device.file, "lib/device_fns.rs", "{in_device}");
    assert!(in_device.detail.contains("read_past"), "{in_device}");
    let in_kernel = finding(&r, kernel, FindingKind::GlobalOutOfBounds, "// kernel read");
    assert_eq!(in_kernel.file, FILE, "{in_kernel}");
}
