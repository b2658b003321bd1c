//! The issuing CA, hosted by the control component.
//!
//! - **Node binding** comes from the index: identity `ns/sa` is issued to node N only while a
//!   published workload (an enrolled, non-terminated pod with that service account) is on N —
//!   the same view the proxies are served, so a proxy is never refused a certificate for a
//!   workload it was told about, and never given one for a workload it was not.
//! - **Requesters** authenticate with TokenReview through the control component's own API
//!   client (Kubernetes mode) or with bootstrap tokens (local mode).
//! - **The root** lives in a Secret in ward's namespace, created on first start when absent.
//!   Replicas starting together race to create it; the API server lets exactly one create
//!   win (`409 AlreadyExists` for the others), and every replica then uses the stored one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use ward_ca::auth::{AuthError, Authenticator, Requester};
use ward_ca::authority::{files, Authority, AuthorityPem};
use ward_ca::directory::{DirectoryError, WorkloadDirectory};
use ward_ca::tokenreview::{check_review, ReviewOutcome};
use ward_ca::BoxFuture;
use ward_lib_identity::TrustDomain;

use crate::index::View;

/// [`WorkloadDirectory`] over the index's published views.
pub struct ViewDirectory {
    views: watch::Receiver<Arc<View>>,
}

impl ViewDirectory {
    pub fn new(views: watch::Receiver<Arc<View>>) -> Self {
        Self { views }
    }

    fn current(&self) -> Result<Arc<View>, DirectoryError> {
        let v = self.views.borrow().clone();
        if !v.synced {
            return Err(DirectoryError::Unavailable(
                "the control component has not loaded the cluster state yet".into(),
            ));
        }
        Ok(v)
    }
}

impl WorkloadDirectory for ViewDirectory {
    fn has_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, DirectoryError>> {
        Box::pin(async move { Ok(self.current()?.nodes.contains(node)) })
    }

    fn is_scheduled<'a>(
        &'a self,
        node: &'a str,
        namespace: &'a str,
        service_account: &'a str,
    ) -> BoxFuture<'a, Result<bool, DirectoryError>> {
        Box::pin(async move {
            let v = self.current()?;
            Ok(v.bindings.get(node).is_some_and(|set| {
                set.contains(&(namespace.to_owned(), service_account.to_owned()))
            }))
        })
    }
}

/// TokenReview through a kube client (in-cluster credentials or KUBECONFIG).
pub struct KubeTokenReview {
    client: kube::Client,
    audience: String,
    allowed_users: Vec<String>,
    timeout: Duration,
}

impl KubeTokenReview {
    pub fn new(
        client: kube::Client,
        audience: String,
        allowed_service_accounts: &[String],
    ) -> Result<Self, String> {
        Ok(Self {
            client,
            audience,
            allowed_users: ward_ca::tokenreview::service_account_users(allowed_service_accounts)?,
            timeout: Duration::from_secs(5),
        })
    }
}

impl Authenticator for KubeTokenReview {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Requester, AuthError>> {
        Box::pin(async move {
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: Some(vec![self.audience.clone()]),
                },
                ..Default::default()
            };
            let created =
                tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review))
                    .await
                    .map_err(|_| AuthError::Unavailable("TokenReview timed out".into()))?
                    .map_err(|e| AuthError::Unavailable(format!("TokenReview: {e}")))?;
            let status = created.status.unwrap_or_default();
            let user = status.user.unwrap_or_default();
            check_review(
                ReviewOutcome {
                    authenticated: status.authenticated.unwrap_or(false),
                    audiences: status.audiences.unwrap_or_default(),
                    error: status.error,
                    username: user.username.unwrap_or_default(),
                    extra: user.extra.unwrap_or_default(),
                },
                &self.audience,
                &self.allowed_users,
            )
        })
    }
}

/// The Secret's keys (the same names as the files of a CA directory).
fn secret_data(pem: &AuthorityPem) -> BTreeMap<String, ByteString> {
    [
        (files::TRUST_DOMAIN, &pem.trust_domain),
        (files::ROOT, &pem.root),
        (files::CERT, &pem.cert),
        (files::KEY, &pem.key),
        (files::CHAIN, &pem.chain),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect()
}

/// Reads an authority from the Secret's data; errors name the key.
pub fn authority_from_secret(secret: &Secret) -> Result<(Authority, AuthorityPem), String> {
    let data = secret.data.clone().unwrap_or_default();
    let get = |k: &str, required: bool| -> Result<String, String> {
        match data.get(k) {
            Some(v) => String::from_utf8(v.0.clone()).map_err(|_| format!("key {k} is not UTF-8")),
            None if required => Err(format!("key {k} is missing")),
            None => Ok(String::new()),
        }
    };
    let pem = AuthorityPem {
        trust_domain: get(files::TRUST_DOMAIN, true)?.trim().to_owned(),
        root: get(files::ROOT, true)?,
        cert: get(files::CERT, true)?,
        key: get(files::KEY, true)?,
        chain: get(files::CHAIN, false)?,
    };
    let authority = Authority::from_pem(&pem).map_err(|e| e.to_string())?;
    Ok((authority, pem))
}

/// Loads the CA root from Secret `name` in `namespace`, creating it (a new self-signed root
/// for `td`) if it does not exist. Returns the stored authority, whoever created it.
pub async fn load_or_create_root(
    client: kube::Client,
    namespace: &str,
    name: &str,
    td: &TrustDomain,
    validity: Duration,
) -> anyhow::Result<(Authority, AuthorityPem)> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    for attempt in 0..5 {
        if let Some(secret) = api.get_opt(name).await? {
            let (authority, pem) = authority_from_secret(&secret)
                .map_err(|e| anyhow::anyhow!("Secret {namespace}/{name}: {e}"))?;
            anyhow::ensure!(
                authority.trust_domain() == td,
                "Secret {namespace}/{name} holds a CA for trust domain {:?}, not {:?}",
                authority.trust_domain().as_str(),
                td.as_str()
            );
            tracing::info!(secret = %format!("{namespace}/{name}"), attempt, "CA root loaded");
            return Ok((authority, pem));
        }
        let (_, pem) = Authority::init_root(td, time::OffsetDateTime::now_utc(), validity)?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "ward-control".to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("ward.dev/ca".to_owned()),
            data: Some(secret_data(&pem)),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "created a new CA root")
            }
            // Another replica created it first: use theirs (read it on the next round).
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "another replica created the CA root first; using it")
            }
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("Secret {namespace}/{name}: could not create or read it")
}
