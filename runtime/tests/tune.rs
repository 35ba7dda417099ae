//! The autotuner without a GPU: a deterministic fake timer stands in for the device, so the
//! search, pruning, dropped candidates, output checks, the store and bucketed lookups are
//! tested in CI.

use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_runtime::tune::{table, tune, Point, Space, Store, TuneKey, TuneOptions};

fn quiet() -> TuneOptions {
    TuneOptions {
        progress: false,
        force: false,
    }
}

fn temp_store(tag: &str) -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("kiln-tune-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    (Store::in_dir(Some(&dir)), dir)
}

/// Fake time: fastest at 256 threads and 8 blocks per SM.
fn fake_ms(p: &Point) -> f64 {
    1.0 + ((p.get("threads") - 256).abs() as f64) / 256.0
        + ((p.get("per_sm") - 8).abs() as f64) / 8.0
}

#[test]
fn finds_the_fastest_candidate_prunes_and_drops_with_reasons() {
    let (store, dir) = temp_store("search");
    let space = Space::new()
        .dim("threads", &[64, 128, 256, 512, 1024, 2048])
        .dim("per_sm", &[1, 2, 4, 8, 16])
        .constraint("at most 1024 threads per block", |p| {
            p.get("threads") <= 1024
        });
    let key = TuneKey::new("copy<f32>", "Fake GPU", "sm_90", &[1000, 3]);
    let compiled = AtomicUsize::new(0);
    let entry = tune(
        &key,
        &space,
        &store,
        &quiet(),
        |p| {
            compiled.fetch_add(1, Ordering::Relaxed);
            if p.get("threads") == 512 && p.get("per_sm") == 16 {
                Err("too many registers".to_string())
            } else {
                Ok(p.clone())
            }
        },
        |p, _| {
            if p.get("threads") == 1024 {
                Err("launch failed: out of resources".into())
            } else {
                Ok((fake_ms(p), Some(42u32)))
            }
        },
        |a, b| {
            if a == b {
                Ok(())
            } else {
                Err("differs".into())
            }
        },
    )
    .unwrap();
    assert_eq!(entry.winner.get("threads"), 256);
    assert_eq!(entry.winner.get("per_sm"), 8);
    assert_eq!(
        compiled.load(Ordering::Relaxed),
        25,
        "pruned points are never compiled"
    );
    let reasons: Vec<&String> = entry
        .trials
        .iter()
        .filter_map(|t| t.outcome.as_ref().err())
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| r.starts_with("pruned")).count(),
        5
    );
    assert!(reasons.iter().any(|r| r.contains("too many registers")));
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("out of resources"))
            .count(),
        5
    );
    let text = table(&entry);
    assert!(
        text.contains("<- winner") && text.contains("dropped: pruned"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn wrong_outputs_are_dropped() {
    let (store, dir) = temp_store("check");
    let space = Space::new().dim("unroll", &[1, 2, 4]);
    let key = TuneKey::new("sum", "Fake GPU", "sm_90", &[64]);
    let entry = tune(
        &key,
        &space,
        &store,
        &quiet(),
        |p| Ok(p.clone()),
        // unroll=4 is fastest but computes a different result
        |p, _| {
            Ok((
                10.0 / p.get("unroll") as f64,
                Some(if p.get("unroll") == 4 { 7 } else { 6 }),
            ))
        },
        |a: &i32, b: &i32| {
            if a == b {
                Ok(())
            } else {
                Err(format!("{b} != {a}"))
            }
        },
    )
    .unwrap();
    assert_eq!(entry.winner.get("unroll"), 2);
    assert!(entry.trials.iter().any(|t| t
        .outcome
        .as_ref()
        .is_err_and(|e| e.contains("wrong output"))));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_store_is_reused_for_sizes_in_the_same_bucket() {
    let (store, dir) = temp_store("store");
    let space = Space::new().dim("threads", &[128, 256]);
    let key = TuneKey::new("k", "Fake GPU", "sm_90", &[1000]);
    let runs = AtomicUsize::new(0);
    let measure = |p: &Point, _: &Point| {
        runs.fetch_add(1, Ordering::Relaxed);
        Ok((p.get("threads") as f64, None::<()>))
    };
    let first = tune(
        &key,
        &space,
        &store,
        &quiet(),
        |p| Ok(p.clone()),
        measure,
        |_, _| Ok(()),
    )
    .unwrap();
    assert_eq!(runs.load(Ordering::Relaxed), 2);
    // 1000 and 1020 fall in the same power-of-two bucket: no new search
    let same_bucket = TuneKey::new("k", "Fake GPU", "sm_90", &[1020]);
    assert_eq!(same_bucket, key);
    let again = tune(
        &same_bucket,
        &space,
        &store,
        &quiet(),
        |p| Ok(p.clone()),
        measure,
        |_, _| Ok(()),
    )
    .unwrap();
    assert_eq!(again, first);
    assert_eq!(runs.load(Ordering::Relaxed), 2);
    // another bucket, another device or another arch search again
    assert!(store
        .lookup(&TuneKey::new("k", "Fake GPU", "sm_90", &[5000]))
        .is_none());
    assert!(store
        .lookup(&TuneKey::new("k", "Other GPU", "sm_90", &[1000]))
        .is_none());
    // a fresh store object reads the file back
    assert_eq!(Store::in_dir(Some(&dir)).entries().len(), 1);
    // a corrupt store is treated as empty, not as an error
    std::fs::write(dir.join("tune.json"), b"{ not json").unwrap();
    assert!(store.lookup(&key).is_none());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_search_where_nothing_runs_is_an_error_naming_the_reasons() {
    let (store, dir) = temp_store("none");
    let space = Space::new()
        .dim("threads", &[2048])
        .constraint("at most 1024 threads", |p| p.get("threads") <= 1024);
    let err = tune(
        &TuneKey::new("k", "Fake", "sm_90", &[1]),
        &space,
        &store,
        &quiet(),
        |p| Ok(p.clone()),
        |_, _| Ok((1.0, None::<()>)),
        |_, _| Ok(()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("at most 1024 threads"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
