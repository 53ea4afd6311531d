//! HTTP(S) sources against a real nginx: ranges on and off, TLS with a test CA, basic auth,
//! extra headers, redirects, 404, checksums, and connections dropped mid-body.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;

/// A served directory with a qcow2 of a known raw disk.
struct Served {
    dir: tempfile::TempDir,
    root: PathBuf,
    raw: PathBuf,
}

fn served() -> Served {
    let dir = tempdir();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let raw = dir.path().join("disk.raw");
    make_raw(&raw, 24 * MIB, 11);
    qemu_img(&["convert", "-O", "qcow2", s(&raw), s(&root.join("disk.qcow2"))]);
    run(std::process::Command::new("sh").arg("-c").arg(format!(
        "gzip -1 -c {} > {}",
        s(&raw),
        s(&root.join("disk.raw.gz"))
    )));
    Served { dir, root, raw }
}

fn out(s: &Served) -> PathBuf {
    s.dir.path().join("out.raw")
}

/// Requests in nginx's detail log: (request line, Range header, status).
fn requests(n: &Nginx) -> Vec<(String, String, u16)> {
    n.detail_log()
        .lines()
        .filter_map(|l| {
            let (req, rest) = l.split_once(" \"")?;
            let (range, rest) = rest.split_once("\" ")?;
            let status = rest.split_whitespace().next()?.parse().ok()?;
            Some((req.to_string(), range.to_string(), status))
        })
        .collect()
}

#[test]
fn ranges_make_a_parallel_random_access_download() {
    let sv = served();
    let n = Nginx::start(sv.dir.path(), &sv.root, "", "");
    assert_ok(&import(&n.url("http", "disk.qcow2"), &out(&sv), &[]));
    assert_same(&sv.raw, "raw", &out(&sv));
    let reqs = requests(&n);
    let ranged =
        reqs.iter().filter(|(r, range, st)| r.starts_with("GET") && range.starts_with("bytes=") && *st == 206).count();
    assert!(ranged >= 4, "expected several ranged GETs, log: {reqs:?}");
    assert!(!reqs.iter().any(|(r, _, st)| r.starts_with("GET") && *st == 200), "a whole-file GET was made: {reqs:?}");
}

#[test]
fn without_ranges_the_image_streams_in_one_pass() {
    let sv = served();
    let n = Nginx::start(sv.dir.path(), &sv.root, "max_ranges 0;", "");
    for name in ["disk.qcow2", "disk.raw.gz"] {
        let _ = std::fs::remove_file(out(&sv));
        assert_ok(&import(&n.url("http", name), &out(&sv), &[]));
        assert_same(&sv.raw, "raw", &out(&sv));
    }
    let gets = requests(&n).into_iter().filter(|(r, _, _)| r.starts_with("GET")).count();
    assert_eq!(gets, 2, "one GET per image: {:?}", requests(&n));
}

#[test]
fn compressed_images_stream_over_ranges_too() {
    let sv = served();
    let n = Nginx::start(sv.dir.path(), &sv.root, "", "");
    assert_ok(&import(&n.url("http", "disk.raw.gz"), &out(&sv), &[]));
    assert_same(&sv.raw, "raw", &out(&sv));
}

#[test]
fn tls_with_a_test_ca() {
    let sv = served();
    let ca = make_ca(sv.dir.path());
    let tls = format!("ssl_certificate {}; ssl_certificate_key {};", s(&ca.cert_pem), s(&ca.key_pem));
    let n = Nginx::start(sv.dir.path(), &sv.root, &tls, "ssl");
    let url = n.url("https", "disk.qcow2");

    let refused = import(&url, &out(&sv), &[]);
    let line = assert_refused(&refused, &["127.0.0.1"]);
    assert!(line.to_lowercase().contains("certificate") || line.contains("UnknownIssuer"), "{line}");
    assert!(!out(&sv).exists());

    assert_ok(&import(&url, &out(&sv), &["--ca-file", s(&ca.ca_pem)]));
    assert_same(&sv.raw, "raw", &out(&sv));
    std::fs::remove_file(out(&sv)).unwrap();
    assert_ok(&import(&url, &out(&sv), &["--insecure-skip-verify"]));
    assert_same(&sv.raw, "raw", &out(&sv));
}

