//! containerDisks from a real registry (Debian's docker-registry with TLS and htpasswd),
//! pushed with skopeo, and from OCI archives: each import identical to its disk
//! (`qemu-img compare`), each bad image refused with a clear message and nothing left.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::http::cutter;
use crate::peers_registry::{ImageSpec, LayerCompression, LayerSpec, Registry, pack_oci_archive, write_layout};
use crate::support::*;

const SIZE: u64 = 24 * MIB;

struct Fixture {
    dir: tempfile::TempDir,
    registry: Registry,
    creds: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempdir();
    let registry = Registry::start(dir.path());
    let creds = dir.path().join("creds");
    std::fs::write(&creds, format!("{}:{}\n", registry.user, registry.password)).unwrap();
    Fixture { dir, registry, creds }
}

impl Fixture {
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A raw disk and its qcow2.
    fn disks(&self, name: &str, seed: u64) -> (PathBuf, PathBuf) {
        let raw = self.p(&format!("{name}.raw"));
        make_raw(&raw, SIZE, seed);
        let qcow2 = self.p(&format!("{name}.qcow2"));
        qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow2)]);
        (raw, qcow2)
    }

    fn import(&self, url: &str, target: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["--creds-file", s(&self.creds), "--ca-file", s(&self.registry.ca_pem_path)];
        args.extend_from_slice(extra);
        import(url, target, &args)
    }

    /// Refused with `needles`, and no complete-looking target left.
    fn refused(&self, url: &str, needles: &[&str], extra: &[&str]) -> String {
        let out = self.p("refused.raw");
        let line = assert_refused(&self.import(url, &out, extra), needles);
        assert!(!out.exists() && !self.p("refused.raw.partial").exists(), "{url}: an image was left behind");
        eprintln!("refused as expected: {line}");
        line
    }
}

#[test]
fn container_disks_import_identical_into_file_block_and_directory() {
    let f = fixture();
    let (raw, qcow2) = f.disks("fedora", 1);
    let url = f.registry.push_disk(f.dir.path(), "vm/fedora:41", &qcow2);
    // A file.
    let out = f.p("out.raw");
    assert_ok(&f.import(&url, &out, &[]));
    assert_same(&qcow2, "qcow2", &out);
    // A block device, holding old data where the disk has zeros.
    let dev = LoopDev::new(f.dir.path(), SIZE, 7);
    assert_ok(&f.import(&url, &dev.path, &[]));
    assert_same(&raw, "raw", &dev.path);
    // A directory (a Filesystem volume): disk.img inside.
    let vol = f.p("vol");
    std::fs::create_dir(&vol).unwrap();
    assert_ok(&f.import(&url, &vol, &["--size", &(2 * SIZE).to_string()]));
    assert_same_prefix(&raw, "raw", &vol.join("disk.img"), SIZE);

    // A raw.xz in a zstd layer, and a raw in an uncompressed one.
    let xz = f.p("fedora.raw.xz");
    run(Command::new("sh").arg("-c").arg(format!("xz -T1 -0 -c {} > {}", s(&raw), s(&xz))));
    for (tag, compression, disk) in
        [("xz-in-zstd", LayerCompression::Zstd, &xz), ("raw-plain", LayerCompression::None, &raw)]
    {
        let layer = LayerSpec { files: vec![("disk/disk.img".into(), Some(disk.clone()))], compression };
        let pushed =
            f.registry.push_image(f.dir.path(), &format!("vm/fedora:{tag}"), &[ImageSpec::new("amd64", vec![layer])]);
        let out = f.p(&format!("{tag}.raw"));
        assert_ok(&f.import(&pushed.url, &out, &[]));
        assert_same(&raw, "raw", &out);
    }
}

#[test]
fn an_image_index_resolves_by_platform() {
    let f = fixture();
    let (amd_raw, amd) = f.disks("amd", 2);
    let (arm_raw, arm) = f.disks("arm", 3);
    let images = [
        ImageSpec::new("amd64", vec![LayerSpec::disk("disk/disk.qcow2", &amd)]),
        ImageSpec::new("arm64", vec![LayerSpec::disk("disk/disk.qcow2", &arm)]),
    ];
    let url = f.registry.push_image(f.dir.path(), "vm/multi:1", &images).url;
    for (platform, raw) in [("arm64", &arm_raw), ("linux/amd64", &amd_raw), ("linux/aarch64", &arm_raw)] {
        let out = f.p(&format!("out-{}.raw", platform.replace('/', "_")));
        assert_ok(&f.import(&url, &out, &["--platform", platform]));
        assert_same(raw, "raw", &out);
    }
    let line = f.refused(&url, &["linux/s390x", "linux/amd64", "linux/arm64", "vm/multi:1"], &["--platform", "s390x"]);
    assert!(line.contains("no image for platform"), "{line}");

    // The same as Docker schema 2: a manifest list of v2 manifests.
    let url = f.registry.push_image_docker_v2s2(f.dir.path(), "vm/multi:v2s2", &images).url;
    let manifest = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--creds", &format!("{}:{}", f.registry.user, f.registry.password), "--cert-dir"])
        .arg(&f.registry.cert_dir)
        .arg(&url));
    let manifest = String::from_utf8_lossy(&manifest.stdout).to_string();
    assert!(manifest.contains("application/vnd.docker.distribution.manifest.list.v2+json"), "{manifest}");
    for (platform, raw) in [("arm64", &arm_raw), ("amd64", &amd_raw)] {
        let out = f.p(&format!("v2s2-{platform}.raw"));
        assert_ok(&f.import(&url, &out, &["--platform", platform]));
        assert_same(raw, "raw", &out);
    }
}

