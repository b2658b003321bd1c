//! Policy status and Events: what Kubernetes users read with `kubectl get` / `describe`.
//!
//! Every policy object gets `status.observedGeneration` and two conditions:
//! - `Accepted`: `True`, or `False` with reason `Invalid` and the same messages as
//!   `ward policy validate`;
//! - `Enforced`: what proxies enforce compared with what was written — `AsWritten`,
//!   `FailClosedRewrites` (HTTP-only fields on non-HTTP ports), `DryRun`,
//!   `TargetRefsUnsupported`, `LastValidGeneration` (an invalid edit: the last valid
//!   generation stays in force), `FailClosed` (never valid: a fail-closed stand-in is enforced)
//!   or `NotEnforced`.
//!
//! Only the replica holding the Lease writes (all replicas compute); writes are server-side
//! apply of the status subresource under field manager `ward-control`, and only when the
//! result differs from what the object already says (a condition keeps its
//! `lastTransitionTime` while its status and reason stay). An Event (events.k8s.io/v1) is
//! recorded only when a write changes a policy's verdict to invalid or its enforcement to a
//! rewrite — so a rejected policy produces one Event, not one per resync — and kube's recorder
//! folds repeats into a series, as Kubernetes does.

use std::sync::Arc;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{json, Value};
use tokio::sync::watch;
use ward_lib_crds::{PolicyCondition, PolicyStatus};

use crate::model::PolicyKind;
use crate::policies::{EnforcedFrom, PolicyState, Verdict};

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "ward-control";

/// Pause before a failed status write is tried again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Writes statuses while `leader` is true (see the module docs).
pub struct StatusWriter {
    client: kube::Client,
    leader: watch::Receiver<bool>,
    policies: watch::Receiver<Arc<Vec<PolicyState>>>,
    recorder: Recorder,
    /// What this replica last wrote, by uid: until the watch brings the object back with it,
    /// this is what the object says (no second write, no second Event).
    written: std::collections::HashMap<String, PolicyStatus>,
}

impl StatusWriter {
    pub fn new(
        client: kube::Client,
        leader: watch::Receiver<bool>,
        policies: watch::Receiver<Arc<Vec<PolicyState>>>,
        instance: String,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(instance),
            },
        );
        Self {
            client,
            leader,
            policies,
            recorder,
            written: std::collections::HashMap::new(),
        }
    }

    /// Runs until the policy channel closes.
    pub async fn run(mut self) {
        loop {
            if !*self.leader.borrow() {
                // Another replica may write while this one does not lead.
                self.written.clear();
            }
            if self.leader.wait_for(|l| *l).await.is_err() {
                return;
            }
            let states = self.policies.borrow_and_update().clone();
            // Forget what was written for policies that are gone.
            let live: std::collections::HashSet<&str> = states
                .iter()
                .filter_map(|s| s.object.uid.as_deref())
                .collect();
            self.written.retain(|uid, _| live.contains(uid.as_str()));
            let mut failed = false;
            for s in states.iter() {
                if !*self.leader.borrow() {
                    break;
                }
                if let Err(e) = self.reconcile(s).await {
                    failed = true;
                    tracing::warn!(policy = %s.object.key, error = %e, "writing policy status failed; retrying");
                }
            }
            // A failed write is retried after a pause even if nothing changes, so no condition
            // stays stale because the API server was briefly unavailable.
            let retry = async {
                if failed {
                    tokio::time::sleep(RETRY_AFTER).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                r = self.policies.changed() => if r.is_err() { return },
                r = self.leader.changed() => if r.is_err() { return },
                () = retry => {}
            }
        }
    }

    async fn reconcile(&mut self, s: &PolicyState) -> Result<(), kube::Error> {
        let Some(uid) = s.object.uid.clone() else {
            return Ok(()); // local files have no status
        };
        let on_object: Option<PolicyStatus> = s
            .object
            .status
            .clone()
            .and_then(|v| serde_json::from_value(v).ok());
        let current = match (self.written.get(&uid), on_object) {
            (Some(w), Some(o)) if o != *w && o.observed_generation <= w.observed_generation => {
                Some(w.clone())
            }
            (Some(w), None) => Some(w.clone()),
            (_, o) => o,
        };
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let desired = desired_status(s, current.as_ref(), &now);
        if current.as_ref() == Some(&desired) {
            return Ok(());
        }
        let (api_version, plural) = api_of(s.object.kind);
        let gvk = GroupVersionKind::gvk(
            api_version.split('/').next().unwrap_or(""),
            "v1",
            s.object.kind.as_str(),
        );
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &s.object.key.namespace, &ar);
        let patch = json!({
            "apiVersion": api_version,
            "kind": s.object.kind.as_str(),
            "status": desired,
        });
        api.patch_status(
            &s.object.key.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        self.written.insert(uid.clone(), desired.clone());
        tracing::info!(policy = %s.object.key, kind = s.object.kind.as_str(), generation = s.object.generation, "policy status written");
        if let Some(event) = transition_event(current.as_ref(), &desired) {
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(api_version.into()),
                kind: Some(s.object.kind.as_str().into()),
                name: Some(s.object.key.name.to_string()),
                namespace: Some(s.object.key.namespace.to_string()),
                uid: Some(uid),
                ..Default::default()
            };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(policy = %s.object.key, error = %e, "recording an Event failed");
            }
        }
        Ok(())
    }
}

