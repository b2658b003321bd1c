//! ward's issuing CA.
//!
//! Layers, bottom up: [`csr`] turns untrusted CSR bytes into a verified public key;
//! [`authority`] signs X509-SVIDs for CA-decided SPIFFE IDs; [`auth`] and [`tokenreview`] answer
//! "who is asking" (which node); [`directory`] answers "is this identity scheduled on that node";
//! [`service`] ties them together per request with a rate limit and an audit line; [`server`]
//! is the TLS + gRPC accept loop with time-outs and limits.
//!
//! The CA never trusts what a requester says about itself: the node comes from an
//! authenticated credential, the identity must be scheduled on that node, and names inside the
//! CSR are never read.
#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;

pub mod auth;
pub mod authority;
pub mod clock;
pub mod csr;
pub mod directory;
pub mod ratelimit;
pub mod server;
pub mod service;
pub mod tokenreview;

/// A boxed, sendable future (the CA's traits are object-safe so modes are chosen at run time).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
