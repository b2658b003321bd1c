//! The Kubernetes source: `kube::runtime` watchers for Nodes, Namespaces, Pods, Services,
//! EndpointSlices and the policy kinds, each object reduced to the model at once (only the
//! fields used are kept) and sent to the index.
//!
//! A watch's initial list (and every re-list — after a `410 Gone`, or when the watcher restarts
//! after an error) is delivered to the index as one reset of that kind, so objects deleted
//! while the watch was down disappear and none is duplicated. Errors are logged and counted;
//! the watcher backs off and resumes on its own. Policy kinds are watched as dynamic objects
//! and validated by the index, so a malformed policy is one invalid object, never a stuck
//! watch.

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use ward_lib_api::resources::port_protocol;

use crate::index::{Event, Kind};
use crate::metrics::Metrics;
use crate::model::*;

/// The namespace label that enrolls a namespace's pods.
pub const MESH_LABEL: &str = "ward.dev/mesh";
/// The label of an EndpointSlice naming its service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Starts one watcher task per kind; every task sends into `events`.
pub fn spawn_watchers(
    client: kube::Client,
    events: mpsc::Sender<Event>,
    istio: bool,
    stats: Metrics,
) {
    let cfg = watcher::Config::default();
    spawn(
        Api::<Node>::all(client.clone()),
        cfg.clone(),
        Kind::Nodes,
        events.clone(),
        stats.clone(),
        |n| Some(node(n)),
        Event::ApplyNode,
        |n| Event::DeleteNode(n.name_any()),
        Event::ResetNodes,
    );
    spawn(
        Api::<Namespace>::all(client.clone()),
        cfg.clone(),
        Kind::Namespaces,
        events.clone(),
        stats.clone(),
        |n| Some(namespace(n)),
        Event::ApplyNamespace,
        |n| Event::DeleteNamespace(n.name_any()),
        Event::ResetNamespaces,
    );
    spawn(
        Api::<Pod>::all(client.clone()),
        cfg.clone(),
        Kind::Pods,
        events.clone(),
        stats.clone(),
        |p| Some(pod(p)),
        Event::ApplyPod,
        |p| Event::DeletePod(key(p)),
        Event::ResetPods,
    );
    spawn(
        Api::<Service>::all(client.clone()),
        cfg.clone(),
        Kind::Services,
        events.clone(),
        stats.clone(),
        |s| Some(service(s)),
        Event::ApplyService,
        |s| Event::DeleteService(key(s)),
        Event::ResetServices,
    );
    spawn(
        Api::<EndpointSlice>::all(client.clone()),
        cfg.clone(),
        Kind::Slices,
        events.clone(),
        stats.clone(),
        slice,
        Event::ApplySlice,
        |s| Event::DeleteSlice(key(s)),
        Event::ResetSlices,
    );
    let mut kinds = vec![
        (
            "security.ward.dev",
            "authorizationpolicies",
            PolicyKind::AuthorizationPolicy,
        ),
        (
            "security.ward.dev",
            "peerauthentications",
            PolicyKind::PeerAuthentication,
        ),
    ];
    if istio {
        kinds.push((
            "security.istio.io",
            "authorizationpolicies",
            PolicyKind::IstioAuthorizationPolicy,
        ));
        kinds.push((
            "security.istio.io",
            "peerauthentications",
            PolicyKind::IstioPeerAuthentication,
        ));
    }
    for (group, plural, kind) in kinds {
        let gvk = GroupVersionKind::gvk(group, "v1", kind.as_str());
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        spawn_policies(
            Api::all_with(client.clone(), &ar),
            kind,
            events.clone(),
            stats.clone(),
        );
    }
}

/// The expected initial-sync kinds for the watches [`spawn_watchers`] starts.
pub fn expected_kinds(istio: bool) -> Vec<Kind> {
    let mut v = vec![
        Kind::Mesh,
        Kind::Nodes,
        Kind::Namespaces,
        Kind::Pods,
        Kind::Services,
        Kind::Slices,
        Kind::AuthorizationPolicies,
        Kind::PeerAuthentications,
    ];
    if istio {
        v.push(Kind::IstioAuthorizationPolicies);
        v.push(Kind::IstioPeerAuthentications);
    }
    v
}

