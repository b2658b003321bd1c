//! Policy documents end to end: YAML (or JSON) → validate → compile → evaluate against an
//! arbitrary request. No panic anywhere, and every request gets a decision, allow or deny.
//! Input: the policy text, a NUL byte, then bytes the request's fields are drawn from (so the
//! example policies are seeds as they are).
#![no_main]

use std::collections::BTreeMap;
use std::net::IpAddr;

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use ward_lib_policy::request::{decide, Destination, EvalRequest, ProtocolName, Request, Source};
use ward_lib_policy::{PolicySet, TrustConfig};

#[derive(Arbitrary, Debug)]
struct Input {
    http: bool,
    namespace: String,
    labels: BTreeMap<String, String>,
    destination_ip: IpAddr,
    port: u16,
    principal: Option<String>,
    source_ip: IpAddr,
    remote_ip: Option<IpAddr>,
    method: String,
    path: String,
    host: String,
    headers: BTreeMap<String, String>,
    unix_seconds: i32,
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let Ok(policies) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let Ok(input) = Input::arbitrary(&mut Unstructured::new(data.get(split + 1..).unwrap_or(&[])))
    else {
        return;
    };
    let trust = TrustConfig {
        trust_domain: "cluster.local".into(),
        aliases: vec!["old.example".into()],
    };
    let Ok(set) = PolicySet::parse("ward-system", trust, [("fuzz.yaml", policies)]) else {
        return;
    };
    let req = EvalRequest {
        destination: Destination {
            namespace: input.namespace,
            labels: input.labels,
            ip: input.destination_ip,
            port: input.port,
            protocol: if input.http {
                ProtocolName::Http
            } else {
                ProtocolName::Tcp
            },
        },
        source: Source {
            principal: input.principal,
            ip: input.source_ip,
            remote_ip: input.remote_ip,
        },
        connection: None,
        request: input.http.then(|| Request {
            method: input.method,
            path: input.path,
            host: input.host,
            headers: input.headers,
            jwt_claims: None,
        }),
        time: None,
    };
    let now = jiff::Timestamp::from_second(i64::from(input.unix_seconds)).unwrap_or_default();
    let Ok(prepared) = req.prepare(now) else {
        return;
    };
    let verdict = decide(&set, &prepared);
    assert!(
        verdict.decision == "allow" || verdict.decision == "deny",
        "no decision: {verdict:?}"
    );
});
