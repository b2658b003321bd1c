//! The `ward` binary against real tools: openssl verifies what `ward ca issue` writes, and an
//! `openssl s_client` without a client certificate is refused by a ward mTLS server.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use ward_lib_identity::bundle::{parse_pem_certs, shared};
use ward_lib_identity::tls::{self, SingleCert};
use ward_lib_identity::{TrustBundle, TrustDomain};

fn ward(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn openssl(args: &[&str], cwd: &Path) -> Output {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be installed (apt-get install -y openssl)");
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "command failed: {}", text(&o));
    text(&o)
}

const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

#[test]
fn issued_certificates_pass_openssl() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    ok(ward(
        &[
            "ca",
            "init",
            "--trust-domain",
            "cluster.local",
            "--out",
            "ca",
        ],
        p,
    ));
    ok(ward(
        &[
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            ID,
            "--out",
            "web",
            "--ttl",
            "2h",
        ],
        p,
    ));
    let v = ok(openssl(
        &["verify", "-CAfile", "ca/root.pem", "web/cert.pem"],
        p,
    ));
    assert!(v.contains("web/cert.pem: OK"), "{v}");

    let x = ok(openssl(
        &["x509", "-in", "web/cert.pem", "-noout", "-text"],
        p,
    ));
    let ext = &x[x.find("X509v3 extensions").unwrap()..];
    // Exactly the required SAN (one URI, nothing else), key usage, EKU and basic constraints.
    let lines: Vec<&str> = ext.lines().map(str::trim).collect();
    let after = |h: &str| lines[lines.iter().position(|l| l.starts_with(h)).unwrap() + 1];
    assert!(
        lines.contains(&"X509v3 Subject Alternative Name: critical"),
        "{ext}"
    );
    assert_eq!(
        after("X509v3 Subject Alternative Name"),
        format!("URI:{ID}")
    );
    assert!(lines.contains(&"X509v3 Key Usage: critical"), "{ext}");
    assert_eq!(after("X509v3 Key Usage"), "Digital Signature");
    assert_eq!(
        after("X509v3 Extended Key Usage"),
        "TLS Web Server Authentication, TLS Web Client Authentication"
    );
    assert!(
        lines.contains(&"X509v3 Basic Constraints: critical"),
        "{ext}"
    );
    assert_eq!(after("X509v3 Basic Constraints"), "CA:FALSE");
    assert!(x.contains("ASN1 OID: prime256v1"), "P-256 key: {x}");

    // The full chain file also verifies, and inspect passes every rule.
    ok(openssl(
        &[
            "verify",
            "-CAfile",
            "ca/root.pem",
            "-untrusted",
            "web/chain.pem",
            "web/cert.pem",
        ],
        p,
    ));
    let inspect = ok(ward(
        &[
            "cert",
            "inspect",
            "web/chain.pem",
            "--bundle",
            "ca/root.pem",
        ],
        p,
    ));
    assert_eq!(inspect.matches("PASS").count(), 8, "{inspect}");
    assert!(inspect.contains(&format!("SPIFFE ID:  {ID}")));
}

