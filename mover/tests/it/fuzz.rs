//! The fuzz corpus (`fuzz/corpus/<target>/`) and every crash the fuzzers found
//! (`fuzz/artifacts/<target>/`) replayed through the same harnesses the fuzz targets run
//! (`cdi_mover::fuzzing`): no cargo-fuzz needed, and a crash fixed once stays fixed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use cdi_mover::fuzzing::HARNESSES;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_crash_input_is_answered_without_a_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    let mut panicked = Vec::new();
    for (name, harness) in HARNESSES {
        let files = [fuzz.join("corpus").join(name), fuzz.join("artifacts").join(name)].map(|d| inputs(&d));
        assert!(!files[0].is_empty(), "fuzz target {name} has no committed corpus");
        for file in files.iter().flatten() {
            let data = std::fs::read(file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| harness(&data))).is_err() {
                panicked.push(file.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(panicked.is_empty(), "harnesses panicked on: {panicked:#?}");
    eprintln!("replayed {replayed} fuzz inputs");
}
