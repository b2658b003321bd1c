//! `ward policy explain`: a human-readable trace of one decision — which policies applied to
//! the workload (and which were skipped and why), which rules matched, and the field that
//! decided each rule.

use std::fmt::Write as _;

use crate::eval::Tracer;
use crate::index::PolicySet;
use crate::model::Policy;
use crate::request::{decide, Prepared};

#[derive(Default)]
struct Trace {
    out: String,
    rule_fields: Vec<String>,
}

impl Tracer for Trace {
    fn policy(&mut self, p: &Policy) {
        let dry = if p.dry_run {
            " (dry-run: reported, not enforced)"
        } else {
            ""
        };
        let _ = writeln!(self.out, "  {} {}{dry}", p.action, p.id);
    }

    fn rule(&mut self, index: usize, matched: Option<bool>) {
        let what = match matched {
            None => "never matches on this port (HTTP-only attributes on a port that is not HTTP)",
            Some(true) => "MATCHES",
            Some(false) => "does not match",
        };
        let _ = writeln!(self.out, "    rules[{index}] {what}");
        for f in self.rule_fields.drain(..) {
            let _ = writeln!(self.out, "      {f}");
        }
    }

    fn field(&mut self, path: &'static str, ok: bool) {
        self.rule_fields
            .push(format!("{} {path}", if ok { "✓" } else { "✗" }));
    }

    fn condition(&mut self, index: usize, ok: bool) {
        self.rule_fields
            .push(format!("{} when[{index}]", if ok { "✓" } else { "✗" }));
    }
}

/// Explains the decision for `req`.
pub fn explain(set: &PolicySet, req: &Prepared) -> String {
    let mut out = String::new();
    let labels: Vec<String> = req.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let a = req.attributes();
    let _ = writeln!(
        out,
        "destination: namespace {} labels {{{}}} {}:{} ({})",
        req.namespace,
        labels.join(","),
        a.destination_ip,
        a.destination_port,
        match a.protocol {
            crate::eval::Protocol::Tcp => "tcp",
            crate::eval::Protocol::Http => "http",
        }
    );
    let _ = writeln!(
        out,
        "source: {} from {}",
        a.peer
            .map(|p| format!("spiffe://{}", p.principal))
            .unwrap_or_else(|| "no identity (plaintext)".into()),
        a.source_ip
    );
    if let Some(h) = a.http {
        let _ = writeln!(out, "request: {} {} host {:?}", h.method, h.path, h.host);
    }
    let wp = set.for_workload(&req.namespace, &req.labels);
    let applying: Vec<&Policy> = wp.policies().iter().map(|p| &**p).collect();
    let skipped: Vec<String> = set
        .policies()
        .iter()
        .filter(|p| p.id.namespace == req.namespace || p.id.namespace == set.root_namespace())
        .filter(|p| !applying.iter().any(|q| q.id == p.id))
        .map(|p| {
            let why = if p.targets_only {
                "attached by targetRefs, applies to no workload".to_owned()
            } else {
                let sel: Vec<String> = p
                    .selector
                    .iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!(
                    "selector {{{}}} does not select the workload",
                    sel.join(",")
                )
            };
            format!("  {} {}: {why}", p.action, p.id)
        })
        .collect();
    let _ = writeln!(out, "policies applying to the workload: {}", applying.len());
    let mut trace = Trace::default();
    // The trace is what matters here; the verdict below also covers pre-policy refusals.
    let _ = wp.evaluate_traced(&a, &mut trace);
    out.push_str(&trace.out);
    if !skipped.is_empty() {
        let _ = writeln!(out, "policies in scope that do not apply:");
        for s in skipped {
            let _ = writeln!(out, "{s}");
        }
    }
    let v = decide(set, req);
    let _ = writeln!(out, "verdict: {} — {}", v.decision.to_uppercase(), v.reason);
    if !v.audit.is_empty() {
        let _ = writeln!(out, "audited by: {}", v.audit.join(", "));
    }
    out
}