#[allow(clippy::too_many_arguments)] // reason: one call per watched kind, all arguments plain
fn spawn<K, M>(
    api: Api<K>,
    cfg: watcher::Config,
    kind: Kind,
    events: mpsc::Sender<Event>,
    stats: Metrics,
    to_model: fn(&K) -> Option<M>,
    apply: fn(M) -> Event,
    delete: fn(&K) -> Event,
    reset: fn(Vec<M>) -> Event,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    M: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        let mut initial: Vec<M> = Vec::new();
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(watcher::Event::Init) => {
                    initial.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(o)) => {
                    initial.extend(to_model(&o));
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    let n = initial.len();
                    if events
                        .send(reset(std::mem::take(&mut initial)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tracing::info!(kind = ?kind, objects = n, "watch synced");
                    Event::Synced(kind)
                }
                Ok(watcher::Event::Apply(o)) => match to_model(&o) {
                    Some(m) => apply(m),
                    None => delete(&o),
                },
                Ok(watcher::Event::Delete(o)) => delete(&o),
                Err(e) => {
                    stats
                        .watch_restarts
                        .get_or_create(&vec![("kind".to_owned(), format!("{kind:?}"))])
                        .inc();
                    tracing::warn!(kind = ?kind, error = %e, "watch error; the watcher backs off and resumes");
                    continue;
                }
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    });
}

fn spawn_policies(
    api: Api<DynamicObject>,
    kind: PolicyKind,
    events: mpsc::Sender<Event>,
    stats: Metrics,
) {
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut initial = Vec::new();
        let sync_kind = Kind::of_policies(kind);
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(watcher::Event::Init) => {
                    initial.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(o)) => {
                    initial.extend(policy(&o, kind));
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    if events
                        .send(Event::ResetPolicies(kind, std::mem::take(&mut initial)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    Event::Synced(sync_kind)
                }
                Ok(watcher::Event::Apply(o)) => match policy(&o, kind) {
                    Some(p) => Event::ApplyPolicy(p),
                    None => continue,
                },
                Ok(watcher::Event::Delete(o)) => Event::DeletePolicy(kind, key(&o)),
                Err(e) => {
                    stats
                        .watch_restarts
                        .get_or_create(&vec![(
                            "kind".to_owned(),
                            kind.resource_prefix().to_owned(),
                        )])
                        .inc();
                    tracing::warn!(kind = kind.resource_prefix(), error = %e, "watch error; the watcher backs off and resumes");
                    continue;
                }
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    });
}

fn key<K: kube::Resource>(o: &K) -> Key {
    Key::new(o.namespace().unwrap_or_default(), o.name_any())
}

fn parse_ips<'a>(what: &str, addrs: impl Iterator<Item = &'a str>) -> Vec<IpAddr> {
    addrs
        .filter_map(|a| match a.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                tracing::warn!(object = what, address = a, "not an IP address; ignored");
                None
            }
        })
        .collect()
}

/// A node's address: its first InternalIP (the address other nodes reach it on).
pub fn node(n: &Node) -> NodeInfo {
    let address = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse().ok())
        });
    NodeInfo {
        name: n.name_any(),
        address,
    }
}

pub fn namespace(n: &Namespace) -> NamespaceInfo {
    NamespaceInfo {
        name: n.name_any(),
        enrolled: n.labels().get(MESH_LABEL).is_some_and(|v| v == "enabled"),
        allow_non_tcp: allows_non_tcp(n.annotations()),
    }
}

/// Annotation `ward.dev/allow-non-tcp: "true"` (on a namespace or a pod): non-TCP traffic may
/// reach the STRICT workloads it covers. Any other value, or none, keeps it dropped.
pub const ALLOW_NON_TCP_ANNOTATION: &str = "ward.dev/allow-non-tcp";

