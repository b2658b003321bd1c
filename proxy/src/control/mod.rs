//! The proxy's side of the control stream (xDS delta, see `control/src/xds.rs`).
//!
//! The proxy dials the control component over TLS 1.3, requiring its SVID
//! (`ward-system/ward-control` in the mesh's trust domain, checked against the trust bundle —
//! the bootstrap file until the stream delivers the mesh's own), authenticates with its node
//! credential, subscribes to ward's four types and tells what it already holds.
//!
//! A push (one response per type) is applied as one unit when its last response arrives:
//! every resource is decoded and checked, the policy set compiled, and a complete snapshot
//! assembled; only then is it installed and every response ACKed. If anything is wrong, all
//! of the push is NACKed with the reason and nothing the proxy enforces changes. When the
//! stream breaks, the last good configuration stays in force and the proxy reconnects with
//! jittered exponential backoff, resuming with the versions it holds. A proxy that never had
//! a configuration is not ready and forwards nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use ward_lib_api::config::{Snapshot, Workload};
use ward_lib_api::control as pb;
use ward_lib_api::resources::{
    self, short_type, Mesh, MESH_CONFIG, MESH_NAME, POLICY, SERVICE, TYPES, WORKLOAD,
};
use ward_lib_api::table::AddressTable;
use ward_lib_api::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ward_lib_api::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use ward_lib_identity::{SpiffeId, TrustDomain};
use ward_lib_policy::PolicySet;

use crate::state::State;

/// How to reach the control component.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    pub address: SocketAddr,
    /// `namespace/service-account` of the control component.
    pub identity: String,
    /// Trust domain of the control component's identity until a configuration names it.
    pub trust_domain: TrustDomain,
    /// The node credential (re-read at every connection: projected tokens rotate on disk).
    pub token_file: PathBuf,
}

/// Runs the control stream forever (spawn it).
pub async fn run(state: Arc<State>, settings: ControlSettings) {
    let mut store = Store::default();
    let mut failures: u32 = 0;
    loop {
        match session(&state, &settings, &mut store).await {
            Ok(()) => failures = 0,
            Err(SessionError { applied, message }) => {
                if applied {
                    failures = 0;
                }
                failures += 1;
                let base = (0.5 * 2f64.powi(failures.min(10) as i32 - 1)).min(30.0);
                let wait = base * (0.5 + rand::random::<f64>());
                tracing::warn!(error = %message, retry_in_s = format!("{wait:.1}"), configured = state.snapshot().is_some(), "control stream lost; keeping the last good configuration");
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            }
        }
    }
}

struct SessionError {
    /// Whether this session applied at least one push (the backoff restarts).
    applied: bool,
    message: String,
}

/// One connection: subscribe, then apply pushes until the stream ends.
async fn session(
    state: &Arc<State>,
    settings: &ControlSettings,
    store: &mut Store,
) -> Result<(), SessionError> {
    let mut applied = false;
    let err = |applied: bool, message: String| SessionError { applied, message };
    let td = state
        .snapshot()
        .map_or_else(|| settings.trust_domain.clone(), |s| s.trust_domain.clone());
    let (ns, sa) = settings.identity.split_once('/').ok_or_else(|| {
        err(
            false,
            "control identity must be namespace/service-account".into(),
        )
    })?;
    let control_id =
        SpiffeId::for_service_account(&td, ns, sa).map_err(|e| err(false, e.to_string()))?;
    let token = std::fs::read_to_string(&settings.token_file).map_err(|e| {
        err(
            false,
            format!("reading {}: {e}", settings.token_file.display()),
        )
    })?;
    let channel = ward_lib_api::ca_client::svid_channel(
        settings.address,
        state.bundle.clone(),
        control_id,
        None,
    )
    .map_err(|e| err(false, e.to_string()))?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);

    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    for type_url in TYPES {
        let held = store.held(type_url);
        let _ = tx
            .send(DeltaDiscoveryRequest {
                node: Some(Node {
                    id: state.node.clone(),
                    cluster: String::new(),
                }),
                type_url: type_url.to_owned(),
                initial_resource_versions: held,
                ..Default::default()
            })
            .await;
    }
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let auth = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| err(false, "the token is not valid header text".into()))?;
    request.metadata_mut().insert("authorization", auth);
    let mut responses = client
        .delta_aggregated_resources(request)
        .await
        .map_err(|s| err(false, format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    tracing::info!(address = %settings.address, "control stream open");
    state.control.connected.store(true, Ordering::Relaxed);
    let _disconnected = Disconnected(state);

    let mut staged: Vec<DeltaDiscoveryResponse> = Vec::new();
    loop {
        let msg = responses
            .message()
            .await
            .map_err(|s| err(applied, format!("{:?}: {}", s.code(), s.message())))?;
        let Some(resp) = msg else {
            return Err(err(
                applied,
                "the control component closed the stream".into(),
            ));
        };
        let last = resp.type_url == POLICY;
        staged.push(resp);
        if !last {
            continue;
        }
        let push = std::mem::take(&mut staged);
        let seq = push
            .last()
            .map(|r| r.system_version_info.clone())
            .unwrap_or_default();
        let outcome = store.apply(&state.node, &push, &seq);
        let error = match outcome {
            Ok(snapshot) => {
                let bytes: usize = push
                    .iter()
                    .flat_map(|r| &r.resources)
                    .filter_map(|r| r.resource.as_ref())
                    .map(|a| a.value.len())
                    .sum();
                state.install(snapshot);
                state.control.applied.fetch_add(1, Ordering::Relaxed);
                state
                    .control
                    .last_push_bytes
                    .store(bytes as u64, Ordering::Relaxed);
                applied = true;
                None
            }
            Err(e) => {
                state.control.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(push = %seq, error = %e, "control update rejected (NACK); the previous configuration stays in force");
                Some(ward_lib_api::rpc::Status {
                    code: tonic::Code::InvalidArgument as i32,
                    message: e,
                    details: Vec::new(),
                })
            }
        };
        for r in &push {
            tx.send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                error_detail: error.clone(),
                ..Default::default()
            })
            .await
            .map_err(|_| err(applied, "the request stream closed".into()))?;
        }
    }
}