fn auth_files(dir: &Path) -> (PathBuf, PathBuf) {
    let users = dir.join("htpasswd");
    std::fs::write(&users, "alice:{PLAIN}s3cr3t-pw\n").unwrap();
    let creds = dir.join("creds");
    std::fs::write(&creds, "alice\ns3cr3t-pw\n").unwrap();
    (users, creds)
}

#[test]
fn basic_auth_is_sent_and_never_shown() {
    let sv = served();
    let (users, creds) = auth_files(sv.dir.path());
    let conf = format!("auth_basic \"images\"; auth_basic_user_file {};", s(&users));
    let n = Nginx::start(sv.dir.path(), &sv.root, &conf, "");
    let url = n.url("http", "disk.qcow2");

    let refused = import(&url, &out(&sv), &[]);
    assert_eq!(refused.status.code(), Some(1), "401 is terminal");
    assert_refused(&refused, &["401", &url]);
    assert!(!out(&sv).exists());

    let wrong = sv.dir.path().join("wrong");
    std::fs::write(&wrong, "alice\nnope\n").unwrap();
    assert_refused(&import(&url, &out(&sv), &["--basic-auth-file", s(&wrong)]), &["401"]);

    let ok = import(&url, &out(&sv), &["--basic-auth-file", s(&creds), "--progress", "json"]);
    assert_ok(&ok);
    assert_same(&sv.raw, "raw", &out(&sv));
    for stream in [&ok.stdout, &ok.stderr, &refused.stderr] {
        assert!(!String::from_utf8_lossy(stream).contains("s3cr3t"), "password leaked");
    }
}

/// The strings a leak would show: the user, the passwords, and their base64 (alone, and as
/// the `Authorization` header carries them).
fn secret_needles(user: &str, passwords: &[&str]) -> Vec<String> {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut out = vec![user.to_string(), b64(user)];
    for pw in passwords {
        out.extend([pw.to_string(), b64(pw), b64(&format!("{user}:{pw}"))]);
    }
    out
}

#[test]
fn basic_auth_never_reaches_the_output_even_when_tracing_everything() {
    const USER: &str = "mover-user-k3v";
    const PASSWORD: &str = "pw-Jx82-mover-s3cr3t";
    const WRONG: &str = "pw-Qn47-wrong-guess";
    let sv = served();
    let users = sv.dir.path().join("htpasswd");
    std::fs::write(&users, format!("{USER}:{{PLAIN}}{PASSWORD}\n")).unwrap();
    let conf = format!("auth_basic \"images\"; auth_basic_user_file {};", s(&users));
    let n = Nginx::start(sv.dir.path(), &sv.root, &conf, "");
    let url = n.url("http", "disk.qcow2");
    let traced = |creds: &str, progress: &str| {
        let file = sv.dir.path().join(format!("creds-{progress}"));
        std::fs::write(&file, creds).unwrap();
        let mut cmd = Command::new(mover_bin());
        cmd.arg("import").arg(&url).arg(out(&sv)).args(["--basic-auth-file", s(&file), "--progress", progress]);
        cmd.env("RUST_LOG", "trace");
        with_timeout(cmd, Duration::from_secs(120))
    };
    let refused = traced(&format!("{USER}\n{WRONG}\n"), "json");
    assert_refused(&refused, &["401"]);
    let ok = traced(&format!("{USER}\n{PASSWORD}\n"), "json");
    assert_ok(&ok);
    assert_same(&sv.raw, "raw", &out(&sv));
    // The credentials did travel (nginx logs the header it got), and the logs are at trace.
    let sent = secret_needles(USER, &[PASSWORD])[4].clone();
    assert!(n.detail_log().contains(&sent), "nginx never saw the credentials: {}", n.detail_log());
    assert!(
        String::from_utf8_lossy(&ok.stderr).contains("TRACE"),
        "not tracing: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for (what, out) in [("success", &ok), ("401", &refused)] {
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let text = String::from_utf8_lossy(bytes);
            for needle in secret_needles(USER, &[PASSWORD, WRONG]) {
                let at =
                    text.find(&needle).map(|i| &text[i.saturating_sub(300)..(i + needle.len() + 100).min(text.len())]);
                assert!(
                    at.is_none(),
                    "{needle:?} in the {stream} of the {what} import: ...{}...",
                    at.unwrap_or_default()
                );
            }
        }
    }
}

