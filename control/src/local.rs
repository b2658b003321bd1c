//! Local mode: the mesh file (nodes, workloads, services, trust bundle) and its policy files,
//! watched, turned into the same model events the Kubernetes source produces.
//!
//! Files are polled (every 250 ms by default) and only what changed is re-read. Each policy
//! file is on its own: a file that does not parse keeps its last good objects in force and is
//! reported with its path; a file that parses contributes its objects, each validated on its
//! own by the index (errors name the file, document, policy and field). An invalid mesh file
//! is reported and the last good one stays in force. Nothing is published until the mesh file
//! has been read successfully once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use ward_lib_api::config::{policy_files, MeshFile};
use ward_lib_api::control::PortProtocol;
use ward_lib_api::resources::port_protocol;

use crate::index::{Event, Kind, MeshSettings};
use crate::model::*;

/// Watches `mesh` (and everything it names) and sends model events.
pub struct LocalSource {
    mesh: PathBuf,
    /// Set to the number of files currently rejected.
    rejected: prometheus_client::metrics::gauge::Gauge,
    period: Duration,
    events: mpsc::Sender<Event>,
    last_mesh: Option<String>,
    last_bundle: Option<String>,
    mesh_file: Option<MeshFile>,
    /// The mesh file as last read was accepted (its policy paths are the ones in force).
    mesh_ok: bool,
    /// path → (content, objects parsed from its last good content)
    files: BTreeMap<PathBuf, (String, Vec<PolicyObject>)>,
    synced: bool,
    /// Errors already reported, so a broken file is not logged on every poll.
    reported: BTreeSet<String>,
}

impl LocalSource {
    pub fn new(
        mesh: PathBuf,
        period: Duration,
        events: mpsc::Sender<Event>,
        rejected: prometheus_client::metrics::gauge::Gauge,
    ) -> Self {
        Self {
            mesh,
            rejected,
            period,
            events,
            last_mesh: None,
            last_bundle: None,
            mesh_file: None,
            mesh_ok: false,
            files: BTreeMap::new(),
            synced: false,
            reported: BTreeSet::new(),
        }
    }

