//! Trust bundles: the roots of trust, keyed by trust domain.
//!
//! A trust domain may hold several roots at once so a root can be rotated without downtime (add
//! the new root everywhere, switch signing, remove the old root). A bundle is immutable once
//! built; live updates swap a whole new bundle in through [`SharedBundle`], so a handshake always
//! sees one consistent set of roots.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use x509_parser::prelude::*;

use crate::spiffe_id::TrustDomain;

/// Why a root certificate could not be added to a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("root certificate #{index}: not a parseable X.509 certificate: {reason}")]
    Malformed { index: usize, reason: String },
    #[error("root certificate #{index}: basicConstraints cA is not true; a root must be a CA")]
    NotCa { index: usize },
    #[error("PEM input: {0}")]
    Pem(String),
    #[error("PEM input holds no CERTIFICATE block")]
    Empty,
}

/// One root of trust: its DER and the trust anchor webpki verifies against.
#[derive(Debug, Clone)]
pub struct Root {
    der: CertificateDer<'static>,
}

impl Root {
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }
}

#[derive(Debug, Clone, Default)]
struct DomainRoots {
    roots: Vec<Root>,
    anchors: Vec<TrustAnchor<'static>>,
}

/// Roots of trust, keyed by trust domain.
#[derive(Debug, Clone, Default)]
pub struct TrustBundle {
    domains: BTreeMap<TrustDomain, DomainRoots>,
}

impl TrustBundle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one DER root for `td`. The certificate must parse and be a CA.
    pub fn add_root(
        &mut self,
        td: &TrustDomain,
        der: CertificateDer<'static>,
    ) -> Result<(), BundleError> {
        self.add_root_indexed(td, der, 0)
    }

    fn add_root_indexed(
        &mut self,
        td: &TrustDomain,
        der: CertificateDer<'static>,
        index: usize,
    ) -> Result<(), BundleError> {
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| BundleError::Malformed {
            index,
            reason: e.to_string(),
        })?;
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(BundleError::NotCa { index });
        }
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| BundleError::Malformed {
                index,
                reason: format!("{e:?}"),
            })?
            .to_owned();
        let entry = self.domains.entry(td.clone()).or_default();
        if entry.roots.iter().any(|r| r.der == der) {
            return Ok(());
        }
        entry.roots.push(Root { der });
        entry.anchors.push(anchor);
        Ok(())
    }

    /// Adds every `CERTIFICATE` block of a PEM document as a root of `td`. All-or-nothing: on
    /// error the bundle is unchanged.
    pub fn add_pem(&mut self, td: &TrustDomain, pem_text: &str) -> Result<(), BundleError> {
        let ders = parse_pem_certs(pem_text)?;
        let mut next = self.clone();
        for (i, der) in ders.into_iter().enumerate() {
            next.add_root_indexed(td, der, i)?;
        }
        *self = next;
        Ok(())
    }

    /// Removes a root (by DER) from `td`; returns whether it was present.
    pub fn remove_root(&mut self, td: &TrustDomain, der: &[u8]) -> bool {
        let Some(entry) = self.domains.get_mut(td) else {
            return false;
        };
        let Some(i) = entry.roots.iter().position(|r| r.der.as_ref() == der) else {
            return false;
        };
        entry.roots.remove(i);
        entry.anchors.remove(i);
        if entry.roots.is_empty() {
            self.domains.remove(td);
        }
        true
    }

    /// The roots of `td`, if the bundle knows the trust domain.
    pub fn roots(&self, td: &str) -> Option<&[Root]> {
        self.domains
            .iter()
            .find(|(k, _)| k.as_str() == td)
            .map(|(_, v)| v.roots.as_slice())
    }

    pub(crate) fn anchors(&self, td: &str) -> Option<&[TrustAnchor<'static>]> {
        self.domains
            .iter()
            .find(|(k, _)| k.as_str() == td)
            .map(|(_, v)| v.anchors.as_slice())
    }

    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.domains.keys()
    }

    /// The roots of `td` as one PEM document.
    pub fn to_pem(&self, td: &str) -> String {
        self.roots(td)
            .unwrap_or_default()
            .iter()
            .map(|r| ::pem::encode(&::pem::Pem::new("CERTIFICATE", r.der.to_vec())))
            .collect()
    }
}

/// A bundle that can be replaced while handshakes read it: readers take a cheap snapshot,
/// writers swap in a whole new bundle.
pub type SharedBundle = Arc<ArcSwap<TrustBundle>>;

/// Wraps a bundle for sharing.
pub fn shared(bundle: TrustBundle) -> SharedBundle {
    Arc::new(ArcSwap::from_pointee(bundle))
}

/// Every `CERTIFICATE` block of a PEM document, in order; other block types are an error so a
/// key pasted by mistake is not silently ignored.
pub fn parse_pem_certs(pem_text: &str) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    let blocks = ::pem::parse_many(pem_text).map_err(|e| BundleError::Pem(e.to_string()))?;
    let mut out = Vec::with_capacity(blocks.len());
    for block in blocks {
        if block.tag() != "CERTIFICATE" {
            return Err(BundleError::Pem(format!(
                "unexpected PEM block '{}' (expected CERTIFICATE)",
                block.tag()
            )));
        }
        out.push(CertificateDer::from(block.into_contents()));
    }
    if out.is_empty() {
        return Err(BundleError::Empty);
    }
    Ok(out)
}
