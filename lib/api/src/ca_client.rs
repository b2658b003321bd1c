//! Client side of `ward.ca.v1`: generate a key in memory, send only a CSR, get an SVID back;
//! and the SVID-verified gRPC channel every ward client (CA, control stream) dials with.
//!
//! The CA's serving certificate is verified as an SVID against the caller's trust bundle and
//! must carry the expected CA SPIFFE ID; DNS names play no part.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Channel, Endpoint};
use ward_lib_identity::tls::{self, SvidServerVerifier};
use ward_lib_identity::{SharedBundle, SpiffeId};

use crate::ca::certificate_service_client::CertificateServiceClient;
use crate::ca::IssueRequest;

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("connecting to the CA at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("generating a key and CSR: {0}")]
    Key(String),
    #[error("CA refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("CA answer is unusable: {0}")]
    BadAnswer(String),
}

/// A workload certificate with its in-memory private key.
pub struct IssuedSvid {
    pub id: SpiffeId,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_after_unix: i64,
}

impl std::fmt::Debug for IssuedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("IssuedSvid")
            .field("id", &self.id)
            .field("chain_len", &self.chain.len())
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct CaClient {
    inner: CertificateServiceClient<Channel>,
    token: Arc<str>,
}

impl CaClient {
    /// Connects lazily: the first call dials. `token` is sent as `authorization: Bearer`.
    pub fn new(
        addr: SocketAddr,
        bundle: SharedBundle,
        ca_id: SpiffeId,
        token: &str,
        timeout: Duration,
    ) -> Result<Self, CaClientError> {
        let channel = svid_channel(addr, bundle, ca_id, Some(timeout))?;
        Ok(Self {
            inner: CertificateServiceClient::new(channel),
            token: token.into(),
        })
    }

    /// Sends a raw request (for tests of hostile input); most callers want [`Self::issue`].
    pub async fn issue_raw(
        &mut self,
        req: IssueRequest,
    ) -> Result<crate::ca::IssueResponse, tonic::Status> {
        let mut request = tonic::Request::new(req);
        let value = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("token is not valid header text"))?;
        request.metadata_mut().insert("authorization", value);
        self.inner.issue(request).await.map(|r| r.into_inner())
    }

    /// Generates a P-256 key, sends its CSR, and returns the certificate with the key.
    pub async fn issue(
        &mut self,
        namespace: &str,
        service_account: &str,
        ttl: Option<Duration>,
    ) -> Result<IssuedSvid, CaClientError> {
        let (key, csr) = new_key_and_csr()?;
        let resp = self
            .issue_raw(IssueRequest {
                csr_der: csr,
                namespace: namespace.into(),
                service_account: service_account.into(),
                ttl_seconds: ttl.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
            })
            .await
            .map_err(|s| CaClientError::Refused {
                code: s.code(),
                message: s.message().to_owned(),
            })?;
        let id = SpiffeId::parse(&resp.spiffe_id)
            .map_err(|e| CaClientError::BadAnswer(format!("spiffe_id: {e}")))?;
        if resp.chain_der.is_empty() {
            return Err(CaClientError::BadAnswer("empty certificate chain".into()));
        }
        Ok(IssuedSvid {
            id,
            chain: resp
                .chain_der
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            key,
            roots: resp
                .roots_der
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            not_after_unix: resp.not_after_unix,
        })
    }
}

/// A lazily connecting gRPC channel over TLS 1.3 to `addr`, whose server must present an
/// X509-SVID for exactly `server_id`, verified against `bundle` (read at every handshake, so
/// bundle updates apply to the next connection). `timeout` bounds each request; streams pass
/// `None`.
pub fn svid_channel(
    addr: SocketAddr,
    bundle: SharedBundle,
    server_id: SpiffeId,
    timeout: Option<Duration>,
) -> Result<Channel, CaClientError> {
    let provider = tls::provider();
    let verifier = SvidServerVerifier::expecting(bundle, server_id, provider.clone());
    let mut cfg = tls::client_config(
        verifier,
        None,
        provider,
        Arc::new(rustls::time_provider::DefaultTimeProvider),
    )
    .map_err(|e| CaClientError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| CaClientError::Connect {
            addr,
            reason: e.to_string(),
        })?
        .connect_timeout(timeout.unwrap_or(Duration::from_secs(5)));
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                // The name is not checked (the verifier checks the SPIFFE ID) but SNI needs one.
                let name = ServerName::try_from("ward.invalid")
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        })),
    )
}

/// A fresh ECDSA P-256 key (PKCS#8) and a CSR for it with an empty subject: the CA decides
/// the identity, so the CSR carries no names.
pub fn new_key_and_csr() -> Result<(PrivateKeyDer<'static>, Vec<u8>), CaClientError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaClientError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CaClientError::Key(e.to_string()))?;
    Ok((
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        csr.der().to_vec(),
    ))
}
