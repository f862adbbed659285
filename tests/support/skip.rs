//! The one rule for a test that cannot run on this host, included with
//! `#[path]` by every crate's tests: it prints `SKIPPED: <reason>` and
//! passes, unless `SKERRY_E2E_REQUIRED=1` (scripts/test.sh sets it), where a
//! skip is a failure. Any other value than `1`, `0` or empty is refused, so a
//! typo cannot turn required tests into silent skips.

/// Whether every test must run here (`SKERRY_E2E_REQUIRED=1`).
pub fn required() -> bool {
    match std::env::var("SKERRY_E2E_REQUIRED") {
        Err(_) => false,
        Ok(v) if v == "1" => true,
        Ok(v) if v.is_empty() || v == "0" => false,
        Ok(v) => panic!("SKERRY_E2E_REQUIRED={v:?}: expected 1 (or 0)"),
    }
}

/// Skips the calling test for `reason`, printing it, or fails it when every
/// test is required; the caller returns after it.
pub fn skip(reason: &str) {
    if required() {
        panic!("required test cannot run: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}
