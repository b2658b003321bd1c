//! Watches survive dropped connections and `410 Gone` with no object lost or duplicated.

use ward_tests_fake_apiserver::FakeApiServer;

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_survive_dropped_connections_and_410_gone_with_nothing_lost_or_duplicated() {
    let api = FakeApiServer::start("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    api.apply(namespace("shop", true));
    api.apply(namespace("legacy", false));
    api.apply(node("node-1", "10.0.0.1"));
    api.apply(node("node-2", "10.0.0.2"));
    for i in 0..5 {
        api.apply(pod(
            "shop",
            &format!("web-{i}"),
            "node-1",
            &format!("10.1.0.{}", i + 2),
            "web",
        ));
    }
    api.apply(pod("legacy", "old-0", "node-2", "10.2.0.2", "old"));
    let mut views = start_index(&api);
    let v = wait_view(&mut views, "initial sync", |v| v.workloads.len() == 5).await;
    assert_eq!(
        names(&v),
        [
            "shop/web-0",
            "shop/web-1",
            "shop/web-2",
            "shop/web-3",
            "shop/web-4"
        ]
    );

    // 1. Connections drop; changes happen meanwhile; the watches resume from their
    //    resourceVersion and see every change once.
    api.drop_watches();
    api.delete("v1", "Pod", "shop", "web-0");
    api.apply(pod("shop", "web-5", "node-2", "10.2.0.7", "web"));
    api.apply(namespace("legacy", true));
    let v = wait_view(&mut views, "changes made while the watches were cut", |v| {
        names(v)
            == [
                "legacy/old-0",
                "shop/web-1",
                "shop/web-2",
                "shop/web-3",
                "shop/web-4",
                "shop/web-5",
            ]
    })
    .await;
    assert_eq!(v.bindings["node-2"].len(), 2);
    let pod_lists = |api: &FakeApiServer| {
        api.requests()
            .iter()
            .filter(|r| is_list(r, "/api/v1/pods"))
            .count()
    };
    assert_eq!(
        pod_lists(&api),
        1,
        "a dropped watch resumes from its resourceVersion; it must not re-list"
    );

    // 2. Connections drop again, changes happen, and the history is compacted: resuming gets
    //    410 Gone, the watchers re-list, and deletions made meanwhile are not missed.
    let lists_before = pod_lists(&api);
    api.drop_and_hold_watches();
    api.delete("v1", "Pod", "shop", "web-1");
    api.delete("v1", "Pod", "legacy", "old-0");
    api.apply(pod("shop", "web-6", "node-2", "10.2.0.8", "web"));
    api.compact();
    let v = wait_view(&mut views, "changes made before a 410 Gone", |v| {
        names(v)
            == [
                "shop/web-2",
                "shop/web-3",
                "shop/web-4",
                "shop/web-5",
                "shop/web-6",
            ]
    })
    .await;
    let lists_after = pod_lists(&api);
    assert!(
        lists_after > lists_before,
        "the pod watcher did not re-list after 410 Gone"
    );
    let gone: Vec<String> = api.requests();
    assert!(
        gone.iter()
            .any(|r| r.contains("/api/v1/pods?") && r.contains("watch=true")),
        "no watch requests seen"
    );
    // Nothing duplicated: each published workload once, each binding once.
    assert_eq!(v.workloads.len(), 5);
    assert_eq!(v.bindings.get("node-1").map(|b| b.len()), Some(1));
    assert!(!v.bindings.contains_key("node-2") || v.bindings["node-2"].len() == 1);
}

fn is_list(request: &str, path: &str) -> bool {
    request.starts_with(&format!("GET {path}")) && !request.contains("watch=true")
}