#[test]
fn redirects_keep_credentials_and_headers_on_the_named_origin() {
    let sv = served();
    let (users, creds) = auth_files(sv.dir.path());
    // B: another origin, open to all; its log shows what it was sent.
    let b = Nginx::start(sv.dir.path(), &sv.root, "", "");
    let conf = format!(
        "location = /elsewhere {{ return 302 http://127.0.0.1:{}/disk.qcow2; }}\n\
         location = /here {{ return 301 /secure/disk.qcow2; }}\n\
         location /secure/ {{ auth_basic \"images\"; auth_basic_user_file {}; alias {}/; }}",
        b.port,
        s(&users),
        s(&sv.root)
    );
    let a = Nginx::start(sv.dir.path(), &sv.root, &conf, "");
    let extra = ["--basic-auth-file", s(&creds), "--header", "X-Extra: token-123"];

    assert_ok(&import(&a.url("http", "here"), &out(&sv), &extra));
    assert_same(&sv.raw, "raw", &out(&sv));
    assert!(a.detail_log().contains("token-123"), "the header reaches the named origin");

    std::fs::remove_file(out(&sv)).unwrap();
    assert_ok(&import(&a.url("http", "elsewhere"), &out(&sv), &extra));
    assert_same(&sv.raw, "raw", &out(&sv));
    let log = b.detail_log();
    assert!(!log.is_empty());
    assert!(!log.contains("Basic") && !log.contains("token-123"), "credentials crossed origins: {log}");
}

#[test]
fn not_found_is_terminal_and_touches_nothing() {
    let sv = served();
    let n = Nginx::start(sv.dir.path(), &sv.root, "", "");
    let url = n.url("http", "missing.qcow2?token=hunter2");
    let res = import(&url, &out(&sv), &["--progress", "json"]);
    assert_eq!(res.status.code(), Some(1));
    let line = assert_refused(&res, &["404", "missing.qcow2"]);
    assert!(!line.contains("hunter2"), "query string shown: {line}");
    let last = String::from_utf8_lossy(&res.stdout).lines().last().unwrap_or("").to_string();
    let json: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(json["reason"], "NotFound");
    assert_eq!(json["retryable"], false);
    assert!(!out(&sv).exists() && !sv.dir.path().join("out.raw.partial").exists());
}

#[test]
fn checksums_are_verified_over_the_fetched_bytes() {
    let sv = served();
    let n = Nginx::start(sv.dir.path(), &sv.root, "", "");
    let gz = sv.root.join("disk.raw.gz");
    let sum = String::from_utf8(run(std::process::Command::new("sha256sum").arg(&gz)).stdout).unwrap();
    let sum = sum.split_whitespace().next().unwrap();
    let url = n.url("http", "disk.raw.gz");

    let ok = import(&url, &out(&sv), &["--checksum", &format!("sha256:{sum}"), "--progress", "json"]);
    assert_ok(&ok);
    assert_same(&sv.raw, "raw", &out(&sv));
    let result: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&ok.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(result["source_digest"], format!("sha256:{sum}"));
    assert_eq!(result["formats"], serde_json::json!(["gz", "raw"]));

    std::fs::remove_file(out(&sv)).unwrap();
    let bad = format!("sha256:{}", "0".repeat(64));
    let res = import(&url, &out(&sv), &["--checksum", &bad]);
    assert_eq!(res.status.code(), Some(1), "a mismatch is terminal");
    assert_refused(&res, &["checksum mismatch", sum]);
    assert!(!out(&sv).exists() && !sv.dir.path().join("out.raw.partial").exists(), "no image left behind");

    // On a volume, no disk.img either.
    let vol = sv.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    assert_refused(&import(&url, &vol, &["--checksum", &bad, "--size", &(64 * MIB).to_string()]), &["checksum"]);
    assert_eq!(std::fs::read_dir(&vol).unwrap().count(), 0);
}

