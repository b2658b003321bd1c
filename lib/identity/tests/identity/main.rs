//! Tests of SVID rules and mTLS handshakes with certificates generated in the test.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

mod certs;
mod handshake;
mod rules;
