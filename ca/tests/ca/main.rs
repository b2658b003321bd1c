//! The issuing CA end to end on loopback: real TLS, real gRPC, real HTTP for TokenReview.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

mod authority;
mod fake_apiserver;
mod harness;
mod hostile;
mod issuance;
mod tokenreview;
