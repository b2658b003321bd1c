//! Policy status and Events, and the one replica that writes them.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ward_tests_fake_apiserver::FakeApiServer;

/// A control component in its own runtime (dropping it kills it, Lease unreleased, as a crash).
struct Replica {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    leads: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    fn start(api_url: String, instance: &str) -> Replica {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let leads = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = leads.clone();
        let instance = instance.to_owned();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            rt.block_on(async move {
                let url = api_url.parse().unwrap_or_else(|e| panic!("{e}"));
                let client = kube::Client::try_from(kube::Config::new(url))
                    .unwrap_or_else(|e| panic!("{e}"));
                let args = <ward_control::runtime::Args as clap::Parser>::parse_from([
                    "ward-control",
                    "--instance",
                    &instance,
                    "--lease-duration",
                    "3",
                ]);
                let running = ward_control::runtime::start(args, Some(client))
                    .await
                    .unwrap_or_else(|e| panic!("{e:#}"));
                let mut leader = running
                    .leader
                    .clone()
                    .unwrap_or_else(|| panic!("no leader election"));
                tokio::spawn(async move {
                    loop {
                        flag.store(
                            *leader.borrow_and_update(),
                            std::sync::atomic::Ordering::SeqCst,
                        );
                        if leader.changed().await.is_err() {
                            return;
                        }
                    }
                });
                let _ = stopped.await;
                // A crash, not a shutdown: the Lease is not released (the receiver the lease
                // manager watches for closing never closes; its task dies with the runtime).
                std::mem::forget(running);
            });
            // Dropping the runtime here aborts every task: nothing is released cleanly.
        });
        Replica {
            stop: Some(stop),
            leads,
            thread: Some(thread),
        }
    }

    fn leads(&self) -> bool {
        self.leads.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn kill(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.ward.dev/v1", "kind": "AuthorizationPolicy",
           "metadata": {"namespace": "shop", "name": name}, "spec": spec})
}

fn condition<'a>(o: &'a Value, ty: &str) -> &'a Value {
    o["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == ty))
        .unwrap_or(&Value::Null)
}

