//! S3 sources against a real S3 server (moto, checking SigV4 signatures and IAM): qcow2 and
//! xz objects, ranged parallel reads, missing keys and refused credentials, a dropped
//! connection resumed, and keys never shown.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::http::cutter;
use crate::peers_s3::Moto;
use crate::support::*;

const BUCKET: &str = "images";

/// A raw disk, its qcow2 and its xz, and a moto holding the last two.
struct Fixture {
    dir: tempfile::TempDir,
    raw: PathBuf,
    moto: Moto,
}

fn fixture(moto: impl FnOnce(&Path) -> Moto) -> Fixture {
    let dir = tempdir();
    let raw = dir.path().join("disk.raw");
    make_raw(&raw, 24 * MIB, 23);
    let qcow2 = dir.path().join("disk.qcow2");
    qemu_img(&["convert", "-O", "qcow2", s(&raw), s(&qcow2)]);
    sh(&format!("xz -1 -T1 -c {} > {}", s(&raw), s(&dir.path().join("disk.raw.xz"))));
    let moto = moto(dir.path());
    moto.put_object(BUCKET, "vm/disk.qcow2", &qcow2);
    moto.put_object(BUCKET, "vm/disk.raw.xz", &dir.path().join("disk.raw.xz"));
    Fixture { dir, raw, moto }
}

impl Fixture {
    fn out(&self) -> PathBuf {
        self.dir.path().join("out.raw")
    }

    /// A --creds-file with the server's keys, or with `secret` instead of its secret key.
    fn creds(&self, id: Option<&str>, secret: Option<&str>) -> PathBuf {
        let (real_id, real_secret) = self.moto.keys.clone().expect("a moto with keys");
        let file = self.dir.path().join("creds");
        std::fs::write(&file, format!("{}\n{}\n", id.unwrap_or(&real_id), secret.unwrap_or(&real_secret))).unwrap();
        file
    }

    /// Ranged GETs of `key` that moto answered with 206.
    fn ranged_gets(&self, key: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join(format!("moto-{}.log", self.moto.port))).unwrap();
        log.lines().filter(|l| l.contains(&format!("\"GET /{BUCKET}/{key} HTTP/1.1\" 206"))).count()
    }
}

fn s3_import(url: &str, target: &Path, creds: Option<&Path>, extra: &[&str]) -> Output {
    let mut args = vec!["--s3"];
    if let Some(c) = creds {
        args.extend(["--creds-file", s(c)]);
    }
    args.extend_from_slice(extra);
    import(url, target, &args)
}

#[test]
fn qcow2_and_xz_objects_import_identical_with_signed_ranged_reads() {
    let f = fixture(Moto::start);
    let creds = f.creds(None, None);
    let res = s3_import(&f.moto.url(BUCKET, "vm/disk.qcow2"), &f.out(), Some(&creds), &["--progress", "json"]);
    assert_ok(&res);
    assert_same(&f.raw, "raw", &f.out());
    let result: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&res.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(result["formats"], serde_json::json!(["qcow2"]));
    // Random access over signed range requests, several of them (metadata, then data).
    let ranged = f.ranged_gets("vm/disk.qcow2");
    assert!(ranged >= 4, "expected several signed ranged GETs, moto answered {ranged} with 206");

    // The xz into a filesystem volume (a directory): disk.img.
    let vol = f.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let size = (64 * MIB).to_string();
    assert_ok(&s3_import(&f.moto.url(BUCKET, "vm/disk.raw.xz"), &vol, Some(&creds), &["--size", &size]));
    assert_same(&f.raw, "raw", &vol.join("disk.img"));
}

#[test]
fn anonymous_access_needs_no_keys() {
    let f = fixture(Moto::start_anonymous);
    assert_ok(&s3_import(&f.moto.url(BUCKET, "vm/disk.qcow2"), &f.out(), None, &[]));
    assert_same(&f.raw, "raw", &f.out());
}

#[test]
fn missing_objects_and_refused_keys_are_terminal_and_named() {
    let f = fixture(Moto::start);
    let good = f.creds(None, None);
    let last_json = |res: &Output| -> serde_json::Value {
        serde_json::from_str(String::from_utf8_lossy(&res.stdout).lines().last().unwrap()).unwrap()
    };

    let missing = f.moto.url(BUCKET, "vm/missing.qcow2");
    let res = s3_import(&missing, &f.out(), Some(&good), &["--progress", "json"]);
    assert_eq!(res.status.code(), Some(1), "a missing key is terminal");
    assert_refused(&res, &["NoSuchKey", "\"images\"", "\"vm/missing.qcow2\""]);
    assert_eq!(last_json(&res)["reason"], "NotFound");

    let res = s3_import(&f.moto.url("no-such-bucket", "disk.qcow2"), &f.out(), Some(&good), &[]);
    assert_eq!(res.status.code(), Some(1));
    assert_refused(&res, &["NoSuchBucket", "no-such-bucket"]);

    let url = f.moto.url(BUCKET, "vm/disk.qcow2");
    let wrong_secret = f.creds(None, Some("wrong-secret-Zq81"));
    let res = s3_import(&url, &f.out(), Some(&wrong_secret), &["--progress", "json"]);
    assert_eq!(res.status.code(), Some(1), "refused credentials are terminal");
    let line = assert_refused(&res, &["SignatureDoesNotMatch", "secret key", "vm/disk.qcow2"]);
    assert_eq!(last_json(&res)["reason"], "Unauthorized");
    assert_eq!(last_json(&res)["retryable"], false);
    assert!(!line.contains("wrong-secret-Zq81"), "{line}");

    let wrong_id = f.creds(Some("AKIAUNKNOWNKEY000000"), None);
    let res = s3_import(&url, &f.out(), Some(&wrong_id), &[]);
    assert_eq!(res.status.code(), Some(1));
    assert_refused(&res, &["InvalidAccessKeyId"]);

    assert!(!f.out().exists() && !f.dir.path().join("out.raw.partial").exists(), "an image was left behind");
}

