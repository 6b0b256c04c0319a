//! TLS trust of the API client: the bundled roots, the system's (rustls-native-certs, which
//! honours SSL_CERT_FILE), and --api-ca-file. A test CA that only one of them holds decides
//! whether the handshake with a local TLS server (openssl s_server) succeeds.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dynamics-operator");

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect(
            "openssl must be installed for this test (apt-get install -y openssl; .ci/run does it)",
        );
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn certificates(dir: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=dynamics-operator test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server -www`: a TLS server that answers any GET with an HTML page (HTTP 200), so
/// a client that gets through the handshake sees a reply it cannot read (BadReply).
fn serve(dir: &Path) -> (Server, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-cert",
            "server.pem",
            "-key",
            "server.key",
        ])
        .arg("-accept")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server starts");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

/// `plan -o json` against the TLS server: the one object's reason and message.
fn plan(dir: &Path, port: u16, extra: &[&str], env: &[(&str, &Path)]) -> (String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "plan",
        "-f",
        "one.yaml",
        "-o",
        "json",
        "--api-timeout",
        "10s",
    ])
    .arg("--api-url")
    .arg(format!("https://127.0.0.1:{port}"))
    .args(extra)
    .current_dir(dir)
    .env("BITHUMAN_API_SECRET", "test-secret")
    .env_remove("BITHUMAN_API_URL")
    .env_remove("BITHUMAN_API_CA_FILE")
    .env_remove("SSL_CERT_FILE")
    // No system store at all unless a case names one: this machine's must not decide.
    .env("SSL_CERT_DIR", dir.join("empty"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = cmd.output().expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "plan -o json printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let item = &doc["items"][0];
    (
        item["reason"].as_str().unwrap_or_default().to_string(),
        item["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn the_client_trusts_a_ca_from_ssl_cert_file_or_api_ca_file_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir(dir.join("empty")).unwrap();
    std::fs::write(
        dir.join("one.yaml"),
        "apiVersion: dynamics.bithuman.ai/v1alpha1\nkind: AgentDynamics\nmetadata:\n  name: one\n  namespace: agents\nspec:\n  agentId: A1\n",
    )
    .unwrap();
    certificates(dir);
    let (_server, port) = serve(dir);

    // Neither the bundled roots nor an empty system store know the CA: the handshake fails.
    let (reason, message) = plan(dir, port, &[], &[]);
    assert_eq!(reason, "ConnectFailed", "{message}");

    // The CA only in the "system" store, as SSL_CERT_FILE names it: the handshake succeeds,
    // and the HTML page is a reply the client cannot read.
    let ca = dir.join("ca.pem");
    let (reason, message) = plan(dir, port, &[], &[("SSL_CERT_FILE", &ca)]);
    assert_eq!(reason, "BadReply", "{message}");

    // The same CA given with --api-ca-file, the system store empty.
    let (reason, message) = plan(dir, port, &["--api-ca-file", "ca.pem"], &[]);
    assert_eq!(reason, "BadReply", "{message}");

    // A file with no certificate in it is refused at start, naming the flag.
    std::fs::write(dir.join("not-a-ca.pem"), "hello").unwrap();
    let out = Command::new(BIN)
        .args(["plan", "-f", "one.yaml", "--api-ca-file", "not-a-ca.pem"])
        .current_dir(dir)
        .env("BITHUMAN_API_SECRET", "test-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-ca-file"));
}