async fn wait_for(
    api: &FakeApiServer,
    what: &str,
    within: Duration,
    pred: impl Fn(&FakeApiServer) -> bool,
) {
    let start = Instant::now();
    while !pred(api) {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn get(api: &FakeApiServer, name: &str) -> Value {
    api.get("security.ward.dev/v1", "AuthorizationPolicy", "shop", name)
        .unwrap_or(Value::Null)
}

fn status_writes(api: &FakeApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| {
            r.starts_with("PATCH /apis/security.ward.dev/v1/namespaces/shop/authorizationpolicies/")
                && r.contains("/status?")
        })
        .count()
}

fn events_for(api: &FakeApiServer, name: &str) -> Vec<Value> {
    api.list("events.k8s.io/v1", "Event")
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_events_and_the_one_writer() {
    let api = FakeApiServer::start("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"ward.dev/mesh": "enabled"}}}));
    api.apply(policy(
        "web",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["22"]}}]}]}),
    ));
    let a = Replica::start(api.url(), "replica-a");
    // Give A the Lease before B starts, so which one leads is known.
    wait_for(&api, "replica-a to lead", Duration::from_secs(10), |_| {
        a.leads()
    })
    .await;
    let b = Replica::start(api.url(), "replica-b");

    // 1. Status by server-side apply, with the documented shape and field manager.
    wait_for(&api, "a status on web", Duration::from_secs(10), |api| {
        condition(&get(api, "web"), "Accepted")["status"] == "True"
    })
    .await;
    let o = get(&api, "web");
    assert_eq!(o["status"]["observedGeneration"], 1, "{o:#}");
    assert_eq!(condition(&o, "Accepted")["reason"], "Accepted");
    assert_eq!(condition(&o, "Enforced")["reason"], "AsWritten");
    assert_eq!(condition(&o, "Enforced")["observedGeneration"], 1);
    assert!(condition(&o, "Accepted")["lastTransitionTime"].is_string());
    let managers: Vec<(Value, Value, Value)> = o["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["manager"].clone(),
                f["operation"].clone(),
                f["subresource"].clone(),
            )
        })
        .collect();
    assert!(
        managers.contains(&(json!("ward-control"), json!("Apply"), json!("status"))),
        "status not applied by ward-control: {managers:?}"
    );

    // 2. A change of the policy: generation 2, conditions follow; B (not leading) writes nothing.
    assert!(!b.leads());
    let writes_before = status_writes(&api);
    api.apply(policy(
        "web",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["22", "23"]}}]}]}),
    ));
    wait_for(
        &api,
        "observedGeneration 2",
        Duration::from_secs(10),
        |api| get(api, "web")["status"]["observedGeneration"] == 2,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_writes(&api) - writes_before,
        1,
        "one write for one change, by the leader only"
    );

    // 3. An invalid edit: Accepted False with the CLI's message; the last valid generation stays
    //    in force; one Event, however often the state is resynchronized.
    api.apply(policy(
        "web",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["ssh"]}}]}]}),
    ));
    wait_for(&api, "Accepted=False", Duration::from_secs(10), |api| {
        condition(&get(api, "web"), "Accepted")["status"] == "False"
    })
    .await;
    let o = get(&api, "web");
    assert_eq!(condition(&o, "Accepted")["reason"], "Invalid");
    let message = condition(&o, "Accepted")["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        message.contains("rules[0].to[0].operation.ports[0]: \"ssh\" is not a port number"),
        "{message}"
    );
    assert_eq!(condition(&o, "Enforced")["reason"], "LastValidGeneration");
    wait_for(&api, "an Event", Duration::from_secs(5), |api| {
        !events_for(api, "web").is_empty()
    })
    .await;
    for _ in 0..3 {
        api.drop_and_hold_watches();
        api.compact(); // every watch re-lists: a full resync
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    api.apply(policy("other", json!({"rules": [{}]}))); // unrelated churn
    tokio::time::sleep(Duration::from_millis(700)).await;
    let events = events_for(&api, "web");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["reason"], "Invalid");
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["reportingController"], "ward-control");

    // 3b. A status write the API server fails is retried, with nothing else changing.
    api.fail_next(
        "PATCH /apis/security.ward.dev/v1/namespaces/shop/authorizationpolicies/late/status",
        2,
    );
    api.apply(policy(
        "late",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["25"]}}]}]}),
    ));
    wait_for(
        &api,
        "the status of late despite failed writes",
        Duration::from_secs(15),
        |api| condition(&get(api, "late"), "Accepted")["status"] == "True",
    )
    .await;

    // 4. The leader dies without releasing the Lease: B takes over within the lease duration,
    //    and a change made meanwhile does not leave a stale condition.
    a.kill();
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "ward-system",
            "ward-control",
        )
        .unwrap_or_default();
    assert_eq!(
        lease["spec"]["holderIdentity"], "replica-a",
        "a crash leaves the Lease held: {lease:#}"
    );
    api.apply(policy(
        "web",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["2222"]}}]}]}),
    ));
    let killed = Instant::now();
    let start = Instant::now();
    loop {
        let o = get(&api, "web");
        if o["status"]["observedGeneration"] == 4 && condition(&o, "Accepted")["status"] == "True" {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let reqs = api.requests();
            panic!(
                "replica-b did not take over and write within 10 s; lease: {:#}\nstatus: {:#}\nlast requests:\n{}",
                api.get("coordination.k8s.io/v1", "Lease", "ward-system", "ward-control").unwrap_or_default(),
                o["status"],
                reqs[reqs.len().saturating_sub(25)..].join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.leads());
    // The Lease lasts 3 s from A's last renewal; B notices within its own retry period after.
    let handover = killed.elapsed();
    eprintln!("handover and status rewritten {handover:?} after the leader died");
    assert!(
        handover < Duration::from_secs(3 + 2),
        "handover took {handover:?}"
    );
    b.kill();
}