#[test]
fn later_layers_win_and_whiteouts_hide() {
    let f = fixture();
    let (_, old) = f.disks("old", 4);
    let (_, replaced) = f.disks("replaced", 5);
    let (new_raw, new) = f.disks("new", 6);
    let layers = vec![
        // Bottom: two disks, one whited out above, one replaced above.
        LayerSpec {
            files: vec![("disk/old.qcow2".into(), Some(old.clone())), ("disk/disk.qcow2".into(), Some(replaced))],
            compression: LayerCompression::Gzip,
        },
        LayerSpec { files: vec![("disk/.wh.old.qcow2".into(), None)], compression: LayerCompression::Zstd },
        LayerSpec { files: vec![("./disk/disk.qcow2".into(), Some(new.clone()))], compression: LayerCompression::Gzip },
    ];
    let url = f.registry.push_image(f.dir.path(), "vm/layers:1", &[ImageSpec::new("amd64", layers)]).url;
    let out = f.p("out.raw");
    assert_ok(&f.import(&url, &out, &[]));
    assert_same(&new_raw, "raw", &out);

    // An opaque directory above hides everything below it.
    let layers = vec![
        LayerSpec::disk("disk/old.qcow2", &old),
        LayerSpec {
            files: vec![("disk/.wh..wh..opq".into(), None), ("disk/new.qcow2".into(), Some(new))],
            compression: LayerCompression::Gzip,
        },
    ];
    let url = f.registry.push_image(f.dir.path(), "vm/layers:opaque", &[ImageSpec::new("amd64", layers)]).url;
    let out = f.p("out-opaque.raw");
    assert_ok(&f.import(&url, &out, &[]));
    assert_same(&new_raw, "raw", &out);
}

#[test]
fn bad_images_and_requests_are_refused_clearly() {
    let f = fixture();
    let (_, qcow2) = f.disks("d", 8);
    let url = f.registry.push_disk(f.dir.path(), "vm/good:1", &qcow2);
    let other = f.p("other.txt");
    std::fs::write(&other, "not a disk").unwrap();

    // Wrong password: terminal (exit 1, not the retryable exit), naming the image.
    let wrong = f.p("wrong-creds");
    std::fs::write(&wrong, format!("{}\nnot-the-password\n", f.registry.user)).unwrap();
    let out = f.p("refused.raw");
    let res = import(&url, &out, &["--creds-file", s(&wrong), "--ca-file", s(&f.registry.ca_pem_path)]);
    assert_refused(&res, &["vm/good:1", "credentials"]);
    assert_eq!(res.status.code(), Some(1));
    assert!(!out.exists());
    // No CA: the registry's certificate is not trusted; --insecure-registry accepts it.
    let res = import(&url, &out, &["--creds-file", s(&f.creds)]);
    assert_refused(&res, &["vm/good:1"]);
    assert_ok(&import(&url, &out, &["--creds-file", s(&f.creds), "--insecure-registry"]));
    std::fs::remove_file(&out).unwrap();

    f.refused(&url.replace(":1", ":missing"), &["vm/good:missing", "not found"], &[]);
    f.refused(&format!("docker://{}/vm/nothing:1", f.registry.host()), &["vm/nothing:1", "not found"], &[]);

    let push = |tag: &str, layers: Vec<LayerSpec>| {
        f.registry.push_image(f.dir.path(), &format!("vm/bad:{tag}"), &[ImageSpec::new("amd64", layers)])
    };
    let no_disk = push("nodisk", vec![LayerSpec::disk("etc/other.txt", &other)]);
    f.refused(&no_disk.url, &["vm/bad:nodisk", "no regular file under /disk/"], &[]);
    let two = push(
        "two",
        vec![LayerSpec {
            files: vec![("disk/a.qcow2".into(), Some(qcow2.clone())), ("disk/b.txt".into(), Some(other.clone()))],
            compression: LayerCompression::Gzip,
        }],
    );
    f.refused(&two.url, &["vm/bad:two", "more than one", "/disk/a.qcow2", "/disk/b.txt"], &[]);
    let two_layers =
        push("two-layers", vec![LayerSpec::disk("disk/b.txt", &other), LayerSpec::disk("disk/a.qcow2", &qcow2)]);
    f.refused(&two_layers.url, &["more than one", "/disk/a.qcow2", "/disk/b.txt"], &[]);

    let mut bootc = ImageSpec::new("amd64", vec![LayerSpec::disk("disk/a.qcow2", &qcow2)]);
    bootc.labels.push(("containers.bootc".into(), "1".into()));
    let bootc = f.registry.push_image(f.dir.path(), "vm/bad:bootc", &[bootc]);
    f.refused(&bootc.url, &["vm/bad:bootc", "bootable", "containers.bootc"], &[]);

    // Layers altered on the registry's storage: their digests no longer match. Uncompressed
    // (caught at the layer's end) and gzip (the inflater trips first; the digest explains).
    let raw = f.p("d.raw");
    for (tag, compression) in [("corrupt-tar", LayerCompression::None), ("corrupt-gz", LayerCompression::Gzip)] {
        let corrupt =
            push(tag, vec![LayerSpec { files: vec![("disk/disk.img".into(), Some(raw.clone()))], compression }]);
        let digest = &corrupt.layers[0][0];
        let blob = f.registry.blob_path(digest);
        let at = std::fs::metadata(&blob).unwrap().len() / 2;
        let byte = peek(&blob, at, 1)[0];
        poke(&blob, at, &[byte ^ 0x55]);
        let line = f.refused(&corrupt.url, &[tag, digest, "does not match its digest"], &[]);
        assert!(!line.contains("retry"), "{line}");
        // Into a block device too: written as it streamed, but the import fails.
        let dev = LoopDev::new(f.dir.path(), SIZE, 9);
        assert_refused(&f.import(&corrupt.url, &dev.path, &[]), &["does not match its digest"]);
    }
}