    /// Polls forever; returns when the index is gone.
    pub async fn run(mut self) {
        loop {
            let path = self.mesh.clone();
            // Reading files blocks: keep it off the runtime's workers.
            let snapshot = tokio::task::spawn_blocking(move || read_all(&path)).await;
            let events = match snapshot {
                Ok(read) => self.changes(read),
                Err(e) => {
                    tracing::error!(error = %e, "reading the local configuration failed");
                    Vec::new()
                }
            };
            for e in events {
                if self.events.send(e).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(self.period).await;
        }
    }

    fn report(&mut self, key: String, message: &str) {
        if self.reported.insert(key.clone()) {
            tracing::error!(error = %key, "{message}");
        }
    }

    /// The events that bring the index up to date with what was read.
    fn changes(&mut self, read: Read) -> Vec<Event> {
        let mut out = Vec::new();
        let mut current_errors = BTreeSet::new();
        // Policy paths come from the mesh file read this round; they are used only while that
        // file is the one in force (a rejected or unreadable mesh file changes no policies).
        let mut in_force = false;
        let mesh_changed = match read.mesh {
            Ok((text, bundle)) => {
                let changed = self.last_mesh.as_deref() != Some(&text)
                    || self.last_bundle.as_deref() != Some(&bundle);
                in_force = !changed && self.mesh_file.is_some() && self.mesh_ok;
                if changed {
                    match MeshFile::parse(&text, &self.mesh.display().to_string())
                        .and_then(|f| f.resources().map(|_| f))
                    {
                        Ok(file) => {
                            out.extend(mesh_events(&file, &bundle));
                            self.mesh_file = Some(file);
                            self.mesh_ok = true;
                            in_force = true;
                            self.last_mesh = Some(text);
                            self.last_bundle = Some(bundle);
                            tracing::info!(path = %self.mesh.display(), "mesh file loaded");
                        }
                        Err(e) => {
                            current_errors.insert(e.0.clone());
                            self.report(
                                e.0,
                                "mesh file rejected; the last good one stays in force",
                            );
                            self.mesh_ok = false;
                            self.last_mesh = Some(text);
                            self.last_bundle = Some(bundle);
                        }
                    }
                }
                changed
            }
            Err(e) => {
                current_errors.insert(e.clone());
                self.report(
                    e,
                    "reading the mesh file failed; the last good one stays in force",
                );
                false
            }
        };
        if self.mesh_file.is_none() || !in_force {
            self.reported.retain(|e| current_errors.contains(e));
            self.rejected.set(current_errors.len() as i64);
            return out;
        }

        // Policy files: re-parse changed ones; forget removed ones.
        let mut policies_changed = mesh_changed && !self.synced;
        let seen: BTreeSet<PathBuf> = read.policies.iter().map(|(p, _)| p.clone()).collect();
        let before = self.files.len();
        self.files.retain(|p, _| seen.contains(p));
        policies_changed |= self.files.len() != before;
        for (path, text) in read.policies {
            let text = match text {
                Ok(t) => t,
                Err(e) => {
                    current_errors.insert(e.clone());
                    self.report(
                        e,
                        "reading a policy file failed; its last good policies stay in force",
                    );
                    continue;
                }
            };
            if self.files.get(&path).is_some_and(|(t, _)| *t == text) {
                continue;
            }
            match parse_policy_file(&path, &text) {
                Ok(objects) => {
                    self.files.insert(path, (text, objects));
                    policies_changed = true;
                }
                Err(e) => {
                    current_errors.insert(e.clone());
                    self.report(
                        e,
                        "policy file rejected; its last good policies stay in force",
                    );
                    // Remember the text (not re-parsed until it changes), keep the objects.
                    let objects = self.files.remove(&path).map(|(_, o)| o).unwrap_or_default();
                    self.files.insert(path, (text, objects));
                }
            }
        }
        self.reported.retain(|e| current_errors.contains(e));
        for e in &current_errors {
            self.reported.insert(e.clone());
        }
        self.rejected.set(current_errors.len() as i64);
        if policies_changed {
            // Later files win over earlier ones for the same kind/namespace/name, as a
            // sequence of `kubectl apply` would.
            let mut by_id: BTreeMap<PolicyId, PolicyObject> = BTreeMap::new();
            for (_, objects) in self.files.values() {
                for o in objects {
                    by_id.insert((o.kind, o.key.clone()), o.clone());
                }
            }
            let mut kinds: HashMap<PolicyKind, Vec<PolicyObject>> = HashMap::new();
            for ((kind, _), o) in by_id {
                kinds.entry(kind).or_default().push(o);
            }
            for kind in PolicyKind::ALL {
                out.push(Event::ResetPolicies(
                    kind,
                    kinds.remove(&kind).unwrap_or_default(),
                ));
            }
        }
        if !self.synced {
            self.synced = true;
            out.extend(Kind::ALL.into_iter().map(Event::Synced));
        }
        out
    }
}

/// Reloads the CA directory when its files change (every second): switching the signing
/// certificate and key during a root rotation needs no restart. A directory that does not
/// load, or names another trust domain, is reported and the current CA stays in force.
pub async fn watch_ca_dir(
    dir: PathBuf,
    authority: std::sync::Arc<arc_swap::ArcSwap<ward_ca::authority::Authority>>,
) {
    use ward_ca::authority::files;
    let stamp = |dir: &Path| -> Vec<Option<std::time::SystemTime>> {
        [
            files::ROOT,
            files::CERT,
            files::KEY,
            files::CHAIN,
            files::TRUST_DOMAIN,
        ]
        .iter()
        .map(|f| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified())
                .ok()
        })
        .collect()
    };
    let mut last = stamp(&dir);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = stamp(&dir);
        if now == last {
            continue;
        }
        last = now;
        match ward_ca::authority::Authority::load_dir(&dir) {
            Ok(next) if next.trust_domain() == authority.load().trust_domain() => {
                tracing::info!(dir = %dir.display(), roots = next.roots().len(), "CA directory changed: signing with it from now on");
                authority.store(std::sync::Arc::new(next));
            }
            Ok(next) => {
                tracing::error!(dir = %dir.display(), trust_domain = %next.trust_domain(), "CA directory names another trust domain; ignored")
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "CA directory does not load; the current CA stays in force")
            }
        }
    }
}

