//! GCS sources against a GCS emulator: anonymous (endpoint from the flag and from
//! `STORAGE_EMULATOR_HOST`), and with a service-account key whose JWT a token endpoint in
//! the test verifies (openssl) before it hands out the token the storage requests must carry.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;

use crate::peers::ensure_tool;
use crate::peers_gcs::GcsEmulator;
use crate::support::*;

const BUCKET: &str = "images";
const TOKEN: &str = "ya29.test-token-Kd93";
const EMAIL: &str = "mover@test-project.iam.gserviceaccount.com";

struct Fixture {
    dir: tempfile::TempDir,
    raw: PathBuf,
    gcs: GcsEmulator,
}

fn fixture() -> Fixture {
    let dir = tempdir();
    let raw = dir.path().join("disk.raw");
    make_raw(&raw, 24 * MIB, 31);
    let qcow2 = dir.path().join("disk.qcow2");
    qemu_img(&["convert", "-O", "qcow2", s(&raw), s(&qcow2)]);
    sh(&format!("xz -1 -T1 -c {} > {}", s(&raw), s(&dir.path().join("disk.raw.xz"))));
    let gcs = GcsEmulator::start(dir.path());
    gcs.put_object(BUCKET, "vm/disk.qcow2", &qcow2);
    gcs.put_object(BUCKET, "vm/disk.raw.xz", &dir.path().join("disk.raw.xz"));
    Fixture { dir, raw, gcs }
}

impl Fixture {
    fn out(&self) -> PathBuf {
        self.dir.path().join("out.raw")
    }

    fn ranged_gets(&self) -> usize {
        let log =
            std::fs::read_to_string(self.dir.path().join(format!("gcs-{}.log", self.gcs.port))).unwrap_or_default();
        log.lines().filter(|l| l.contains("alt=media") && l.contains("\" 206")).count()
    }
}

#[test]
fn anonymous_objects_import_identical_over_ranges() {
    let f = fixture();
    let res = import(&format!("gs://{BUCKET}/vm/disk.qcow2"), &f.out(), &["--gcs-endpoint", &f.gcs.endpoint()]);
    assert_ok(&res);
    assert_same(&f.raw, "raw", &f.out());
    assert!(f.ranged_gets() >= 4, "expected several ranged media downloads, got {}", f.ranged_gets());

    // STORAGE_EMULATOR_HOST as Google's libraries read it (host:port), into a volume.
    let vol = f.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let mut cmd = Command::new(mover_bin());
    cmd.args(["import", &format!("gs://{BUCKET}/vm/disk.raw.xz"), s(&vol), "--size", &(64 * MIB).to_string()]);
    cmd.args(["--progress", "none"]).env("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{}", f.gcs.port));
    assert_ok(&with_timeout(cmd, Duration::from_secs(120)));
    assert_same(&f.raw, "raw", &vol.join("disk.img"));
}

#[test]
fn a_missing_object_is_terminal_and_named() {
    let f = fixture();
    let res = import(
        &format!("gs://{BUCKET}/vm/missing.img"),
        &f.out(),
        &["--gcs-endpoint", &f.gcs.endpoint(), "--progress", "json"],
    );
    assert_eq!(res.status.code(), Some(1));
    assert_refused(&res, &["gs://images/vm/missing.img", "no such bucket or object"]);
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&res.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["reason"], "NotFound");
    assert!(!f.out().exists());
}

/// A token endpoint that checks each JWT's claims and its RS256 signature against
/// `public_pem` (with openssl) and answers [`TOKEN`] only to valid ones.
struct TokenEndpoint {
    port: u16,
    granted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

fn token_endpoint(dir: &Path, public_pem: PathBuf) -> TokenEndpoint {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (granted, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (g, r, work) = (granted.clone(), refused.clone(), dir.join("jwt"));
    std::fs::create_dir_all(&work).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let body = read_request_body(&mut conn);
            let assertion = body.split('&').find_map(|p| p.strip_prefix("assertion=")).unwrap_or("").to_string();
            let grant_ok = body.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer");
            let expected_aud = format!("http://127.0.0.1:{port}/token");
            let valid = grant_ok && jwt_is_valid(&assertion, &public_pem, &work, &expected_aud);
            let reply = if valid {
                g.fetch_add(1, Ordering::SeqCst);
                (200, format!("{{\"access_token\":\"{TOKEN}\",\"expires_in\":3600,\"token_type\":\"Bearer\"}}"))
            } else {
                r.fetch_add(1, Ordering::SeqCst);
                (400, "{\"error\":\"invalid_grant\",\"error_description\":\"Invalid JWT Signature.\"}".to_string())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                reply.0,
                reply.1.len(),
                reply.1
            );
            let _ = conn.shutdown(Shutdown::Both);
        }
    });
    TokenEndpoint { port, granted, refused }
}

