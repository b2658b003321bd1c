//! "Who is asking?" — authenticating the requester of a certificate.
//!
//! Two authenticators: [`BootstrapTokens`] for local mode (HMAC-signed, expiring tokens bound
//! to a node name, minted by `ward ca bootstrap-token`) and [`crate::tokenreview::TokenReview`]
//! for Kubernetes mode (the proxy's projected service-account token, validated by the API
//! server). Both yield a [`Requester`] whose node is a fact the CA established, never a claim
//! the requester made.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use ward_lib_identity::spiffe_id::is_dns1123_subdomain;

use crate::clock::Clock;
use crate::directory::WorkloadDirectory;
use crate::BoxFuture;

/// An authenticated requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// The node the requester proved it runs on.
    pub node: String,
    /// Who it is, for audit logs (e.g. `bootstrap:node-1`,
    /// `system:serviceaccount:ward-system:ward-proxy`).
    pub subject: String,
}

/// Why a requester was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token in the 'authorization' metadata")]
    Missing,
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token signature is invalid (forged or from another CA)")]
    Forged,
    #[error("token expired at {0} (unix seconds)")]
    Expired(i64),
    #[error("token is for node {0:?}, which is not a known node")]
    UnknownNode(String),
    #[error("token rejected by the API server: {0}")]
    NotAuthenticated(String),
    #[error("token belongs to {0:?}, not to the ward-proxy service account")]
    WrongServiceAccount(String),
    #[error("token audiences {0:?} do not include the CA's audience")]
    WrongAudience(Vec<String>),
    #[error("token is not bound to a pod on a node (no node-name claim)")]
    NoNodeClaim,
    /// The authenticator could not reach its backend: not the requester's fault.
    #[error("cannot authenticate right now: {0}")]
    Unavailable(String),
}

pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Requester, AuthError>>;
}

const PREFIX: &str = "wardbt1";

/// File in a CA directory holding the HMAC key for node bootstrap tokens (base64).
pub const BOOTSTRAP_KEY_FILE: &str = "bootstrap.key";

/// Reads the bootstrap-token key of a CA directory.
pub fn read_bootstrap_key(ca_dir: &std::path::Path) -> Result<[u8; 32], String> {
    let path = ca_dir.join(BOOTSTRAP_KEY_FILE);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| format!("{}: not base64", path.display()))?;
    bytes
        .try_into()
        .map_err(|_| format!("{}: must hold exactly 32 bytes", path.display()))
}

/// Local-mode node credentials: `wardbt1:<node>:<expiry-unix>:<base64url HMAC-SHA256>`.
///
/// The HMAC key stays with the CA (`bootstrap.key` in the CA directory). A token is accepted
/// only if its MAC verifies (constant time), it has not expired, and its node is declared in
/// the workload directory — so removing a node revokes its tokens.
pub struct BootstrapTokens {
    key: [u8; 32],
    directory: Arc<dyn WorkloadDirectory>,
    clock: Arc<dyn Clock>,
}

impl BootstrapTokens {
    pub fn new(
        key: [u8; 32],
        directory: Arc<dyn WorkloadDirectory>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            key,
            directory,
            clock,
        }
    }

    /// Mints a token for `node` that expires at `expires_unix`.
    pub fn mint(key: &[u8; 32], node: &str, expires_unix: i64) -> Result<String, String> {
        if !is_dns1123_subdomain(node) {
            return Err(format!("{node:?} is not a valid node name"));
        }
        let payload = format!("{PREFIX}:{node}:{expires_unix}");
        let mac = URL_SAFE_NO_PAD.encode(mac(key, &payload));
        Ok(format!("{payload}:{mac}"))
    }

    fn check(&self, token: &str) -> Result<(String, i64), AuthError> {
        let mut parts = token.split(':');
        let (Some(prefix), Some(node), Some(exp), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(AuthError::Malformed(
                "expected wardbt1:<node>:<expiry>:<mac>",
            ));
        };
        if prefix != PREFIX {
            return Err(AuthError::Malformed("unknown token type"));
        }
        let exp: i64 = exp
            .parse()
            .map_err(|_| AuthError::Malformed("expiry is not a number"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| AuthError::Malformed("mac is not base64url"))?;
        let payload_len = token.len() - token.rsplit(':').next().map_or(0, str::len) - 1;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .map_err(|_| AuthError::Unavailable("bad HMAC key".into()))?;
        m.update(&token.as_bytes()[..payload_len]);
        // verify_slice compares in constant time.
        m.verify_slice(&sig).map_err(|_| AuthError::Forged)?;
        if self.clock.now().unix_timestamp() >= exp {
            return Err(AuthError::Expired(exp));
        }
        Ok((node.to_owned(), exp))
    }
}

impl Authenticator for BootstrapTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Requester, AuthError>> {
        Box::pin(async move {
            let (node, _) = self.check(token)?;
            let known = self
                .directory
                .has_node(&node)
                .await
                .map_err(|e| AuthError::Unavailable(e.to_string()))?;
            if !known {
                return Err(AuthError::UnknownNode(node));
            }
            Ok(Requester {
                subject: format!("bootstrap:{node}"),
                node,
            })
        })
    }
}

fn mac(key: &[u8; 32], payload: &str) -> Vec<u8> {
    // new_from_slice only fails for invalid key lengths, and HMAC accepts any length.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    m.update(payload.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Extracts the token from an `authorization: Bearer <token>` value.
pub fn bearer(value: Option<&str>) -> Result<&str, AuthError> {
    let v = value.ok_or(AuthError::Missing)?;
    let token = v
        .strip_prefix("Bearer ")
        .ok_or(AuthError::Malformed(
            "authorization is not 'Bearer <token>'",
        ))?
        .trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > 8 * 1024 {
        return Err(AuthError::Malformed("token longer than 8 KiB"));
    }
    Ok(token)
}