/// A TCP relay to a server (nginx, moto...) that cuts `cuts` connections once each has relayed `after`
/// response bytes, and counts what it relays.
pub(crate) struct Cutter {
    pub(crate) port: u16,
    pub(crate) relayed: Arc<AtomicU64>,
    pub(crate) cuts_left: Arc<AtomicUsize>,
}

pub(crate) fn cutter(upstream: u16, cuts: usize, after: u64) -> Cutter {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let relayed = Arc::new(AtomicU64::new(0));
    let cuts_left = Arc::new(AtomicUsize::new(cuts));
    let (counter, budget) = (relayed.clone(), cuts_left.clone());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let (counter, budget) = (counter.clone(), budget.clone());
            std::thread::spawn(move || relay(client, upstream, after, &budget, &counter));
        }
    });
    Cutter { port, relayed, cuts_left }
}

fn relay(client: TcpStream, upstream: u16, after: u64, budget: &AtomicUsize, counter: &AtomicU64) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_in, &mut s_out);
    });
    let (mut s_in, mut c_out) = (server, client);
    let mut buf = [0u8; 16384];
    let mut sent = 0u64;
    let mut limit = after;
    loop {
        let n = match s_in.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut n = n;
        if sent + n as u64 >= limit {
            if budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1)).is_ok() {
                let keep = (limit - sent) as usize;
                let _ = c_out.write_all(&buf[..keep]);
                counter.fetch_add(keep as u64, Ordering::SeqCst);
                break; // drop the connection mid-body
            }
            limit = u64::MAX;
            n = n.min(buf.len());
        }
        if c_out.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        counter.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = c_out.shutdown(Shutdown::Both);
    let _ = s_in.shutdown(Shutdown::Both);
}

#[test]
fn dropped_connections_resume_from_the_last_good_byte() {
    let sv = served();
    let n = Nginx::start(sv.dir.path(), &sv.root, "keepalive_requests 1;", "");
    let size = std::fs::metadata(sv.root.join("disk.qcow2")).unwrap().len();
    // Three connections are cut after 1.5 MiB (of their 2 MiB data chunks).
    let cut = cutter(n.port, 3, 1536 * 1024);
    let url = format!("http://127.0.0.1:{}/disk.qcow2", cut.port);
    let res = import(&url, &out(&sv), &[]);
    assert_ok(&res);
    assert_same(&sv.raw, "raw", &out(&sv));
    assert_eq!(cut.cuts_left.load(Ordering::SeqCst), 0, "the relay cut nothing: the test proves nothing");
    let relayed = cut.relayed.load(Ordering::SeqCst);
    // Resuming re-fetches nothing; restarting the cut chunks would re-send 3 × 1.5 MiB.
    assert!(relayed < size + MIB, "relayed {relayed} bytes for a {size}-byte image: the download restarted");
    // Each resumed request starts mid-chunk, where the cut connection stopped.
    let resumed = requests(&n)
        .iter()
        .filter_map(|(_, range, _)| range.strip_prefix("bytes=")?.split('-').next()?.parse::<u64>().ok())
        .filter(|start| start % (64 * 1024) != 0)
        .count();
    assert!(resumed >= 3, "expected 3 resumed requests, log: {:?}", requests(&n));
}

#[test]
fn a_drop_without_range_support_is_a_retryable_failure() {
    let sv = served();
    let n = Nginx::start(sv.dir.path(), &sv.root, "max_ranges 0;", "");
    let cut = cutter(n.port, 100, 3 * MIB);
    let url = format!("http://127.0.0.1:{}/disk.qcow2", cut.port);
    let res = import(&url, &out(&sv), &[]);
    assert_eq!(
        res.status.code(),
        Some(75),
        "retryable failures exit with EX_TEMPFAIL: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_refused(&res, &["cannot resume"]);
    assert!(!out(&sv).exists() && !sv.dir.path().join("out.raw.partial").exists());
}