fn read_request_body(conn: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(at) = text.find("\r\n\r\n") {
            let len = text[..at]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if data.len() >= at + 4 + len {
                return text[at + 4..at + 4 + len].to_string();
            }
        }
    }
    String::new()
}

fn jwt_is_valid(jwt: &str, public_pem: &Path, work: &Path, aud: &str) -> bool {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else { return false };
    let json = |p: &str| b64.decode(p).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let (Some(h), Some(c), Ok(sig)) = (json(header), json(claims), b64.decode(signature)) else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims_ok = h["alg"] == "RS256"
        && c["iss"] == EMAIL
        && c["aud"] == aud
        && c["scope"] == "https://www.googleapis.com/auth/devstorage.read_only"
        && c["iat"].as_u64().is_some_and(|t| t.abs_diff(now) < 300)
        && c["exp"].as_u64() == c["iat"].as_u64().map(|t| t + 3600);
    let (input, sig_file) = (work.join("input"), work.join("sig"));
    std::fs::write(&input, format!("{header}.{claims}")).unwrap();
    std::fs::write(&sig_file, sig).unwrap();
    let verified = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify", s(public_pem), "-signature", s(&sig_file), s(&input)])
        .output()
        .is_ok_and(|o| o.status.success());
    claims_ok && verified
}

/// A relay to `upstream` that records what clients send (request lines and headers).
fn recording_relay(upstream: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = s_out.shutdown(Shutdown::Write);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(Shutdown::Both);
            });
        }
    });
    (port, seen)
}

/// A service-account key file for a fresh RSA key; returns (credentials.json, public key).
fn service_account(dir: &Path, name: &str, token_port: u16) -> (PathBuf, PathBuf) {
    ensure_tool("openssl", "openssl");
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    run(Command::new("openssl").args([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        s(&key),
    ]));
    run(Command::new("openssl").args(["pkey", "-in", s(&key), "-pubout", "-out", s(&public)]));
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": format!("kid-{name}"),
        "private_key": std::fs::read_to_string(&key).unwrap(),
        "client_email": EMAIL,
        "client_id": "1",
        "token_uri": format!("http://127.0.0.1:{token_port}/token"),
    });
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, json.to_string()).unwrap();
    (file, public)
}

fn gcs_import(f: &Fixture, endpoint: &str, creds: &Path) -> Output {
    import(
        &format!("gs://{BUCKET}/vm/disk.qcow2"),
        &f.out(),
        &["--gcs-endpoint", endpoint, "--gcs-credentials", s(creds), "--progress", "json"],
    )
}

#[test]
fn a_service_account_key_buys_a_bearer_token_that_every_request_carries() {
    let f = fixture();
    // The token endpoint trusts the key of `good`; `other` is a stranger's key.
    let keys = f.dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    // Keys first (the token endpoint needs the public key), with its port fixed after.
    let (_, public) = service_account(&keys, "good", 0);
    let tokens = token_endpoint(f.dir.path(), public);
    let good = service_account_for(&keys, "good", tokens.port);
    let (other, _) = service_account(&keys, "other", tokens.port);
    let (relay, seen) = recording_relay(f.gcs.port);
    let endpoint = format!("http://127.0.0.1:{relay}");

    let refused = gcs_import(&f, &endpoint, &other);
    assert_eq!(refused.status.code(), Some(1), "a refused key is terminal");
    assert_refused(&refused, &["token endpoint", "invalid_grant", EMAIL]);
    assert_eq!(tokens.refused.load(Ordering::SeqCst), 1);
    assert!(!f.out().exists());

    let ok = gcs_import(&f, &endpoint, &good);
    assert_ok(&ok);
    assert_same(&f.raw, "raw", &f.out());
    assert_eq!(tokens.granted.load(Ordering::SeqCst), 1, "one token serves the whole import");
    let sent = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    let gets = sent.matches("GET /storage/v1/b/").count();
    let bearer =
        sent.to_ascii_lowercase().matches(&format!("authorization: bearer {}", TOKEN.to_ascii_lowercase())).count();
    assert!(gets >= 5, "expected the metadata request and several ranged downloads, saw {gets}");
    assert_eq!(bearer, gets, "every storage request carries the token: {sent}");

    let key_body: String = std::fs::read_to_string(keys.join("good.key")).unwrap().lines().nth(1).unwrap().to_string();
    for out in [&ok, &refused] {
        for bytes in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(bytes);
            assert!(!text.contains(TOKEN) && !text.contains(&key_body), "a secret reached the output: {text}");
        }
    }
}

/// The key file of `name` (already generated) pointing at `token_port`.
fn service_account_for(dir: &Path, name: &str, token_port: u16) -> PathBuf {
    let file = dir.join(format!("{name}.json"));
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    json["token_uri"] = format!("http://127.0.0.1:{token_port}/token").into();
    std::fs::write(&file, json.to_string()).unwrap();
    file
}
