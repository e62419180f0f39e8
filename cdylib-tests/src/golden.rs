//! Golden outputs (`cdylib-tests/golden/`), refreshed with PORTRANGE_BLESS=1.

use std::path::Path;

/// Compare `actual` with `cdylib-tests/golden/<name>`; with `PORTRANGE_BLESS=1` the file is
/// (re)written instead. Mask host-specific parts before calling.
#[track_caller]
pub fn assert_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden").join(name);
    if std::env::var_os("PORTRANGE_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e} (PORTRANGE_BLESS=1 writes it)", path.display()));
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .map(Some)
            .chain(std::iter::repeat(None))
            .zip(actual.lines().map(Some).chain(std::iter::repeat(None)))
            .take_while(|(a, b)| a.is_some() || b.is_some())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| {
                format!(
                    "line {}:\n  golden: {}\n  actual: {}",
                    i + 1,
                    a.unwrap_or("<none>"),
                    b.unwrap_or("<none>")
                )
            })
            .collect();
        panic!(
            "output differs from {} (PORTRANGE_BLESS=1 rewrites it if the change is intended):\n{}\n--- actual ---\n{actual}",
            path.display(),
            diff.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
