//! The control component's network edge: one TLS 1.3 port (15012, as istiod) serving both
//! the issuing CA (`ward.ca.v1`) and the control stream (xDS delta), with the control
//! component's own SVID (`ward-system/ward-control`), which proxies require.
//!
//! The limits are the CA's (`ward_ca::server`): connection cap, handshake and request
//! time-outs (streams exempt), header and message limits. A connection lives at most
//! `max_connection_age` (30 min): the proxy reconnects and resumes with the versions it holds,
//! which re-authenticates it (projected tokens expire) and rebalances proxies across replicas.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ward_ca::authority::Authority;
use ward_ca::clock::Clock;
use ward_ca::server::{ServerOptions, ServingCert};
use ward_ca::service::IssuerService;
use ward_lib_api::xds_server::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use ward_lib_identity::SpiffeId;

use crate::xds::XdsServer;

/// Lifetime of the control component's serving certificate.
pub const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);

/// A serving certificate for `id` (and `dns_names`, for clients that verify by name), renewed
/// at half-life and whenever the signing authority changes.
pub fn serving_cert(
    authority: Arc<ArcSwap<Authority>>,
    id: SpiffeId,
    dns_names: Vec<String>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<ServingCert>> {
    let cert = ServingCert::issue_with_dns_names(
        &authority.load(),
        &id,
        dns_names,
        SERVING_TTL,
        clock.as_ref(),
    )
    .map_err(|e| anyhow::anyhow!("issuing the control component's certificate: {e}"))?;
    let renew = cert.clone();
    tokio::spawn(async move {
        let mut signer = authority.load_full();
        let mut due = tokio::time::Instant::now() + SERVING_TTL / 2;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let current = authority.load_full();
            let rotated = !Arc::ptr_eq(&signer, &current);
            if !rotated && tokio::time::Instant::now() < due {
                continue;
            }
            match renew.renew_now(&current, &id, SERVING_TTL, clock.as_ref()) {
                Ok(()) => {
                    signer = current;
                    due = tokio::time::Instant::now() + SERVING_TTL / 2;
                    tracing::info!(rotated, "serving certificate renewed");
                }
                Err(e) => tracing::error!(error = %e, "renewing the serving certificate"),
            }
        }
    });
    Ok(cert)
}

/// Serves the CA and the control stream on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cert: Arc<ServingCert>,
    issuer: IssuerService,
    xds: XdsServer,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let tls = ward_ca::server::tls_config(cert).map_err(|e| anyhow::anyhow!(e))?;
    let opts = ServerOptions {
        streaming_paths: vec!["/envoy.service.discovery.v3.AggregatedDiscoveryService/"],
        max_connection_age: Duration::from_secs(30 * 60),
        ..ServerOptions::default()
    };
    let routes = tonic::service::Routes::new(ward_ca::server::issuer_grpc(issuer, &opts))
        .add_service(
            AggregatedDiscoveryServiceServer::new(xds)
                // A resuming proxy lists every resource it holds.
                .max_decoding_message_size(16 * 1024 * 1024)
                .max_encoding_message_size(512 * 1024 * 1024),
        );
    ward_ca::server::serve_grpc(listener, tls, routes, opts, shutdown).await;
    Ok(())
}