#[test]
fn credentials_never_reach_the_output_even_when_tracing_everything() {
    let f = fixture();
    let (_, qcow2) = f.disks("d", 10);
    let url = f.registry.push_disk(f.dir.path(), "vm/secret:1", &qcow2);
    // Trace output is large: into files, not pipes that would fill and block the mover.
    let traced = |creds: &Path, progress: &str| {
        let (so, se) = (f.p(&format!("{progress}.stdout")), f.p(&format!("{progress}.stderr")));
        let mut cmd = Command::new(mover_bin());
        cmd.arg("import").arg(&url).arg(f.p(&format!("out-{progress}.raw")));
        cmd.args(["--creds-file", s(creds), "--ca-file", s(&f.registry.ca_pem_path), "--progress", progress]);
        cmd.env("RUST_LOG", "trace");
        cmd.stdout(std::fs::File::create(&so).unwrap()).stderr(std::fs::File::create(&se).unwrap());
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the traced import hung");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Output { status, stdout: std::fs::read(&so).unwrap(), stderr: std::fs::read(&se).unwrap() }
    };
    const WRONG: &str = "wrong-Zq93-guess";
    let wrong = f.p("wrong");
    std::fs::write(&wrong, format!("{}:{WRONG}\n", f.registry.user)).unwrap();
    let refused = traced(&wrong, "json");
    assert_refused(&refused, &["credentials"]);
    let ok = traced(&f.creds, "bar");
    assert_ok(&ok);
    assert!(String::from_utf8_lossy(&ok.stderr).contains("TRACE"), "not tracing");
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (user, pw) = (&f.registry.user, &f.registry.password);
    let needles =
        [pw.clone(), WRONG.to_string(), b64(pw), b64(&format!("{user}:{pw}")), b64(&format!("{user}:{WRONG}"))];
    for (what, out) in [("success", &ok), ("refusal", &refused)] {
        for bytes in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(bytes);
            for needle in &needles {
                assert!(!text.contains(needle.as_str()), "{needle:?} in the output of the {what}");
            }
        }
    }
}

