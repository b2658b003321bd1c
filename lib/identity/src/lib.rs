//! Workload identity for ward: SPIFFE IDs, trust bundles, X509-SVID verification, and the
//! rustls verifiers every mTLS handshake in ward uses.
//!
//! This crate does no I/O and reads no clock: callers pass the current time in, so certificate
//! expiry is testable and the same rules hold in the proxy, the CA and the CLI.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod spiffe_id;
pub mod svid;
pub mod tls;

pub use bundle::{SharedBundle, TrustBundle};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{PeerRole, SvidError, SvidRule, VerifiedSvid};
