//! ward's control component.
//!
//! Layers: sources ([`k8s`] — kube-rs watchers on the API server; [`local`] — the mesh file
//! and policy files) turn objects into the protocol-neutral [`model`] and feed one
//! [`index::Index`] through a channel; the index computes per-node views incrementally and
//! publishes immutable [`index::View`]s; [`xds`] streams each proxy the view of its own node
//! (xDS delta: versions, nonces, ACK/NACK, resumption); [`ca`] hosts the issuing CA, binding
//! identities to nodes from the same views; [`server`] is the TLS + gRPC edge both share;
//! [`status`] writes policy status and Events (the Lease holder only); [`webhook`] is the
//! validating admission webhook; [`runtime`] wires it together for `main`.
//!
//! Never: serve a view before every source has delivered its initial state, let one bad
//! object affect another, or send a proxy anything of another node's local view.
#![forbid(unsafe_code)]

pub mod ca;
pub mod index;
pub mod k8s;
pub mod local;
pub mod metrics;
pub mod model;
pub mod policies;
pub mod runtime;
pub mod server;
pub mod status;
pub mod webhook;
pub mod xds;
