//! mTLS for HBONE: which certificate the server presents, and the client configuration for a
//! (source identity → destination identity) tunnel.
//!
//! One node proxy serves many identities on one port, so the client names the identity it
//! expects in SNI: `<namespace>.<service-account>.ward` (namespaces contain no dots, so the
//! split is unambiguous). The server presents that identity's certificate only if it holds it
//! — i.e. only if such a workload runs on this node; otherwise the handshake fails.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use ward_lib_identity::tls::{self, SvidServerVerifier};
use ward_lib_identity::{SharedBundle, SpiffeId, TrustDomain};

use crate::certs::CertManager;

const SNI_SUFFIX: &str = ".ward";

/// The SNI a client sends to reach `id`'s workloads.
pub fn sni_for(id: &SpiffeId) -> Option<String> {
    let (ns, sa) = id.service_account()?;
    Some(format!("{ns}.{sa}{SNI_SUFFIX}"))
}

/// The identity named by an SNI, in the local trust domain.
pub fn identity_from_sni(td: &TrustDomain, sni: &str) -> Option<SpiffeId> {
    let rest = sni.strip_suffix(SNI_SUFFIX)?;
    let (ns, sa) = rest.split_once('.')?;
    SpiffeId::for_service_account(td, ns, sa).ok()
}

/// Serves the certificate of the identity named in SNI.
pub struct SniResolver {
    pub certs: Arc<CertManager>,
    pub trust_domain: TrustDomain,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let id = identity_from_sni(&self.trust_domain, hello.server_name()?)?;
        self.certs.get(&id)
    }
}

/// The HBONE server config: TLS 1.3, client SVIDs required, ALPN h2.
pub fn server_config(
    bundle: SharedBundle,
    certs: Arc<CertManager>,
    trust_domain: TrustDomain,
) -> anyhow::Result<rustls::ServerConfig> {
    let mut cfg = tls::server_config(
        bundle,
        Arc::new(SniResolver {
            certs,
            trust_domain,
        }),
        tls::provider(),
        Arc::new(rustls::time_provider::DefaultTimeProvider),
    )?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client config presenting `source` and requiring the server to be `destination`.
pub fn client_config(
    bundle: SharedBundle,
    source: Arc<CertifiedKey>,
    destination: SpiffeId,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = tls::provider();
    let verifier = SvidServerVerifier::expecting(bundle, destination, provider.clone());
    let mut cfg = tls::client_config(
        verifier,
        None,
        provider,
        Arc::new(rustls::time_provider::DefaultTimeProvider),
    )?;
    cfg.client_auth_cert_resolver = Arc::new(ClientCert(source));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A handshake failure in words: the SVID rule that failed when that is the cause.
pub fn handshake_reason(e: &std::io::Error) -> String {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .map(|te| match ward_lib_identity::tls::svid_error(te) {
            Some(svid) => format!("peer certificate refused: {svid}"),
            None => te.to_string(),
        })
        .unwrap_or_else(|| e.to_string())
}

/// A bounded name for why a handshake failed (a metric label): the X509-SVID rule's reason
/// code where one failed, else the kind of TLS failure.
pub fn handshake_reason_code(e: &std::io::Error) -> &'static str {
    let Some(te) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        };
    };
    if let Some(svid) = ward_lib_identity::tls::svid_error(te) {
        return svid.reason_code();
    }
    match te {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(_) => "invalid_certificate",
        rustls::Error::AlertReceived(_) => "alert_received",
        rustls::Error::PeerIncompatible(_) => "peer_incompatible",
        rustls::Error::PeerMisbehaved(_) => "peer_misbehaved",
        rustls::Error::NoApplicationProtocol => "no_application_protocol",
        rustls::Error::InvalidMessage(_) => "invalid_message",
        rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => "unexpected_message",
        rustls::Error::DecryptError => "decrypt_error",
        // The SNI resolver found no identity of this node named by the client's SNI (or the
        // client sent none): rustls reports that as a general error.
        rustls::Error::General(m) if m.contains("no server certificate") => "unknown_sni",
        _ => "tls",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_round_trip() {
        let td = TrustDomain::parse("cluster.local").unwrap();
        let id = SpiffeId::for_service_account(&td, "shop", "web.v2").unwrap();
        let sni = sni_for(&id).unwrap();
        assert_eq!(sni, "shop.web.v2.ward");
        assert_eq!(identity_from_sni(&td, &sni), Some(id));
        assert_eq!(identity_from_sni(&td, "shop.web"), None);
        assert_eq!(identity_from_sni(&td, "Bad_NS.x.ward"), None);
    }
}