/// Marks the stream closed when a session ends, however it ends.
struct Disconnected<'a>(&'a State);

impl Drop for Disconnected<'_> {
    fn drop(&mut self) {
        self.0.control.connected.store(false, Ordering::Relaxed);
    }
}

/// What the proxy holds of each type (versions), and the resolved forms it changes in place
/// between pushes.
#[derive(Default)]
pub struct Store {
    mesh: Option<(String, pb::MeshConfig)>,
    workloads: HashMap<Arc<str>, String, foldhash::fast::RandomState>,
    services: HashMap<Arc<str>, String, foldhash::fast::RandomState>,
    policies: HashMap<String, (String, String)>,
    checked_mesh: Option<Mesh>,
    policy_set: Option<Arc<PolicySet>>,
    table: AddressTable,
}

/// One pending change to a held resource.
enum Change<T> {
    Put(String, String, T),
    Remove(String),
}

impl Store {
    /// Name → version of what is held of `type_url` (sent when resuming).
    pub fn held(&self, type_url: &str) -> BTreeMap<String, String> {
        match type_url {
            MESH_CONFIG => self
                .mesh
                .iter()
                .map(|(v, _)| (MESH_NAME.to_owned(), v.clone()))
                .collect(),
            WORKLOAD => self
                .workloads
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
            SERVICE => self
                .services
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
            POLICY => self
                .policies
                .iter()
                .map(|(n, (v, _))| (n.clone(), v.clone()))
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    /// Applies a push as one unit: the new snapshot, or the reason it cannot be used (and
    /// then nothing held changes).
    pub fn apply(
        &mut self,
        node: &str,
        push: &[DeltaDiscoveryResponse],
        seq: &str,
    ) -> Result<Snapshot, String> {
        let mut mesh = Vec::new();
        let mut workloads = Vec::new();
        let mut services = Vec::new();
        let mut policies = Vec::new();
        for r in push {
            match r.type_url.as_str() {
                MESH_CONFIG => decode_into(r, &mut mesh)?,
                WORKLOAD => decode_into(r, &mut workloads)?,
                SERVICE => decode_into(r, &mut services)?,
                POLICY => decode_into::<pb::Policy>(r, &mut policies)?,
                other => return Err(format!("unknown resource type {other:?}")),
            }
        }

        // Mesh and policies first: workloads are resolved with them.
        let mesh_changed = !mesh.is_empty();
        let mut next_mesh = self.mesh.clone();
        for c in mesh {
            match c {
                Change::Put(n, v, m) if n == MESH_NAME => next_mesh = Some((v, m)),
                Change::Put(n, ..) => {
                    return Err(format!(
                        "MeshConfig {n}: the one MeshConfig is named {MESH_NAME:?}"
                    ))
                }
                Change::Remove(_) => next_mesh = None,
            }
        }
        let (_, mesh_pb) = next_mesh
            .as_ref()
            .ok_or("no MeshConfig: the trust domain and bundle are unknown")?;
        let checked = match (&self.checked_mesh, mesh_changed) {
            (Some(m), false) => m.clone(),
            _ => Mesh::from_pb(mesh_pb).map_err(|e| e.to_string())?,
        };
        let td_changed = self
            .checked_mesh
            .as_ref()
            .is_some_and(|m| m.trust_domain != checked.trust_domain);
        let policies_changed = mesh_changed || !policies.is_empty() || self.policy_set.is_none();
        let mut next_policies = self.policies.clone();
        let policy_set = if policies_changed {
            for c in policies {
                match c {
                    Change::Put(n, v, p) => {
                        next_policies.insert(n, (v, p.document));
                    }
                    Change::Remove(n) => {
                        next_policies.remove(&n);
                    }
                }
            }
            let mut docs: Vec<(&str, &str)> = next_policies
                .iter()
                .map(|(n, (_, d))| (n.as_str(), d.as_str()))
                .collect();
            docs.sort();
            Arc::new(
                PolicySet::parse(&checked.root_namespace, checked.trust(), docs).map_err(|es| {
                    es.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                })?,
            )
        } else {
            self.policy_set.clone().ok_or("no policy set")?
        };

        // The address table, changed in a transaction: dropped on error, it restores itself.
        let mut txn = self.table.begin();
        txn.reserve(workloads.len());
        let mut held_workloads = Vec::with_capacity(workloads.len());
        for c in workloads {
            match c {
                Change::Put(n, v, w) => {
                    let r = resources::workload_from_pb(
                        &n,
                        w,
                        &checked.trust_domain,
                        &policy_set,
                        node,
                    )
                    .map_err(|e| e.to_string())?;
                    let n: Arc<str> = n.into();
                    txn.put_workload(&n, Arc::new(r))
                        .map_err(|e| e.to_string())?;
                    held_workloads.push((n, Some(v)));
                }
                Change::Remove(n) => {
                    let n: Arc<str> = n.into();
                    txn.remove_workload(&n);
                    held_workloads.push((n, None));
                }
            }
        }
        if td_changed {
            return Err("the trust domain changed; proxies must be restarted to follow it".into());
        }
        if policies_changed {
            // Local workloads' policies (and modes) follow the new policy set (those put by
            // this push already have them; recomputing a node's few workloads is cheap).
            let local: Vec<(Arc<str>, Arc<Workload>)> = txn
                .workloads()
                .filter(|(_, w)| w.node == node)
                .map(|(n, w)| (n.clone(), w.clone()))
                .collect();
            for (n, w) in local {
                let r = resources::with_policies(&w, &policy_set, node);
                txn.put_workload(&n, Arc::new(r))
                    .map_err(|e| e.to_string())?;
            }
        }
        let mut held_services = Vec::new();
        for c in services {
            match c {
                Change::Put(n, v, s) => {
                    let addrs = resources::service_from_pb(&n, &s).map_err(|e| e.to_string())?;
                    let n: Arc<str> = n.into();
                    txn.put_service(&n, addrs).map_err(|e| e.to_string())?;
                    held_services.push((n, Some(v)));
                }
                Change::Remove(n) => {
                    let n: Arc<str> = n.into();
                    txn.remove_service(&n);
                    held_services.push((n, None));
                }
            }
        }
        txn.commit();
        for (n, v) in held_workloads {
            match v {
                Some(v) => self.workloads.insert(n, v),
                None => self.workloads.remove(&n),
            };
        }
        for (n, v) in held_services {
            match v {
                Some(v) => self.services.insert(n, v),
                None => self.services.remove(&n),
            };
        }
        self.policies = next_policies;
        self.mesh = next_mesh;
        self.checked_mesh = Some(checked.clone());
        self.policy_set = Some(policy_set.clone());
        Ok(Snapshot::cut(
            &checked,
            policy_set,
            &self.table,
            seq.to_owned(),
        ))
    }
}

/// Decodes a response's resources of type `T`; every error names the resource.
fn decode_into<T: Message + Default>(
    r: &DeltaDiscoveryResponse,
    out: &mut Vec<Change<T>>,
) -> Result<(), String> {
    let short = short_type(&r.type_url);
    for res in &r.resources {
        let any = res
            .resource
            .as_ref()
            .ok_or_else(|| format!("{short} {}: no payload", res.name))?;
        if any.type_url != r.type_url {
            return Err(format!(
                "{short} {}: payload is a {}, not a {short}",
                res.name, any.type_url
            ));
        }
        let msg = T::decode(any.value.clone())
            .map_err(|e| format!("{short} {}: undecodable: {e}", res.name))?;
        out.push(Change::Put(res.name.clone(), res.version.clone(), msg));
    }
    out.extend(r.removed_resources.iter().cloned().map(Change::Remove));
    Ok(())
}

#[cfg(test)]
mod tests;
