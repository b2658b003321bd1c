//! Kubernetes-mode authentication: the proxy's projected service-account token, validated by the
//! API server's TokenReview API.
//!
//! The token must be (1) authenticated by the API server, (2) for the CA's audience, (3) a token
//! of one of the allowed proxy service accounts, and (4) bound to a pod on a node: the API server
//! reports the node in `status.user.extra["authentication.kubernetes.io/node-name"]` for
//! pod-bound tokens. The node is therefore an API-server fact, not a requester claim.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, Authenticator, Requester};
use crate::BoxFuture;

/// The user-extra key that carries the node of a pod-bound service-account token.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// Largest TokenReview response read.
const MAX_RESPONSE: usize = 256 * 1024;

/// How to reach the API server and what to accept.
#[derive(Debug, Clone)]
pub struct TokenReviewConfig {
    /// Base URL, e.g. `https://kubernetes.default.svc`.
    pub api_server: String,
    /// PEM roots for the API server's serving certificate (`None`: plain HTTP, tests only).
    pub ca_pem: Option<String>,
    /// Where the CA's own credential for the API server is read from on every call (projected
    /// tokens rotate on disk).
    pub credential_path: Option<std::path::PathBuf>,
    /// Audience the proxy tokens must be minted for.
    pub audience: String,
    /// `namespace/name` of service accounts allowed to request certificates.
    pub allowed_service_accounts: Vec<String>,
    pub timeout: Duration,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct TokenReview {
    config: TokenReviewConfig,
    client: HttpsClient,
    allowed_users: Vec<String>,
}

impl TokenReview {
    pub fn new(config: TokenReviewConfig) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = &config.ca_pem {
            let certs = ward_lib_identity::bundle::parse_pem_certs(pem)
                .map_err(|e| format!("API server CA: {e}"))?;
            for c in certs {
                roots.add(c).map_err(|e| format!("API server CA: {e}"))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(ward_lib_identity::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        // Without a CA file only plain http:// is usable (tests); with one, https is required.
        let builder = if config.ca_pem.is_some() {
            builder.https_only()
        } else {
            builder.https_or_http()
        };
        let connector = builder.enable_http1().build();
        let allowed_users = service_account_users(&config.allowed_service_accounts)?;
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            config,
            allowed_users,
        })
    }

    async fn review(&self, token: &str) -> Result<TokenReviewStatus, AuthError> {
        let body = serde_json::to_vec(&TokenReviewRequest {
            api_version: "authentication.k8s.io/v1",
            kind: "TokenReview",
            spec: Spec {
                token,
                audiences: vec![&self.config.audience],
            },
        })
        .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let url = format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            self.config.api_server.trim_end_matches('/')
        );
        let mut req = http::Request::post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json");
        if let Some(path) = &self.config.credential_path {
            let cred = std::fs::read_to_string(path)
                .map_err(|e| AuthError::Unavailable(format!("reading {}: {e}", path.display())))?;
            req = req.header("authorization", format!("Bearer {}", cred.trim()));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| AuthError::Unavailable(format!("TokenReview request: {e}")))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| AuthError::Unavailable(format!("TokenReview response: {e}")))?
                .to_bytes();
            if !status.is_success() {
                return Err(AuthError::Unavailable(format!(
                    "TokenReview returned HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                )));
            }
            let parsed: TokenReviewResponse = serde_json::from_slice(&bytes)
                .map_err(|e| AuthError::Unavailable(format!("TokenReview response: {e}")))?;
            Ok(parsed.status.unwrap_or_default())
        };
        tokio::time::timeout(self.config.timeout, call)
            .await
            .map_err(|_| AuthError::Unavailable("TokenReview timed out".into()))?
    }
}

impl Authenticator for TokenReview {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Requester, AuthError>> {
        Box::pin(async move {
            let status = self.review(token).await?;
            let user = status.user.unwrap_or_default();
            check_review(
                ReviewOutcome {
                    authenticated: status.authenticated,
                    audiences: status.audiences,
                    error: status.error,
                    username: user.username,
                    extra: user.extra,
                },
                &self.config.audience,
                &self.allowed_users,
            )
        })
    }
}

/// What a TokenReview answered, however it was asked.
#[derive(Debug, Clone, Default)]
pub struct ReviewOutcome {
    pub authenticated: bool,
    pub audiences: Vec<String>,
    pub error: Option<String>,
    pub username: String,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The rules every TokenReview answer must pass (see the module docs): authenticated, for
/// `audience`, a token of one of `allowed_users` (`system:serviceaccount:NS:NAME`), bound to a
/// pod on a node.
pub fn check_review(
    review: ReviewOutcome,
    audience: &str,
    allowed_users: &[String],
) -> Result<Requester, AuthError> {
    if !review.authenticated {
        let why = review.error.unwrap_or_else(|| "not authenticated".into());
        return Err(AuthError::NotAuthenticated(why));
    }
    // A server that ignores audiences returns none; an audience-aware one must echo ours.
    if !review.audiences.iter().any(|a| a == audience) {
        return Err(AuthError::WrongAudience(review.audiences));
    }
    if !allowed_users.iter().any(|u| u == &review.username) {
        return Err(AuthError::WrongServiceAccount(review.username));
    }
    let node = review
        .extra
        .get(NODE_NAME_EXTRA)
        .and_then(|v| v.first())
        .filter(|n| !n.is_empty())
        .ok_or(AuthError::NoNodeClaim)?;
    Ok(Requester {
        node: node.clone(),
        subject: review.username,
    })
}

/// `system:serviceaccount:NS:NAME` for each `NS/NAME`.
pub fn service_account_users(accounts: &[String]) -> Result<Vec<String>, String> {
    accounts
        .iter()
        .map(|sa| match sa.split_once('/') {
            Some((ns, name)) => Ok(format!("system:serviceaccount:{ns}:{name}")),
            None => Err(format!(
                "allowed service account {sa:?} is not namespace/name"
            )),
        })
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenReviewRequest<'a> {
    api_version: &'static str,
    kind: &'static str,
    spec: Spec<'a>,
}

#[derive(Serialize)]
struct Spec<'a> {
    token: &'a str,
    audiences: Vec<&'a str>,
}

#[derive(Deserialize)]
struct TokenReviewResponse {
    status: Option<TokenReviewStatus>,
}

#[derive(Deserialize, Default)]
struct TokenReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    audiences: Vec<String>,
    error: Option<String>,
    user: Option<UserInfo>,
}

#[derive(Deserialize, Default)]
struct UserInfo {
    #[serde(default)]
    username: String,
    #[serde(default)]
    extra: BTreeMap<String, Vec<String>>,
}
