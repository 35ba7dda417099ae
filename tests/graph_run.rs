//! Graph capture and replay, and asynchronous copies on a stream, on the test device (the
//! GPU when present, else the emulator): a captured sequence replays with its per-step
//! scalar read from device memory, work forked to a second stream inside the capture is
//! part of the graph, a freed captured buffer makes the replay an error, and copies honour
//! their ranges.

mod common;

use common::device;
use kiln::algorithms::clo::kernels::clo_advance;
use kiln::algorithms::verify::Rng;
use kiln::corpus::basics;
use kiln::runtime::{LaunchConfig, RuntimeError};

#[test]
fn a_captured_step_replays_with_its_counter_in_device_memory() {
    let Some(dev) = device() else { return };
    let n = 1 << 16;
    let advance = clo_advance::spec().build(&dev).unwrap();
    let saxpy = basics::saxpy::spec().build(&dev).unwrap();
    let x: Vec<f32> = Rng::new(5).f32s(n);
    let dx = dev.upload(&x).unwrap();
    let mut y = dev.zeros::<f32>(n).unwrap();
    let mut counter = dev.upload(&[7u32]).unwrap();
    let main = dev.default_stream();
    let side = dev.new_stream().unwrap();
    let one = LaunchConfig::linear(1, 32);
    let mut graph = main
        .capture(|s| {
            // fork: y += 1·x on the side stream, the counter on the main stream, then join
            side.wait(&s.record()?)?;
            basics::saxpy::launch_on(
                &saxpy,
                &side,
                &LaunchConfig::linear(64, 256),
                1.0f32,
                &dx,
                &mut y,
                n as u32,
            )?;
            clo_advance::launch_on(&advance, s, &one, &mut counter)?;
            s.wait(&side.record()?)
        })
        .unwrap();
    // capturing ran nothing
    assert_eq!(dev.download(&counter).unwrap(), [7]);
    for _ in 0..5 {
        graph.launch(&main).unwrap();
    }
    assert_eq!(dev.download(&counter).unwrap(), [12]);
    let got = dev.download(&y).unwrap();
    for (i, (g, v)) in got.iter().zip(&x).enumerate() {
        assert_eq!(*g, 5.0 * v, "element {i}");
    }
    // freeing a buffer the graph uses makes the next replay an error, not a write to freed memory
    drop(y);
    let err = graph.launch(&main).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::InvalidInput { reason, .. } if reason.contains("freed")),
        "{err}"
    );
    assert_eq!(dev.download(&counter).unwrap(), [12], "a stale graph ran");
}

#[test]
fn a_capture_does_not_nest_and_ends_on_error() {
    let Some(dev) = device() else { return };
    let advance = clo_advance::spec().build(&dev).unwrap();
    let mut counter = dev.upload(&[0u32]).unwrap();
    let main = dev.default_stream();
    let nested = main.capture(|s| {
        let inner = s.capture(|_| Ok(()));
        assert!(inner.is_err(), "a nested capture must be refused");
        clo_advance::launch_on(&advance, s, &LaunchConfig::linear(1, 32), &mut counter)
    });
    assert!(nested.is_ok());
    // a failing body ends the capture; the stream works normally afterwards
    let failed = main.capture(|s| {
        clo_advance::launch_on(&advance, s, &LaunchConfig::linear(0, 32), &mut counter)
    });
    assert!(failed.is_err());
    clo_advance::launch(&advance, &LaunchConfig::linear(1, 32), &mut counter).unwrap();
    assert_eq!(dev.download(&counter).unwrap(), [1]);
}

#[test]
fn async_copies_move_ranges_and_refuse_bad_ones() {
    let Some(dev) = device() else { return };
    let n = 4096usize;
    let data: Vec<u32> = Rng::new(9).u32s(n);
    let mut host = dev.pinned::<u32>(n).unwrap();
    host.copy_from_slice(&data);
    let mut d = dev.upload(&vec![0u32; n]).unwrap();
    let mut e = dev.upload(&vec![0u32; n]).unwrap();
    let side = dev.new_stream().unwrap();
    side.copy_htod_async(&host, 100, &mut d, 10, 500).unwrap();
    side.copy_htod_rows(&host, &mut d, &[(0, 1000), (2000, 3000)], 16)
        .unwrap();
    side.copy_dtod_async(&d, 10, &mut e, 0, 500).unwrap();
    let mut back = dev.pinned::<u32>(n).unwrap();
    side.copy_dtoh_async(&e, 0, &mut back, 1, 500).unwrap();
    // host access to pinned memory waits for the copy that writes it
    assert_eq!(&back[1..501], &data[100..600]);
    let got = dev.download(&d).unwrap();
    assert_eq!(&got[1000..1016], &data[0..16]);
    assert_eq!(&got[3000..3016], &data[2000..2016]);
    assert!(side.copy_htod_async(&host, n - 10, &mut d, 0, 11).is_err());
    assert!(side.copy_dtod_async(&d, 0, &mut e, n - 1, 2).is_err());
    assert!(side
        .copy_htod_rows(&host, &mut d, &[(0, 0), (0, n)], 1)
        .is_err());
}