fn allows_non_tcp(annotations: &std::collections::BTreeMap<String, String>) -> bool {
    annotations
        .get(ALLOW_NON_TCP_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// A pod reduced to the model. Opting out: label or annotation `ward.dev/mesh: disabled`, or
/// `hostNetwork` (the pod has the node's address; it cannot be captured on its own).
pub fn pod(p: &Pod) -> PodInfo {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let mut ips: Vec<IpAddr> = parse_ips(
        "pod",
        status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|i| i.ip.as_str()),
    );
    if ips.is_empty() {
        ips = parse_ips("pod", status.and_then(|s| s.pod_ip.as_deref()).into_iter());
    }
    let disabled = |m: &std::collections::BTreeMap<String, String>| {
        m.get(MESH_LABEL).is_some_and(|v| v == "disabled")
    };
    let phase = status.and_then(|s| s.phase.as_deref());
    PodInfo {
        key: key(p),
        node: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        ips,
        labels: p.labels().clone(),
        opted_out: disabled(p.labels())
            || disabled(p.annotations())
            || spec.and_then(|s| s.host_network).unwrap_or(false),
        terminated: matches!(phase, Some("Succeeded" | "Failed")),
        declared_ports: Vec::new(),
        allow_non_tcp: allows_non_tcp(p.annotations()),
    }
}

/// A service: its cluster IPs (none for headless) and TCP ports with their declared protocol.
pub fn service(s: &Service) -> ServiceInfo {
    let spec = s.spec.as_ref();
    let mut vips: Vec<&str> = spec
        .and_then(|s| s.cluster_ips.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if vips.is_empty() {
        vips.extend(spec.and_then(|s| s.cluster_ip.as_deref()));
    }
    let vips = parse_ips(
        "service",
        vips.into_iter().filter(|v| !v.is_empty() && *v != "None"),
    );
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            Some(ServicePortInfo {
                port: u16::try_from(p.port).ok()?,
                name: p.name.clone().unwrap_or_default(),
                protocol: port_protocol(p.name.as_deref(), None, p.app_protocol.as_deref()),
            })
        })
        .collect();
    ServiceInfo {
        key: key(s),
        vips,
        ports,
    }
}

/// An endpoint slice of a service (FQDN slices and slices of no service are not ours).
pub fn slice(s: &EndpointSlice) -> Option<SliceInfo> {
    if s.address_type == "FQDN" {
        return None;
    }
    let service = s.labels().get(SERVICE_NAME_LABEL)?.clone();
    let ports = s
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            Some(SlicePort {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.port?).ok()?,
                protocol: port_protocol(p.name.as_deref(), None, p.app_protocol.as_deref()),
            })
        })
        .collect();
    let endpoints = s
        .endpoints
        .iter()
        .map(|e| SliceEndpoint {
            ips: parse_ips("endpoint slice", e.addresses.iter().map(String::as_str)),
            // Absent means ready, as the API documents.
            ready: e.conditions.as_ref().and_then(|c| c.ready) != Some(false),
        })
        .collect();
    Some(SliceInfo {
        key: key(s),
        service,
        ports,
        endpoints,
    })
}

/// A policy object: the document as ward's parser reads it (apiVersion, kind, the metadata
/// that matters, spec). `None` for an object without a name or namespace.
pub fn policy(o: &DynamicObject, kind: PolicyKind) -> Option<PolicyObject> {
    let namespace = o.metadata.namespace.clone()?;
    let name = o.metadata.name.clone()?;
    let api_version = o
        .types
        .as_ref()
        .map(|t| t.api_version.clone())
        .unwrap_or_else(|| {
            if matches!(
                kind,
                PolicyKind::IstioAuthorizationPolicy | PolicyKind::IstioPeerAuthentication
            ) {
                "security.istio.io/v1".into()
            } else {
                "security.ward.dev/v1".into()
            }
        });
    let mut metadata = json!({"namespace": namespace, "name": name});
    if let Some(a) = &o.metadata.annotations {
        metadata["annotations"] = json!(a);
    }
    let document = json!({
        "apiVersion": api_version,
        "kind": kind.as_str(),
        "metadata": metadata,
        "spec": o.data.get("spec").cloned().unwrap_or(Value::Object(Default::default())),
    });
    Some(PolicyObject {
        kind,
        key: Key::new(namespace, name),
        generation: o.metadata.generation.unwrap_or(0),
        origin: format!(
            "{} {}/{}",
            kind.as_str(),
            o.metadata.namespace.as_deref().unwrap_or(""),
            o.name_any()
        ),
        document,
        uid: o.metadata.uid.clone(),
        status: o.data.get("status").cloned(),
    })
}

