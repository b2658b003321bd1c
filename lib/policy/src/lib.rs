//! ward's authorization policy engine: Istio's `AuthorizationPolicy` (served as
//! `security.ward.dev/v1`; `security.istio.io/v1` and `v1beta1` accepted), validated, indexed
//! by workload, and evaluated per connection and per HTTP request.
//!
//! No I/O, no clock, no Kubernetes types: callers pass documents as text and the time as a
//! value. Layers: [`raw`] (wire form) → [`compile`] (validation, fail-closed rewrites) →
//! [`model`] (compiled) → [`index`] (which policies apply to a workload) → [`eval`] (decision).
//! [`path`] owns request-path normalization, shared with the proxy's L7 path; [`request`] is
//! the JSON request form of `ward policy eval`; [`testfile`] is the `ward policy test` format.
#![forbid(unsafe_code)]

pub mod compile;
pub mod eval;
pub mod explain;
pub mod index;
pub mod matcher;
pub mod model;
pub mod path;
pub mod raw;
pub mod request;
pub mod testfile;
pub mod timewindow;

pub use compile::{parse_documents, Document, PolicyError, TrustConfig};
pub use eval::{Attributes, Decision, PeerIdentity, Protocol};
pub use index::{PolicySet, WorkloadPolicies, DEFAULT_ROOT_NAMESPACE};
pub use model::{Action, MtlsMode, Policy, PolicyRef};