#[test]
fn oci_archives_import_in_place() {
    let dir = tempdir();
    let raw = dir.path().join("d.raw");
    make_raw(&raw, SIZE, 11);
    let qcow2 = dir.path().join("d.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow2)]);
    let (_, arm) = (raw.clone(), qcow2.clone());
    let layout = dir.path().join("layout");
    let images = [
        ImageSpec::new("amd64", vec![LayerSpec::disk("disk/disk.qcow2", &qcow2)]),
        ImageSpec::new("arm64", vec![LayerSpec::disk("disk/other.qcow2", &arm)]),
    ];
    write_layout(&layout, "vm:1", &images);
    let archive = dir.path().join("image.tar");
    pack_oci_archive(&layout, &archive);
    let out = dir.path().join("out.raw");
    assert_ok(&import(&format!("oci-archive://{}", s(&archive)), &out, &["--platform", "amd64"]));
    assert_same(&raw, "raw", &out);
    let line = assert_refused(
        &import(&format!("oci-archive://{}", s(&archive)), &out, &["--platform", "riscv64"]),
        &["riscv64", "linux/arm64"],
    );
    assert!(line.contains("oci-archive://"), "{line}");
    assert_refused(&import("oci-archive:///nonexistent/x.tar", &out, &[]), &["/nonexistent/x.tar"]);
}

#[test]
fn a_layer_download_cut_midway_resumes_from_the_last_good_byte() {
    let f = fixture();
    let (raw, _) = f.disks("cut", 13);
    // Uncompressed, so the layer's bytes are the disk's plus its tar header.
    let layer =
        LayerSpec { files: vec![("disk/disk.img".into(), Some(raw.clone()))], compression: LayerCompression::None };
    let pushed = f.registry.push_image(f.dir.path(), "vm/cut:1", &[ImageSpec::new("amd64", vec![layer])]);
    // Three connections are cut once each has carried 5 MiB: the layer's, then each resumed one.
    let cut = cutter(f.registry.port, 3, 5 * MIB);
    let url = pushed.url.replace(&f.registry.host(), &format!("127.0.0.1:{}", cut.port));
    let out = f.p("cut.raw");
    let res = f.import(&url, &out, &[]);
    assert_ok(&res);
    assert_same(&raw, "raw", &out);
    assert_eq!(cut.cuts_left.load(Ordering::SeqCst), 0, "the relay cut nothing: the test proves nothing");
    let relayed = cut.relayed.load(Ordering::SeqCst);
    // Starting the layer (or the import) over would send at least 5 MiB more per cut.
    assert!(relayed < SIZE + MIB, "relayed {relayed} bytes for a {SIZE}-byte layer: the download restarted");
    let log = String::from_utf8_lossy(&res.stderr);
    assert_eq!(log.matches("layer download interrupted; resuming").count(), 3, "{log}");
}

#[test]
fn an_insecure_registry_speaks_plain_http_only_when_allowed() {
    let dir = tempdir();
    let registry = Registry::start_plain_http(dir.path());
    let raw = dir.path().join("d.raw");
    make_raw(&raw, SIZE, 12);
    let url = registry.push_disk(dir.path(), "vm/plain:1", &raw);
    let out = dir.path().join("out.raw");
    // Not declared insecure: HTTPS only, which this registry does not speak.
    let line = assert_refused(&import(&url, &out, &[]), &["vm/plain:1", "cannot reach the registry"]);
    assert!(!out.exists(), "{line}");
    assert_ok(&import(&url, &out, &["--insecure-registry"]));
    assert_same(&raw, "raw", &out);
}

#[test]
fn the_client_populates_from_a_registry_through_a_running_mover() {
    let f = fixture();
    let (amd_raw, amd) = f.disks("amd", 13);
    let (arm_raw, arm) = f.disks("arm", 14);
    let images = [
        ImageSpec::new("amd64", vec![LayerSpec::disk("disk/disk.qcow2", &amd)]),
        ImageSpec::new("arm64", vec![LayerSpec::disk("disk/disk.qcow2", &arm)]),
    ];
    let url = f.registry.push_image(f.dir.path(), "vm/remote:1", &images).url;
    let serve = crate::service::Serve::start(f.dir.path(), &["--insecure-plaintext"]);
    let populate = |id: &str, target: &Path, platform: &str| {
        let mut c = Command::new(mover_bin());
        c.args(["client", "--insecure-plaintext", "--address", &serve.addr, "populate", "--task-id", id]);
        c.arg(&url).arg(target);
        c.args(["--creds-file", s(&f.creds), "--ca-file", s(&f.registry.ca_pem_path), "--platform", platform]);
        c.args(["--progress", "json"]);
        with_timeout(c, Duration::from_secs(120))
    };
    let out = f.p("remote-arm.raw");
    assert_ok(&populate("reg-arm", &out, "arm64"));
    assert_same(&arm_raw, "raw", &out);
    let out = f.p("remote-amd.raw");
    assert_ok(&populate("reg-amd", &out, "linux/amd64"));
    assert_same(&amd_raw, "raw", &out);
    // Refusals come back as terminal task failures naming the image.
    let res = populate("reg-none", &f.p("remote-none.raw"), "s390x");
    let line = assert_refused(&res, &["vm/remote:1", "linux/s390x", "linux/arm64"]);
    assert_eq!(res.status.code(), Some(1), "{line}");
    assert!(!serve.log().contains(&f.registry.password), "the mover logged the password");
}