#[test]
fn a_dropped_connection_resumes_from_the_last_good_byte() {
    let f = fixture(Moto::start);
    let creds = f.creds(None, None);
    let size = std::fs::metadata(f.dir.path().join("disk.qcow2")).unwrap().len();
    // Three connections are cut after 1.5 MiB of their 2 MiB chunks; each resumed request
    // is signed again.
    let cut = cutter(f.moto.port, 3, 1536 * 1024);
    let url = format!("http://127.0.0.1:{}/{BUCKET}/vm/disk.qcow2", cut.port);
    assert_ok(&s3_import(&url, &f.out(), Some(&creds), &[]));
    assert_same(&f.raw, "raw", &f.out());
    assert_eq!(cut.cuts_left.load(Ordering::SeqCst), 0, "the relay cut nothing: the test proves nothing");
    let relayed = cut.relayed.load(Ordering::SeqCst);
    assert!(relayed < size + MIB, "relayed {relayed} bytes for a {size}-byte object: the download restarted");
}

#[test]
fn keys_never_reach_the_output_even_when_tracing_everything() {
    let f = fixture(Moto::start);
    let (id, secret) = f.moto.keys.clone().unwrap();
    const WRONG: &str = "wrong-secret-Pm27-never-shown";
    let url = f.moto.url(BUCKET, "vm/disk.qcow2");
    let traced = |creds: &Path| {
        let mut cmd = Command::new(mover_bin());
        cmd.args(["import", &url, s(&f.out()), "--s3", "--creds-file", s(creds), "--progress", "json"]);
        cmd.env("RUST_LOG", "trace");
        with_timeout(cmd, Duration::from_secs(120))
    };
    let refused = traced(&f.creds(None, Some(WRONG)));
    assert_refused(&refused, &["SignatureDoesNotMatch"]);
    let ok = traced(&f.creds(None, None));
    assert_ok(&ok);
    assert_same(&f.raw, "raw", &f.out());
    assert!(String::from_utf8_lossy(&ok.stderr).contains("TRACE"), "not tracing");
    for (what, out) in [("success", &ok), ("refusal", &refused)] {
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let text = String::from_utf8_lossy(bytes);
            for needle in [secret.as_str(), WRONG, id.as_str()] {
                let at =
                    text.find(needle).map(|i| &text[i.saturating_sub(300)..(i + needle.len() + 100).min(text.len())]);
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
fn bad_flags_are_refused_before_any_request() {
    let dir = tempdir();
    let out = dir.path().join("out.raw");
    let creds = dir.path().join("creds");
    std::fs::write(&creds, "only-an-id\n").unwrap();
    let res = import("s3://bucket/key.img", &out, &["--creds-file", s(&creds)]);
    assert_refused(&res, &["credentials file"]);
    let res = import("http://127.0.0.1:1/b/k", &out, &["--creds-file", s(&creds)]);
    assert_refused(&res, &["--basic-auth-file"]);
    let res = import("s3://bucket-only", &out, &[]);
    assert_refused(&res, &["bucket and an object key"]);
}

/// Through the node agent: `cdi-mover client populate --s3 …` sends an S3Source with the
/// keys; the mover lists s3 and gcs among its sources.
#[test]
fn the_node_agent_imports_an_s3_source_from_the_grpc_api() {
    let f = fixture(Moto::start);
    let creds = f.creds(None, None);
    let serve = crate::service::Serve::start(f.dir.path(), &["--insecure-plaintext"]);
    let client = |args: &[&str]| {
        let mut cmd = Command::new(mover_bin());
        cmd.args(["client", "--insecure-plaintext", "--address", &serve.addr]).args(args);
        with_timeout(cmd, Duration::from_secs(120))
    };
    let caps = client(&["capabilities"]);
    assert_ok(&caps);
    let caps: serde_json::Value = serde_json::from_slice(&caps.stdout).unwrap();
    for source in ["s3", "gcs"] {
        assert!(caps["sources"].as_array().unwrap().iter().any(|s| s == source), "{caps}");
    }
    let url = f.moto.url(BUCKET, "vm/disk.qcow2");
    let res = client(&["populate", "--s3", &url, s(&f.out()), "--creds-file", s(&creds), "--progress", "json"]);
    assert_ok(&res);
    assert_same(&f.raw, "raw", &f.out());
    let (_, secret) = f.moto.keys.clone().unwrap();
    assert!(!serve.log().contains(&secret), "the secret key reached the mover's log");

    let res = client(&["populate", "--s3", &f.moto.url(BUCKET, "vm/gone.img"), s(&f.out()), "--creds-file", s(&creds)]);
    assert_refused(&res, &["NoSuchKey", "vm/gone.img"]);
}
