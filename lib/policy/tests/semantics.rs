//! Table-driven semantic cases, written in the `ward policy test` format under
//! `tests/semantics/`: every file's cases must pass, and together they must cover at least 150
//! cases.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

use ward_lib_policy::testfile::TestFile;
use ward_lib_policy::PolicySet;

#[test]
fn semantic_cases() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/semantics");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let now = "2026-11-23T10:00:00Z".parse().unwrap();
    let mut total = 0;
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let tf = TestFile::parse(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let docs = tf.inline_documents().unwrap();
        let set = PolicySet::parse(
            tf.root_namespace(),
            tf.trust(),
            [(name.as_str(), docs.as_str())],
        )
        .unwrap_or_else(|e| panic!("{name}: {e:#?}"));
        for r in tf.run(&set, now) {
            total += 1;
            if let Some(why) = r.failure {
                failures.push(format!("{name}: {}: {why}", r.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total >= 150, "only {total} semantic cases");
    println!("{total} semantic cases passed");
}
