//! Wire protocols between ward components, generated from `proto/`.
//!
//! Message and service definitions, the CA client, and the mesh configuration model shared by
//! the proxy and the control component; no component logic. Protocols: the CA issuing
//! service (`ward.ca.v1`), and the control stream — xDS delta transport
//! (`envoy.service.discovery.v3`) carrying ward's own resources (`ward.control.v1`).
#![forbid(unsafe_code)]

pub mod exposition;

/// `ward.ca.v1`: certificate issuance.
pub mod ca {
    #![allow(missing_docs, clippy::all)] // reason: generated code
    tonic::include_proto!("ward.ca.v1");
}

/// `ward.control.v1`: the resources of the control stream.
pub mod control {
    #![allow(missing_docs, clippy::all)] // reason: generated code
    tonic::include_proto!("ward.control.v1");
}

/// Generated protobuf packages nested as their names are (generated code refers to its
/// neighbours by relative paths).
mod generated {
    pub mod envoy {
        pub mod service {
            pub mod discovery {
                pub mod v3 {
                    #![allow(missing_docs, clippy::all)] // reason: generated code
                    tonic::include_proto!("envoy.service.discovery.v3");
                }
            }
        }
    }
    pub mod google {
        pub mod rpc {
            #![allow(missing_docs, clippy::all)] // reason: generated code
            tonic::include_proto!("google.rpc");
        }
        pub mod protobuf {
            #![allow(missing_docs, clippy::all)] // reason: generated code
            tonic::include_proto!("google.protobuf");
        }
    }
}

/// `envoy.service.discovery.v3`: the xDS delta transport (the subset ward speaks).
pub use generated::envoy::service::discovery::v3 as xds;

/// The control component's side of the same service, whose responses carry pre-encoded
/// resources (`ads_server.proto`: wire-identical to [`xds`]).
pub mod xds_server {
    #![allow(missing_docs, clippy::all)] // reason: generated code
    include!(concat!(
        env!("OUT_DIR"),
        "/server/envoy.service.discovery.v3.rs"
    ));
}
/// `google.protobuf.Any` (with a shared `Bytes` value).
pub use generated::google::protobuf::Any;
/// `google.rpc.Status`, the NACK detail of xDS.
pub use generated::google::rpc;

pub mod ca_client;
pub mod config;
pub mod resources;
pub mod table;
