//! With 60 s certificates a long-lived connection survives several rotations; with the CA
//! stopped, traffic continues on the old certificate, renewal retries with backoff, and
//! recovers when the CA returns.

use std::time::{Duration, Instant};

use ward_tests::{Cluster, SERIAL};

use crate::two_by_two;

fn renewals(c: &Cluster, node: usize) -> u64 {
    c.admin(node, "/certs")
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["renewals"].as_u64().unwrap_or(0))
                .min()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn rotation_and_ca_outage() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &two_by_two());
    c.start_ca();
    c.write_mesh("");
    c.serve_echo("web-2");
    c.serve_http("web-2");
    c.start_proxy(1, &["--cert-ttl", "60s"]);
    c.start_proxy(2, &["--cert-ttl", "60s"]);
    let web2 = c.pod("web-2").ip.clone();
    let mut live = c.echo_conn("client-1", "web-2");
    let mut ping = |n: usize| live.ping(&format!("ping-{n:04}"));
    // Several rotations (renewal at ~half of 60 s) with the connection in use throughout.
    let start = Instant::now();
    let mut n = 0;
    while renewals(&c, 1) < 2 || renewals(&c, 2) < 2 {
        ping(n);
        n += 1;
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "certificates were not renewed twice in 150 s"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    ping(n);
    assert_eq!(
        c.curl(
            "client-1",
            &format!("http://{web2}:8080/after-rotation"),
            &[]
        )
        .0,
        "200"
    );

    // CA down: renewals fail and are retried, traffic continues on the current certificate.
    c.stop_ca();
    let before = renewals(&c, 1);
    let down = Instant::now();
    let mut retried = false;
    while down.elapsed() < Duration::from_secs(50) {
        ping(n);
        n += 1;
        retried = c
            .log_of("proxy-1")
            .matches("certificate request failed")
            .count()
            >= 2;
        if retried {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        retried,
        "no retried renewal while the CA was down:\n{}",
        c.log_of("proxy-1")
    );
    assert_eq!(
        c.curl("client-1", &format!("http://{web2}:8080/ca-down"), &[])
            .0,
        "200"
    );
    assert_eq!(renewals(&c, 1), before);
    // CA back: renewal recovers.
    c.restart_ca();
    let back = Instant::now();
    while renewals(&c, 1) <= before {
        ping(n);
        n += 1;
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "renewal did not recover after the CA returned"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    ping(n);
    assert_eq!(
        c.curl("client-1", &format!("http://{web2}:8080/recovered"), &[])
            .0,
        "200"
    );
}
