//! End-to-end tests in network namespaces: real interception, real proxies, real TLS.
//! They need root; CI runs as root. One cluster at a time (see `SERIAL`).
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

mod clientaddr;
mod control;
mod datapath;
mod demo;
mod dualstack;
mod hostile;
mod interop;
mod l7;
mod lifecycle;
mod metrics;
mod policy;
mod rotation;

use ward_tests::PodSpec;

/// The standard 2 nodes × 2 pods: a client and a web server on each node.
pub fn two_by_two() -> Vec<PodSpec> {
    vec![
        PodSpec {
            name: "client-1",
            node: 1,
            namespace: "shop",
            service_account: "client",
            labels: &[("app", "client")],
        },
        PodSpec {
            name: "web-1",
            node: 1,
            namespace: "shop",
            service_account: "web",
            labels: &[("app", "web")],
        },
        PodSpec {
            name: "client-2",
            node: 2,
            namespace: "other",
            service_account: "tool",
            labels: &[("app", "tool")],
        },
        PodSpec {
            name: "web-2",
            node: 2,
            namespace: "shop",
            service_account: "web",
            labels: &[("app", "web")],
        },
    ]
}
