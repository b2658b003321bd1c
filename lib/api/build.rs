//! Generates the gRPC code from `proto/` with a vendored `protoc`, so a fresh machine needs no
//! system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC from the env.
    std::env::set_var("PROTOC", protoc);
    let include = protoc_bin_vendored::include_path()?;
    let include = include.to_str().ok_or("protoc include path is not UTF-8")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Maps encode in key order, so a resource's bytes (and its content-hash version) are
        // the same on every replica.
        .btree_map(".")
        // The control stream's `Any` payloads are shared, pre-encoded `Bytes` (one encoding
        // of a resource serves every proxy), hence a local copy of the well-known types.
        .compile_well_known_types(true)
        .bytes(".google.protobuf.Any")
        .compile_protos(
            &[
                "proto/ward/ca/v1/ca.proto",
                "proto/ward/control/v1/control.proto",
                "proto/envoy/service/discovery/v3/ads.proto",
            ],
            &["proto", include],
        )?;
    // The server's pre-encoded view of the same messages (see ads_server.proto).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("server");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&out)
        .btree_map(".")
        .bytes(".envoy.service.discovery.v3.DeltaDiscoveryResponse.resources")
        .extern_path(".google.rpc", "crate::rpc")
        .compile_protos(
            &["proto/envoy/service/discovery/v3/ads_server.proto"],
            &["proto", include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
