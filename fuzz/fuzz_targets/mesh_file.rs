//! The mesh file (local mode): arbitrary YAML through parsing and validation into a snapshot,
//! with a real trust bundle and policy text from the same input. No panic; errors are values.
//! (A malformed bundle is the CA's and identity crate's parser: the `svid` target.)
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use ward_lib_api::config::{MeshFile, Snapshot};

fuzz_target!(|data: &[u8]| {
    // The mesh file, then (after a NUL byte) a policy file.
    let mut parts = data.splitn(2, |&b| b == 0);
    let (Ok(mesh), Ok(policy)) = (
        std::str::from_utf8(parts.next().unwrap_or_default()),
        std::str::from_utf8(parts.next().unwrap_or_default()),
    ) else {
        return;
    };
    let Ok(file) = MeshFile::parse(mesh, "mesh.yaml") else {
        return;
    };
    let _ = Snapshot::build(
        file,
        common::root_pem(),
        &[("policies/fuzz.yaml".into(), policy.to_owned())],
        "fuzz".into(),
    );
});
