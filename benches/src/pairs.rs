//! Configurations of the alternatives a user would pick instead of ward, run as a pair (one per
//! node) with the same certificates from the same CA:
//! - **Envoy** speaking HBONE: node-1 takes the intercepted connection (original destination
//!   restored by the `original_dst` listener filter) and tunnels it as an HTTP/2 CONNECT over
//!   mTLS (TLS 1.3, ALPN h2, SNI and SPIFFE URI SAN checked) to node-2, which terminates the
//!   CONNECT and connects to the pod. Pooled (many streams per connection) or, for the
//!   handshake-cost scenario, one connection per tunnel.
//! - **haproxy** as a plain L4 mTLS pair (no HBONE): node-1 picks a backend by the original
//!   destination port and opens a TLS 1.3 connection with a client certificate to a node-2
//!   port reserved for that target; node-2 verifies the client certificate against the root and
//!   connects to the pod. One TLS connection per TCP connection (haproxy does not multiplex).

use std::fmt::Write as _;
use std::path::Path;

/// Where a pair sends traffic: node-2's address, the server pod, its ports.
pub struct Targets<'a> {
    pub node2: &'a str,
    pub server_ip: &'a str,
    pub ports: &'a [u16],
}

/// Certificate files (`ward ca issue` output directories) and the root.
pub struct Certs<'a> {
    pub client_dir: &'a Path,
    pub server_dir: &'a Path,
    pub root: &'a Path,
}

const TLS13: &str =
    "tls_params: {tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}";

fn tls_certificate(dir: &Path) -> String {
    format!(
        "tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}]",
        dir.join("chain.pem").display(),
        dir.join("key.pem").display()
    )
}

/// Envoy on node-1: outbound capture → HBONE to node-2.
pub fn envoy_client(
    t: &Targets,
    certs: &Certs,
    pooled: bool,
    server_id: &str,
    sni: &str,
) -> String {
    let per_conn = if pooled {
        String::new()
    } else {
        "\n        common_http_protocol_options: {max_requests_per_connection: 1}".into()
    };
    format!(
        r#"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9901}}}}}}
static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 0.0.0.0, port_value: 15001}}}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: outbound
          cluster: hbone
          tunneling_config: {{hostname: "%DOWNSTREAM_LOCAL_ADDRESS%"}}
  clusters:
  - name: hbone
    connect_timeout: 5s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}{per_conn}
    load_assignment:
      cluster_name: hbone
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {node2}, port_value: 15008}}}}}}}}]}}]
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {sni}
        common_tls_context:
          {TLS13}
          alpn_protocols: [h2]
          {cert}
          validation_context:
            trusted_ca: {{filename: {root}}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{server_id}"}}}}]
"#,
        node2 = t.node2,
        cert = tls_certificate(certs.client_dir),
        root = certs.root.display(),
    )
}

/// Envoy on node-2: HBONE termination → the pod (one route per `ip:port` authority).
pub fn envoy_server(t: &Targets, certs: &Certs) -> String {
    let mut hosts = String::new();
    let mut clusters = String::new();
    for p in t.ports {
        let _ = write!(
            hosts,
            r#"
            - name: t{p}
              domains: ["{ip}:{p}"]
              routes:
              - match: {{connect_matcher: {{}}}}
                route: {{cluster: t{p}, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}"#,
            ip = t.server_ip
        );
        let _ = write!(
            clusters,
            r#"
  - name: t{p}
    connect_timeout: 5s
    type: STATIC
    load_assignment:
      cluster_name: t{p}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {p}}}}}}}}}]}}]"#,
            ip = t.server_ip
        );
    }
    format!(
        r#"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9901}}}}}}
static_resources:
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
            {TLS13}
            alpn_protocols: [h2]
            {cert}
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
            virtual_hosts:{hosts}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:{clusters}
"#,
        cert = tls_certificate(certs.server_dir),
        root = certs.root.display(),
    )
}

/// The node-2 TLS port haproxy reserves for target port `p`.
fn haproxy_port(i: usize) -> usize {
    15100 + i
}

const HAPROXY_GLOBAL: &str = "global\n  nbthread 1\n  maxconn 8000\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\n";

/// haproxy on node-1: original destination port → a TLS connection to node-2.
pub fn haproxy_client(t: &Targets, client_pem: &Path, root: &Path) -> String {
    let mut s = String::from(HAPROXY_GLOBAL);
    s.push_str("frontend outbound\n  bind :15001\n");
    for p in t.ports {
        let _ = writeln!(s, "  use_backend b{p} if {{ dst_port {p} }}");
    }
    for (i, p) in t.ports.iter().enumerate() {
        let _ = write!(
            s,
            "\nbackend b{p}\n  server n2 {node2}:{port} ssl crt {pem} ca-file {root} verify required\n",
            node2 = t.node2,
            port = haproxy_port(i),
            pem = client_pem.display(),
            root = root.display()
        );
    }
    s
}

/// haproxy on node-2: one mTLS port per target.
pub fn haproxy_server(t: &Targets, server_pem: &Path, root: &Path) -> String {
    let mut s = String::from(HAPROXY_GLOBAL);
    for (i, p) in t.ports.iter().enumerate() {
        let _ = write!(
            s,
            "frontend f{p}\n  bind :{port} ssl crt {pem} ca-file {root} verify required\n  default_backend p{p}\n\nbackend p{p}\n  server pod {ip}:{p}\n\n",
            port = haproxy_port(i),
            pem = server_pem.display(),
            root = root.display(),
            ip = t.server_ip
        );
    }
    s
}