#[test]
fn intermediate_ca_chain_passes_openssl() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // An offline root made with openssl, and a ward intermediate signed by it.
    ok(openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "root.key",
        ],
        p,
    ));
    ok(openssl(
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-subj",
            "/CN=offline root",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "root.pem",
        ],
        p,
    ));
    ok(openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "int.key",
        ],
        p,
    ));
    ok(openssl(
        &[
            "req",
            "-new",
            "-key",
            "int.key",
            "-subj",
            "/CN=ward intermediate",
            "-out",
            "int.csr",
        ],
        p,
    ));
    std::fs::write(
        p.join("ext.cnf"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    ok(openssl(
        &[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "10",
            "-extfile",
            "ext.cnf",
            "-out",
            "int.pem",
        ],
        p,
    ));
    let ca = p.join("ca");
    std::fs::create_dir(&ca).unwrap();
    std::fs::copy(p.join("root.pem"), ca.join("root.pem")).unwrap();
    std::fs::copy(p.join("int.pem"), ca.join("ca.pem")).unwrap();
    std::fs::copy(p.join("int.key"), ca.join("ca-key.pem")).unwrap();
    std::fs::write(ca.join("trust-domain"), "cluster.local\n").unwrap();
    ok(ward(
        &[
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            ID,
            "--out",
            "web",
        ],
        p,
    ));
    let v = ok(openssl(
        &[
            "verify",
            "-CAfile",
            "ca/root.pem",
            "-untrusted",
            "int.pem",
            "web/cert.pem",
        ],
        p,
    ));
    assert!(v.contains("OK"), "{v}");
    // Without the intermediate, the leaf does not verify: the chain really goes through it.
    let bad = openssl(&["verify", "-CAfile", "ca/root.pem", "web/cert.pem"], p);
    assert!(!bad.status.success());
    // chain.pem carries leaf + intermediate.
    let chain = std::fs::read_to_string(p.join("web/chain.pem")).unwrap();
    assert_eq!(parse_pem_certs(&chain).unwrap().len(), 2);
}

#[test]
fn clear_errors_for_bad_arguments_and_files() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "ca",
                "init",
                "--trust-domain",
                "Cluster.Local",
                "--out",
                "x",
            ],
            "must be lowercase",
        ),
        (
            vec!["ca", "init", "--trust-domain", "td:80", "--out", "x"],
            "port",
        ),
        (
            vec![
                "ca",
                "issue",
                "--ca",
                "missing",
                "--spiffe-id",
                ID,
                "--out",
                "o",
            ],
            "missing/trust-domain",
        ),
        (vec!["cert", "inspect", "nope.pem"], "reading nope.pem"),
        (
            vec![
                "ca",
                "issue",
                "--ca",
                "ca",
                "--spiffe-id",
                ID,
                "--out",
                "o",
                "--ttl",
                "soon",
            ],
            "--ttl",
        ),
    ];
    for (args, want) in cases {
        let o = ward(&args, p);
        assert!(!o.status.success(), "{args:?} should fail");
        let t = text(&o);
        assert!(t.contains(want), "{args:?}: {t}");
    }
    ok(ward(
        &[
            "ca",
            "init",
            "--trust-domain",
            "cluster.local",
            "--out",
            "ca",
        ],
        p,
    ));
    let o = ward(
        &[
            "ca",
            "init",
            "--trust-domain",
            "cluster.local",
            "--out",
            "ca",
        ],
        p,
    );
    assert!(text(&o).contains("refusing to overwrite"), "{}", text(&o));
    for (args, want) in [
        (
            vec![
                "ca",
                "issue",
                "--ca",
                "ca",
                "--spiffe-id",
                "spiffe://cluster.local/",
                "--out",
                "o",
            ],
            "must not end with '/'",
        ),
        (
            vec![
                "ca",
                "issue",
                "--ca",
                "ca",
                "--spiffe-id",
                "spiffe://other.td/x",
                "--out",
                "o",
            ],
            "this CA signs for \"cluster.local\"",
        ),
        (
            vec!["ca", "bootstrap-token", "--ca", "ca", "--node", "Node_1"],
            "not a valid node name",
        ),
    ] {
        let o = ward(&args, p);
        assert!(!o.status.success());
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
    std::fs::write(
        p.join("junk.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let o = ward(&["cert", "inspect", "junk.pem"], p);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("FAIL") || text(&o).contains("unparseable"),
        "{}",
        text(&o)
    );
}

/// A ward mTLS server (the rustls config every ward listener uses) on loopback.
async fn mtls_server(
    dir: &Path,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Vec<Result<String, String>>>,
) {
    let root = std::fs::read_to_string(dir.join("ca/root.pem")).unwrap();
    let mut bundle = TrustBundle::new();
    bundle
        .add_pem(&TrustDomain::parse("cluster.local").unwrap(), &root)
        .unwrap();
    let chain =
        parse_pem_certs(&std::fs::read_to_string(dir.join("srv/chain.pem")).unwrap()).unwrap();
    let key_pem = std::fs::read_to_string(dir.join("srv/key.pem")).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
        pem::parse(key_pem).unwrap().into_contents().into(),
    );
    let provider = tls::provider();
    let ck = tls::certified_key(chain, key, &provider).unwrap();
    let cfg = tls::server_config(
        shared(bundle),
        Arc::new(SingleCert(ck)),
        provider,
        Arc::new(rustls::time_provider::DefaultTimeProvider),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..2 {
            let (s, _) = listener.accept().await.unwrap();
            let r = match acceptor.accept(s).await {
                Ok(mut tls_stream) => {
                    let id = tls::peer_identity(tls_stream.get_ref().1)
                        .map(|i| i.to_string())
                        .unwrap_or_default();
                    let _ = tls_stream
                        .write_all(format!("hello {id}\n").as_bytes())
                        .await;
                    // Close, so `s_client -quiet` (which ignores stdin EOF) exits.
                    let _ = tls_stream.shutdown().await;
                    Ok(id)
                }
                Err(e) => Err(e.to_string()),
            };
            results.push(r);
        }
        results
    });
    (addr, task)
}