/// Everything read in one poll.
struct Read {
    /// (mesh file text, bundle PEM) or the error.
    mesh: Result<(String, String), String>,
    policies: Vec<(PathBuf, Result<String, String>)>,
}

fn read_all(mesh: &Path) -> Read {
    let base = mesh.parent().unwrap_or(Path::new(".")).to_owned();
    let text = match std::fs::read_to_string(mesh) {
        Ok(t) => t,
        Err(e) => {
            return Read {
                mesh: Err(format!("{}: {e}", mesh.display())),
                policies: Vec::new(),
            }
        }
    };
    // The bundle and policy paths come from the file; a file that does not parse yields none
    // (the last good ones are used, with the last good file).
    let parsed = MeshFile::parse(&text, &mesh.display().to_string()).ok();
    let bundle = match &parsed {
        Some(f) => {
            let p = base.join(&f.trust_bundle);
            match std::fs::read_to_string(&p) {
                Ok(b) => b,
                Err(e) => {
                    return Read {
                        mesh: Err(format!("trustBundle {}: {e}", p.display())),
                        policies: Vec::new(),
                    }
                }
            }
        }
        None => String::new(),
    };
    let mut policies = Vec::new();
    for p in parsed.iter().flat_map(|f| &f.policies) {
        let mut found = Vec::new();
        if let Err(e) = policy_files(&base.join(p), &mut found) {
            policies.push((base.join(p), Err(format!("policies {}: {e}", p.display()))));
            continue;
        }
        for f in found {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()));
            policies.push((f, text));
        }
    }
    Read {
        mesh: Ok((text, bundle)),
        policies,
    }
}

/// The model events of a valid mesh file.
fn mesh_events(file: &MeshFile, bundle: &str) -> Vec<Event> {
    let mut out = vec![Event::Mesh(MeshSettings {
        trust_domain: file.trust_domain.clone(),
        aliases: file.trust_domain_aliases.clone(),
        root_namespace: file.root_namespace.clone(),
        roots_pem: bundle.to_owned(),
    })];
    out.push(Event::ResetNodes(
        file.nodes
            .iter()
            .map(|n| NodeInfo {
                name: n.name.clone(),
                address: Some(n.address),
            })
            .collect(),
    ));
    // Every namespace a mesh file names is in the mesh: the file lists mesh workloads only.
    let namespaces: BTreeSet<&str> = file
        .workloads
        .iter()
        .map(|w| w.namespace.as_str())
        .chain(file.services.iter().map(|s| s.namespace.as_str()))
        .chain([file.root_namespace.as_str()])
        .collect();
    out.push(Event::ResetNamespaces(
        namespaces
            .into_iter()
            .map(|n| NamespaceInfo {
                name: n.to_owned(),
                enrolled: true,
                // Locally the allowance is per workload (`allowNonTcp` in the mesh file).
                allow_non_tcp: false,
            })
            .collect(),
    ));
    out.push(Event::ResetPods(
        file.workloads
            .iter()
            .map(|w| PodInfo {
                key: Key::new(&w.namespace, &w.name),
                node: Some(w.node.clone()),
                service_account: w.service_account.clone(),
                // `resources()` has validated the file: every workload has its addresses.
                ips: w.addresses(0).unwrap_or_default(),
                labels: w.labels.clone(),
                opted_out: false,
                terminated: false,
                allow_non_tcp: w.allow_non_tcp,
                declared_ports: w
                    .ports
                    .iter()
                    .map(|p| {
                        (
                            p.port,
                            port_protocol(
                                p.name.as_deref(),
                                p.protocol.as_deref(),
                                p.app_protocol.as_deref(),
                            ),
                        )
                    })
                    .collect(),
            })
            .collect(),
    ));
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for s in &file.services {
        let key = Key::new(&s.namespace, &s.name);
        let port_name = |p: &ward_lib_api::config::ServicePortSpec| {
            p.name.clone().unwrap_or_else(|| format!("port-{}", p.port))
        };
        let protocol = |p: &ward_lib_api::config::ServicePortSpec| -> PortProtocol {
            port_protocol(
                p.name.as_deref(),
                p.protocol.as_deref(),
                p.app_protocol.as_deref(),
            )
        };
        services.push(ServiceInfo {
            key: key.clone(),
            vips: vec![s.vip],
            ports: s
                .ports
                .iter()
                .map(|p| ServicePortInfo {
                    port: p.port,
                    name: port_name(p),
                    protocol: protocol(p),
                })
                .collect(),
        });
        let endpoints = file
            .workloads
            .iter()
            .filter(|w| {
                w.namespace == s.namespace
                    && s.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
            })
            .map(|w| SliceEndpoint {
                ips: w.addresses(0).unwrap_or_default(),
                ready: true,
            })
            .collect();
        slices.push(SliceInfo {
            key: Key::new(&s.namespace, format!("{}-local", s.name)),
            service: s.name.clone(),
            ports: s
                .ports
                .iter()
                .map(|p| SlicePort {
                    name: port_name(p),
                    port: p.target_port.unwrap_or(p.port),
                    protocol: protocol(p),
                })
                .collect(),
            endpoints,
        });
    }
    out.push(Event::ResetServices(services));
    out.push(Event::ResetSlices(slices));
    out
}