fn api_of(kind: PolicyKind) -> (&'static str, &'static str) {
    match kind {
        PolicyKind::AuthorizationPolicy => ("security.ward.dev/v1", "authorizationpolicies"),
        PolicyKind::PeerAuthentication => ("security.ward.dev/v1", "peerauthentications"),
        PolicyKind::IstioAuthorizationPolicy => ("security.istio.io/v1", "authorizationpolicies"),
        PolicyKind::IstioPeerAuthentication => ("security.istio.io/v1", "peerauthentications"),
    }
}

/// The status a policy should have. Conditions whose status and reason are unchanged keep
/// their `lastTransitionTime` from `current`.
pub fn desired_status(s: &PolicyState, current: Option<&PolicyStatus>, now: &str) -> PolicyStatus {
    let generation = Some(s.object.generation);
    let (accepted, accepted_reason, accepted_message) = match &s.verdict {
        Verdict::Accepted { .. } => ("True", "Accepted", "the policy is valid".to_owned()),
        Verdict::Invalid { errors } => ("False", "Invalid", errors.join("\n")),
    };
    let (enforced, enforced_reason, enforced_message) = enforcement(s);
    let condition = |ty: &str, status: &str, reason: &str, message: String| {
        let since = current
            .and_then(|c| c.conditions.iter().find(|c| c.r#type == ty))
            .filter(|c| c.status == status && c.reason == reason)
            .map_or_else(|| now.to_owned(), |c| c.last_transition_time.clone());
        PolicyCondition {
            r#type: ty.into(),
            status: status.into(),
            observed_generation: generation,
            last_transition_time: since,
            reason: reason.into(),
            message,
        }
    };
    PolicyStatus {
        observed_generation: generation,
        conditions: vec![
            condition("Accepted", accepted, accepted_reason, accepted_message),
            condition("Enforced", enforced, enforced_reason, enforced_message),
        ],
    }
}

/// The `Enforced` condition of a policy: status, reason and message (also the admission
/// webhook's warnings).
pub fn enforcement(s: &PolicyState) -> (&'static str, &'static str, String) {
    match (&s.verdict, &s.enforced) {
        (_, None) => (
            "False",
            "NotEnforced",
            "nothing of this policy is enforced: it is invalid, and an invalid AUDIT policy changes no verdict".to_owned(),
        ),
        (_, Some(e)) => match &e.from {
            EnforcedFrom::LastGood { generation } => (
                "True",
                "LastValidGeneration",
                format!("this generation is invalid; generation {generation} stays in force until it is fixed"),
            ),
            EnforcedFrom::FailClosed { what } => (
                "True",
                "FailClosed",
                format!("this policy was never valid; it is enforced as {what} for its scope until it is fixed (skipping it would fail open)"),
            ),
            EnforcedFrom::Current if e.targets_only => (
                "False",
                "TargetRefsUnsupported",
                "attached to gateways or waypoints with targetRef(s); ward has none, so this policy applies to no workload".to_owned(),
            ),
            EnforcedFrom::Current if e.dry_run => (
                "False",
                "DryRun",
                "dry-run: evaluated, logged and counted, never enforced".to_owned(),
            ),
            EnforcedFrom::Current => match &s.verdict {
                Verdict::Accepted { warnings } if !warnings.is_empty() => (
                    "True",
                    "FailClosedRewrites",
                    warnings.join("\n"),
                ),
                _ => ("True", "AsWritten", "enforced as written".to_owned()),
            },
        },
    }
}

/// The Event a status change calls for: a policy becoming invalid, or its enforcement
/// becoming a rewrite or fail-closed stand-in.
fn transition_event(before: Option<&PolicyStatus>, after: &PolicyStatus) -> Option<Event> {
    let reason_of = |s: Option<&PolicyStatus>, ty: &str| {
        s.and_then(|s| s.conditions.iter().find(|c| c.r#type == ty))
            .map(|c| (c.reason.clone(), c.message.clone(), c.observed_generation))
    };
    let (a_reason, a_message, a_gen) = reason_of(Some(after), "Accepted")?;
    if a_reason == "Invalid"
        && reason_of(before, "Accepted").map(|(r, _, g)| (r, g)) != Some((a_reason.clone(), a_gen))
    {
        return Some(Event {
            type_: EventType::Warning,
            reason: "Invalid".into(),
            note: Some(truncate(&a_message)),
            action: "Validate".into(),
            secondary: None,
        });
    }
    let (e_reason, e_message, e_gen) = reason_of(Some(after), "Enforced")?;
    let rewrite = matches!(
        e_reason.as_str(),
        "FailClosedRewrites" | "FailClosed" | "LastValidGeneration"
    );
    if rewrite
        && reason_of(before, "Enforced").map(|(r, _, g)| (r, g)) != Some((e_reason.clone(), e_gen))
    {
        return Some(Event {
            type_: EventType::Warning,
            reason: e_reason,
            note: Some(truncate(&e_message)),
            action: "Enforce".into(),
            secondary: None,
        });
    }
    None
}

/// Event notes are limited to 1 kB.
fn truncate(s: &str) -> String {
    if s.len() <= 1024 {
        return s.to_owned();
    }
    let mut end = 1020;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The status of `Value` form (tests).
pub fn status_value(s: &PolicyStatus) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}
