//! Compile-fail suite for the Kiln language.
//!
//! Every file in `tests/ui/` is a tiny complete program whose one `#[kernel]` or `#[device]`
//! function uses one construct Kiln rejects. This test proves that each of those programs
//! fails to build, and — by comparing against the `.stderr` file next to it — that the error
//! is the intended one: reported at the offending span (not at the macro or the whole
//! function), with a message that names the construct and a `= hint:` saying what to write
//! instead. It also proves the front end never panics on these inputs (a panic would surface
//! as an "internal error" and fail the comparison).
//!
//! Regenerate the expected output with
//! `TRYBUILD=overwrite cargo test --release --test compile_fail`, then review every diff.

#[test]
fn dsl_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
