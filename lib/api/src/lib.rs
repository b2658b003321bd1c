//! Wire protocols between ward components, generated from `proto/`.
//!
//! Message and service definitions, the CA client, and the mesh configuration model shared by
//! the proxy (local mode) and the control component; no component logic. The CA issuing
//! service (`ward.ca.v1`) is the first protocol; the control stream joins it.
#![forbid(unsafe_code)]

/// `ward.ca.v1`: certificate issuance.
pub mod ca {
    #![allow(missing_docs, clippy::all)] // reason: generated code
    tonic::include_proto!("ward.ca.v1");
}

pub mod ca_client;
pub mod config;