/// The policy objects of one file (a YAML stream; `List`s unpacked). A document whose kind is
/// not a policy kind, or that lacks a name, is an error naming it; so is a file that is not
/// YAML. Validation of each policy happens in the index.
pub fn parse_policy_file(path: &Path, text: &str) -> Result<Vec<PolicyObject>, String> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = format!("{}[doc {}]", path.display(), i + 1);
        let value: serde_yaml::Value = serde::Deserialize::deserialize(de)
            .map_err(|e| format!("{origin}: not valid YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        let value: Value = serde_json::to_value(value)
            .map_err(|e| format!("{origin}: cannot be represented as JSON: {e}"))?;
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            let items = value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (j, item) in items.into_iter().enumerate() {
                out.push(object(item, &format!("{origin}.items[{j}]"))?);
            }
        } else {
            out.push(object(value, &origin)?);
        }
    }
    Ok(out)
}

fn object(value: Value, origin: &str) -> Result<PolicyObject, String> {
    let kind_name = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = PolicyKind::of(api_version, kind_name).ok_or_else(|| {
        format!("{origin}: kind: {kind_name:?} is not AuthorizationPolicy or PeerAuthentication")
    })?;
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("{origin}: metadata.name: required"))?;
    // As `kubectl apply` in the default context would; lib/policy warns about it too.
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    Ok(PolicyObject {
        kind,
        key: Key::new(namespace, name),
        generation: 0,
        origin: origin.to_owned(),
        document: value,
        uid: None,
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_file_yields_one_object_per_document_and_list_item() {
        let text = "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec: {}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: security.ward.dev/v1\n  kind: PeerAuthentication\n  metadata: {name: b}\n  spec: {mtls: {mode: STRICT}}\n";
        let objects =
            parse_policy_file(Path::new("p.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].key, Key::new("shop", "a"));
        assert_eq!(objects[1].kind, PolicyKind::PeerAuthentication);
        assert_eq!(objects[1].key, Key::new("default", "b"));
        assert_eq!(objects[1].origin, "p.yaml[doc 2].items[0]");
    }

    #[test]
    fn bad_files_are_named_with_the_reason() {
        for (text, want) in [
            ("kind: [", "p.yaml[doc 1]: not valid YAML"),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
                "p.yaml[doc 1]: kind: \"ConfigMap\"",
            ),
            (
                "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nspec: {}\n",
                "p.yaml[doc 1]: metadata.name: required",
            ),
        ] {
            let e = parse_policy_file(Path::new("p.yaml"), text)
                .err()
                .unwrap_or_else(|| panic!("accepted {text:?}"));
            assert!(e.starts_with(want), "{e}");
        }
    }
}