#[tokio::test]
async fn openssl_client_needs_a_client_certificate() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_owned();
    ok(ward(
        &[
            "ca",
            "init",
            "--trust-domain",
            "cluster.local",
            "--out",
            "ca",
        ],
        &p,
    ));
    ok(ward(
        &[
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://cluster.local/ns/b/sa/server",
            "--out",
            "srv",
        ],
        &p,
    ));
    ok(ward(
        &[
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            ID,
            "--out",
            "web",
        ],
        &p,
    ));
    let (addr, server) = mtls_server(&p).await;
    let connect = addr.to_string();

    // Without a client certificate: refused.
    let p1 = p.clone();
    let c1 = connect.clone();
    let no_cert = tokio::task::spawn_blocking(move || {
        openssl(
            &[
                "s_client",
                "-connect",
                &c1,
                "-tls1_3",
                "-CAfile",
                "ca/root.pem",
                "-quiet",
            ],
            &p1,
        )
    })
    .await
    .unwrap();
    // With one: the server sees the client's SPIFFE ID.
    let p2 = p.clone();
    let with_cert = tokio::task::spawn_blocking(move || {
        openssl(
            &[
                "s_client",
                "-connect",
                &connect,
                "-tls1_3",
                "-CAfile",
                "ca/root.pem",
                "-cert",
                "web/cert.pem",
                "-key",
                "web/key.pem",
                "-quiet",
            ],
            &p2,
        )
    })
    .await
    .unwrap();
    let results = server.await.unwrap();
    assert!(
        text(&no_cert).contains("certificate required"),
        "{}",
        text(&no_cert)
    );
    assert!(
        results[0]
            .as_ref()
            .unwrap_err()
            .contains("peer sent no certificates"),
        "{:?}",
        results[0]
    );
    assert_eq!(results[1].as_deref(), Ok(ID));
    assert!(
        text(&with_cert).contains(&format!("hello {ID}")),
        "{}",
        text(&with_cert)
    );
}

/// Kills the child on drop, so a failing test leaves no server behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_and_request_as_a_node_would() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    ok(ward(
        &[
            "ca",
            "init",
            "--trust-domain",
            "cluster.local",
            "--out",
            "ca",
        ],
        p,
    ));
    std::fs::write(
        p.join("nodes.yaml"),
        "nodes:\n  - name: node-1\n    workloads:\n      - {namespace: default, serviceAccount: web}\n",
    )
    .unwrap();
    let token = ok(ward(
        &["ca", "bootstrap-token", "--ca", "ca", "--node", "node-1"],
        p,
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _server = Child(
        Command::new(env!("CARGO_BIN_EXE_ward"))
            .args([
                "ca",
                "serve",
                "--ca",
                "ca",
                "--nodes",
                "nodes.yaml",
                "--listen",
                &listen,
            ])
            .current_dir(p)
            .stdout(Stdio::from(
                std::fs::File::create(p.join("audit.log")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(p.join("ca.log")).unwrap(),
            ))
            .spawn()
            .unwrap(),
    );
    let request = |sa: &str, out: &str| {
        Command::new(env!("CARGO_BIN_EXE_ward"))
            .args([
                "ca",
                "request",
                "--server",
                &listen,
                "--bundle",
                "ca/root.pem",
                "--namespace",
                "default",
                "--service-account",
                sa,
                "--out",
                out,
            ])
            .env("WARD_TOKEN", token.trim())
            .current_dir(p)
            .output()
            .unwrap()
    };
    // The server needs a moment to bind; retry briefly.
    let mut got = request("web", "web");
    for _ in 0..50 {
        if got.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        got = request("web", "web");
    }
    let t = ok(got);
    assert!(t.contains(ID), "{t}");
    ok(openssl(
        &["verify", "-CAfile", "ca/root.pem", "web/cert.pem"],
        p,
    ));
    // An identity not on node-1 is refused with the reason.
    let refused = request("db", "db");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("PermissionDenied"),
        "{}",
        text(&refused)
    );
    assert!(
        text(&refused).contains("default/db is scheduled on node \"node-1\""),
        "{}",
        text(&refused)
    );
    // One JSON audit line per decision, on stdout.
    let log = std::fs::read_to_string(p.join("audit.log")).unwrap();
    let audits: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(audits.len(), 2, "{log}");
    assert_eq!(audits[0]["kind"], "ward.ca.audit");
    assert_eq!(audits[0]["outcome"], "issued");
    assert_eq!(
        audits[0]["spiffe_id"],
        "spiffe://cluster.local/ns/default/sa/web"
    );
    assert_eq!(audits[1]["outcome"], "refused");
    assert_eq!(audits[1]["code"], "PERMISSION_DENIED");
    assert_eq!(audits[1]["node"], "node-1");
}