/// What the root watch keeps current.
pub struct RootWatch {
    pub namespace: String,
    pub secret: String,
    pub configmap: String,
    /// The mesh settings; `roots_pem` is replaced by the Secret's `root.pem`.
    pub settings: crate::index::MeshSettings,
}

/// Publishes the mesh settings now, then watches the CA Secret: a changed `root.pem` (a
/// root added or removed during a rotation) reaches every proxy through the stream and the
/// root ConfigMap; a changed signing certificate and key switch signing without a restart.
/// A Secret that no longer parses, or names another trust domain, is reported and ignored.
pub fn spawn_root_watch(
    client: kube::Client,
    watch: RootWatch,
    authority: Arc<arc_swap::ArcSwap<ward_ca::authority::Authority>>,
    events: mpsc::Sender<Event>,
) {
    tokio::spawn(async move {
        let mut settings = watch.settings;
        let td = settings.trust_domain.clone();
        publish_roots(
            &client,
            &watch.namespace,
            &watch.configmap,
            &settings.roots_pem,
        )
        .await;
        if events.send(Event::Mesh(settings.clone())).await.is_err()
            || events.send(Event::Synced(Kind::Mesh)).await.is_err()
        {
            return;
        }
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), &watch.namespace);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", watch.secret));
        let mut stream = watcher(api, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(item) = stream.next().await {
            let secret = match item {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "CA Secret watch error; the watcher backs off and resumes");
                    continue;
                }
            };
            let (next, pem) = match crate::ca::authority_from_secret(&secret) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(secret = %watch.secret, error = %e, "CA Secret is not usable; the current CA stays in force");
                    continue;
                }
            };
            if next.trust_domain().as_str() != td {
                tracing::error!(secret = %watch.secret, trust_domain = %next.trust_domain(), "CA Secret names another trust domain; ignored");
                continue;
            }
            let current = authority.load();
            if current.roots() != next.roots() || !same_signer(&current, &next) {
                tracing::info!(
                    roots = next.roots().len(),
                    "CA Secret changed: signing and trust bundle updated"
                );
                authority.store(Arc::new(next));
            }
            if pem.root != settings.roots_pem {
                settings.roots_pem = pem.root.clone();
                publish_roots(
                    &client,
                    &watch.namespace,
                    &watch.configmap,
                    &settings.roots_pem,
                )
                .await;
                if events.send(Event::Mesh(settings.clone())).await.is_err() {
                    return;
                }
            }
        }
    });
}

fn same_signer(a: &ward_ca::authority::Authority, b: &ward_ca::authority::Authority) -> bool {
    a.signing_certificate() == b.signing_certificate()
}

/// Server-side applies the root ConfigMap (`root.pem`) under field manager `ward-control`.
async fn publish_roots(client: &kube::Client, namespace: &str, name: &str, roots_pem: &str) {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), namespace);
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "ward-control"}},
        "data": {"root.pem": roots_pem},
    });
    let params = kube::api::PatchParams::apply("ward-control").force();
    match api
        .patch(name, &params, &kube::api::Patch::Apply(&cm))
        .await
    {
        Ok(_) => {
            tracing::info!(configmap = %format!("{namespace}/{name}"), "trust bundle published")
        }
        Err(e) => {
            tracing::error!(configmap = %format!("{namespace}/{name}"), error = %e, "publishing the trust bundle failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Namespace, Pod};

    fn with_annotation<T: kube::Resource + Default>(value: Option<&str>) -> T {
        let mut o = T::default();
        o.meta_mut().name = Some("x".into());
        o.meta_mut().namespace = Some("shop".into());
        if let Some(v) = value {
            o.meta_mut().annotations =
                Some([(super::ALLOW_NON_TCP_ANNOTATION.to_owned(), v.to_owned())].into());
        }
        o
    }

    #[test]
    fn non_tcp_is_allowed_only_by_the_annotation_set_to_true() {
        for (value, allowed) in [
            (Some("true"), true),
            (Some("yes"), false),
            (Some("True"), false),
            (None, false),
        ] {
            assert_eq!(
                super::pod(&with_annotation::<Pod>(value)).allow_non_tcp,
                allowed,
                "pod {value:?}"
            );
            assert_eq!(
                super::namespace(&with_annotation::<Namespace>(value)).allow_non_tcp,
                allowed,
                "namespace {value:?}"
            );
        }
    }
}
