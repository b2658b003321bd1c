//! Wire protocols between ward components, generated from `proto/`.
//!
//! Only message and service definitions live here; no component logic. The CA issuing service
//! (`ward.ca.v1`) is the first; the control stream joins it.
#![forbid(unsafe_code)]

/// `ward.ca.v1`: certificate issuance.
pub mod ca {
    #![allow(missing_docs, clippy::all)] // reason: generated code
    tonic::include_proto!("ward.ca.v1");
}

pub mod ca_client;
