//! The command line as a user meets it: volume sizing, preallocation, progress output,
//! exit codes, and Ctrl-C.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

#[test]
fn a_volume_gets_disk_img_sized_as_cdi_sizes_it() {
    let dir = tempdir();
    let raw = dir.path().join("d.raw");
    make_raw(&raw, 40 * MIB, 8);
    let q = dir.path().join("d.qcow2");
    qemu_img(&["convert", "-O", "qcow2", s(&raw), s(&q)]);
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("disk.img"), b"an old image").unwrap();

    assert_ok(&import(s(&q), &vol, &["--size", &(1u64 << 30).to_string()]));
    let disk = vol.join("disk.img");
    let meta = std::fs::metadata(&disk).unwrap();
    // usable = round_down(ceil(1 GiB / 1.06), 1 MiB) = 966 MiB, grown from the 40 MiB image.
    assert_eq!(meta.len(), 966 * MIB);
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_same(&raw, "raw", &disk);
    assert!(allocated(&disk) < 40 * MIB, "grown sparse, not filled");
    assert_eq!(std::fs::read_dir(&vol).unwrap().count(), 1, "no partial files left");

    // Another overhead, and preallocation: the whole usable size is allocated.
    assert_ok(&import(
        s(&q),
        &vol,
        &["--size", &(100 * MIB).to_string(), "--filesystem-overhead", "0.2", "--preallocate"],
    ));
    let meta = std::fs::metadata(&disk).unwrap();
    assert_eq!(meta.len(), 83 * MIB); // ceil(100 MiB / 1.2) = 87381334 → 83 MiB
    assert!(allocated(&disk) >= 83 * MIB, "preallocated: {} bytes allocated", allocated(&disk));
    assert_same(&raw, "raw", &disk);
}

#[test]
fn a_file_target_takes_the_requested_size() {
    let dir = tempdir();
    let raw = dir.path().join("d.raw");
    make_raw(&raw, 8 * MIB, 1);
    let out = dir.path().join("out.raw");
    assert_ok(&import(s(&raw), &out, &["--size", &(64 * MIB).to_string()]));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 64 * MIB);
    assert_same(&raw, "raw", &out);
}

#[test]
fn json_progress_ends_with_the_result() {
    let dir = tempdir();
    let raw = dir.path().join("d.raw");
    make_raw(&raw, 24 * MIB, 4);
    let xz = dir.path().join("d.qcow2.xz");
    run(Command::new("sh").arg("-c").arg(format!(
        "qemu-img convert -O qcow2 {r} {r}.qcow2 && xz -0 -c {r}.qcow2 > {x}",
        r = s(&raw),
        x = s(&xz)
    )));
    let res = import(s(&xz), &dir.path().join("out.raw"), &["--progress", "json"]);
    assert_ok(&res);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&res.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let result = lines.last().unwrap();
    assert_eq!(result["phase"], "complete");
    assert_eq!(result["virtual_size"], 24 * MIB);
    assert_eq!(result["formats"], serde_json::json!(["xz", "qcow2"]));
    assert!(result["bytes_written"].as_u64().unwrap() > 0);
    for line in &lines[..lines.len() - 1] {
        for key in ["phase", "bytes_done", "bytes_total", "bytes_per_second"] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
    }
}

#[test]
fn a_terminal_gets_a_progress_bar() {
    let dir = tempdir();
    let raw = dir.path().join("d.raw");
    make_raw(&raw, 16 * MIB, 4);
    // `script` gives the command a pseudo-terminal, as a user's shell would.
    let cmd = format!("{} import {} {}", mover_bin(), s(&raw), s(&dir.path().join("out.raw")));
    let out = with_timeout(
        {
            let mut c = Command::new("script");
            c.args(["-qec", &cmd, "/dev/null"]);
            c
        },
        Duration::from_secs(60),
    );
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("imported 16.0 MiB (raw)"), "summary line missing: {text}");
}

#[test]
fn usage_errors_and_missing_sources_are_clear() {
    let dir = tempdir();
    let out = dir.path().join("out.raw");
    let res = import("/nonexistent/image.qcow2", &out, &[]);
    assert_eq!(res.status.code(), Some(1));
    assert_refused(&res, &["cannot open source", "/nonexistent/image.qcow2"]);

    let res = import("ftp://example.com/x", &out, &[]);
    assert_refused(&res, &["unsupported source scheme", "ftp"]);

    let res = import("x", &out, &["--checksum", "crc32:1234"]);
    assert_eq!(res.status.code(), Some(2), "clap rejects bad flags");

    let res = import("x", &out, &["--filesystem-overhead", "1.5"]);
    assert_refused(&res, &["between 0 and 1"]);

    let bad_creds = dir.path().join("creds");
    std::fs::write(&bad_creds, "only-a-user\n").unwrap();
    let res = import("http://127.0.0.1:9/x", &out, &["--basic-auth-file", s(&bad_creds)]);
    assert_refused(&res, &["basic auth file", "second"]);
}

#[test]
fn ctrl_c_cancels_and_leaves_nothing_behind() {
    let dir = tempdir();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    make_raw(&www.join("d.raw"), 64 * MIB, 6);
    // A slow server, so the import is surely mid-transfer when interrupted.
    let n = Nginx::start(dir.path(), &www, "limit_rate 4m; max_ranges 0;", "");
    let out = dir.path().join("out.raw");
    let mut child = Command::new(mover_bin())
        .args(["import", &n.url("http", "d.raw"), s(&out), "--progress", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first progress line that shows bytes moving.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("progress ended before any bytes moved").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["bytes_done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(rest.last().unwrap().contains("\"reason\":\"Cancelled\""), "{rest:?}");
    assert!(!out.exists() && !dir.path().join("out.raw.partial").exists());
}
