//! rustls configuration for ward's mTLS: TLS 1.3 only, SVIDs both ways.
//!
//! [`SvidClientVerifier`] is used by servers (it verifies clients) and always requires a client
//! certificate. [`SvidServerVerifier`] is used by clients; it ignores DNS names entirely and
//! instead requires the server's SPIFFE ID to be the one expected for the destination. Both
//! read the trust bundle through a [`SharedBundle`] snapshot per handshake, so bundle rotation
//! applies to the next handshake without rebuilding configs.
//!
//! Errors carry the [`SvidError`] inside `rustls::Error::InvalidCertificate(Other(..))`, so
//! a failed handshake's error names the SVID rule that failed.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};

use crate::bundle::SharedBundle;
use crate::spiffe_id::SpiffeId;
use crate::svid::{self, PeerRole, SvidError};

/// The crypto provider ward uses everywhere: *ring* (ECDSA P-256 certificates, AES-GCM and
/// ChaCha20 suites, randomness) with one key-exchange group from aws-lc-rs, the hybrid
/// post-quantum X25519MLKEM768, offered and preferred first — so tunnels between ward proxies
/// are safe against "record now, decrypt later" — then *ring*'s X25519 and P-256 for peers
/// without it (older Envoys). *ring* has no ML-KEM; taking only that group from aws-lc keeps
/// the rest of the handshake and every record on the code that was already resident (the
/// proxy's idle memory is mostly its touched text).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::{aws_lc_rs, ring};
    let mut provider = ring::default_provider();
    provider.kx_groups = vec![
        aws_lc_rs::kx_group::X25519MLKEM768,
        ring::kx_group::X25519,
        ring::kx_group::SECP256R1,
    ];
    Arc::new(provider)
}

/// Verifies client certificates as X509-SVIDs; a client certificate is mandatory.
#[derive(Debug)]
pub struct SvidClientVerifier {
    bundle: SharedBundle,
    provider: Arc<CryptoProvider>,
}

impl SvidClientVerifier {
    pub fn new(bundle: SharedBundle, provider: Arc<CryptoProvider>) -> Self {
        Self { bundle, provider }
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // SVID clients pick their certificate by identity, not by issuer name.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.bundle.load();
        svid::verify_svid_parts(end_entity, intermediates, &bundle, now, PeerRole::Client)
            .map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies a server's certificate as an X509-SVID and, when `expected` is set, requires that
/// exact SPIFFE ID. The TLS server name is not consulted: identity is the SPIFFE ID.
#[derive(Debug)]
pub struct SvidServerVerifier {
    bundle: SharedBundle,
    expected: Option<SpiffeId>,
    provider: Arc<CryptoProvider>,
}

impl SvidServerVerifier {
    /// A verifier that requires the server to be `expected`.
    pub fn expecting(
        bundle: SharedBundle,
        expected: SpiffeId,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            bundle,
            expected: Some(expected),
            provider,
        }
    }

    /// A verifier that accepts any valid SVID of a trusted domain. Only for callers that check
    /// the peer's identity themselves after the handshake (e.g. `ward` diagnostics).
    pub fn any_identity(bundle: SharedBundle, provider: Arc<CryptoProvider>) -> Self {
        Self {
            bundle,
            expected: None,
            provider,
        }
    }
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = self.bundle.load();
        let verified =
            svid::verify_svid_parts(end_entity, intermediates, &bundle, now, PeerRole::Server)
                .map_err(to_rustls)?;
        if let Some(expected) = &self.expected {
            svid::require_identity(&verified, expected).map_err(to_rustls)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Builds a TLS 1.3-only server config that requires client SVIDs.
pub fn server_config(
    bundle: SharedBundle,
    certs: Arc<dyn rustls::server::ResolvesServerCert>,
    provider: Arc<CryptoProvider>,
    time: Arc<dyn rustls::time_provider::TimeProvider>,
) -> Result<ServerConfig, rustls::Error> {
    let verifier = Arc::new(SvidClientVerifier::new(bundle, provider.clone()));
    let mut cfg = ServerConfig::builder_with_details(provider, time)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    // No resumption: every connection proves a current SVID against the current bundle (a
    // resumed session would carry an identity verified under an older bundle), and unused
    // tickets cost a flight and CPU on every handshake.
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}

/// Builds a TLS 1.3-only client config that presents `client_cert` and verifies the server
/// with `verifier`.
pub fn client_config(
    verifier: SvidServerVerifier,
    client_cert: Option<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
    time: Arc<dyn rustls::time_provider::TimeProvider>,
) -> Result<ClientConfig, rustls::Error> {
    let builder = ClientConfig::builder_with_details(provider, time)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match client_cert {
        Some(ck) => builder.with_client_cert_resolver(Arc::new(SingleCert(ck))),
        None => builder.with_no_client_auth(),
    };
    // See `server_config`: no resumption, full verification on every connection.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// A certificate chain and its private key, loaded for rustls.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    Ok(Arc::new(CertifiedKey::from_der(chain, key, provider)?))
}

/// Serves one certificate regardless of SNI / issuer hints.
#[derive(Debug)]
pub struct SingleCert(pub Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for SingleCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The SPIFFE ID of the peer of a finished handshake whose config used a verifier from this
/// module (so the chain has already passed every SVID rule).
pub fn peer_identity(conn: &rustls::CommonState) -> Option<SpiffeId> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| svid::spiffe_id_of(leaf).ok())
}

/// Recovers the SVID rule failure from a rustls handshake error, if that is what it was.
pub fn svid_error(err: &rustls::Error) -> Option<&SvidError> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<SvidError>()
        }
        _ => None,
    }
}

fn to_rustls(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn tls12_refused() -> rustls::Error {
    // Unreachable with the TLS 1.3-only configs below; kept fail-closed regardless.
    rustls::Error::General("TLS 1.2 is not supported: ward speaks TLS 1.3 only".into())
}
