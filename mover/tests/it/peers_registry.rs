//! A real container registry for tests: Debian's `docker-registry` on 127.0.0.1 with TLS
//! (a CA made here with openssl) and htpasswd auth, and images pushed to it with `skopeo`
//! from OCI layouts written here with tar, gzip, zstd and sha256sum. Std only: the e2e
//! suite includes this file by path, next to `peers.rs` (whose `ensure_tool` and
//! `free_port` it uses, so include both).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::peers::{ensure_tool, free_port, wait_listening};

/// How a layer's tar is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

/// One layer: files at paths in the image (`disk/disk.img`), from a local file or empty
/// (whiteouts: `disk/.wh.disk.img`, `disk/.wh..wh..opq`).
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub files: Vec<(String, Option<PathBuf>)>,
    pub compression: LayerCompression,
}

impl LayerSpec {
    pub fn disk(path_in_image: &str, disk: &Path) -> LayerSpec {
        LayerSpec {
            files: vec![(path_in_image.to_string(), Some(disk.to_path_buf()))],
            compression: LayerCompression::Gzip,
        }
    }
}

/// One platform's image: its layers bottom to top, its architecture, its config labels.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub architecture: String,
    pub layers: Vec<LayerSpec>,
    pub labels: Vec<(String, String)>,
}

impl ImageSpec {
    pub fn new(architecture: &str, layers: Vec<LayerSpec>) -> ImageSpec {
        ImageSpec { architecture: architecture.to_string(), layers, labels: Vec::new() }
    }
}

/// What was pushed: the docker:// URL, and each platform's layer digests (bottom to top).
#[derive(Debug, Clone)]
pub struct Pushed {
    pub url: String,
    pub layers: Vec<Vec<String>>,
}

/// A running registry; killed on drop.
pub struct Registry {
    pub port: u16,
    /// TLS and htpasswd; false: plain HTTP, anonymous.
    pub secure: bool,
    /// The CA that signed the registry's certificate (PEM).
    pub ca_pem_path: PathBuf,
    /// A directory with the CA as `ca.crt`, as skopeo's --cert-dir wants it.
    pub cert_dir: PathBuf,
    pub user: String,
    pub password: String,
    /// The registry's storage root (blobs under docker/registry/v2/blobs).
    pub storage: PathBuf,
    child: Child,
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn sha256_file(path: &Path) -> String {
    let out = String::from_utf8(run(Command::new("sha256sum").arg(path))).unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

impl Registry {
    /// Starts a registry under `dir` (made if missing) with a fresh CA and one user.
    pub fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, true)
    }

    /// A registry speaking plain HTTP without auth (an "insecure registry").
    pub fn start_plain_http(dir: &Path) -> Registry {
        Registry::start_with(dir, false)
    }

    fn start_with(dir: &Path, secure: bool) -> Registry {
        ensure_tool("docker-registry", "docker-registry");
        ensure_tool("skopeo", "skopeo");
        ensure_tool("htpasswd", "apache2-utils");
        ensure_tool("openssl", "openssl");
        let dir = dir.join(if secure { "registry" } else { "registry-plain" });
        let cert_dir = dir.join("certs");
        std::fs::create_dir_all(&cert_dir).unwrap();
        let p = |name: &str| dir.join(name);
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=cdi-rs test registry CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
            ])
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")));
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
            ])
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr")));
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial", "2", "-in"])
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("ext.cnf"))
            .arg("-out")
            .arg(p("server.pem")));
        std::fs::copy(p("ca.pem"), cert_dir.join("ca.crt")).unwrap();
        let user = "cdi-reg-user".to_string();
        let password = "reg-pw-Vb61-s3cr3t".to_string();
        let htpasswd = run(Command::new("htpasswd").args(["-Bbn", &user, &password]));
        std::fs::write(p("htpasswd"), htpasswd).unwrap();
        let storage = p("storage");
        for attempt in 0..5 {
            let port = free_port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage = storage.display(),
            );
            if secure {
                config.push_str(&format!(
                    "  tls:\n    certificate: {cert}\n    key: {key}\nauth:\n  htpasswd:\n    realm: cdi-rs-test\n    path: {htpasswd}\n",
                    cert = p("server.pem").display(),
                    key = p("server.key").display(),
                    htpasswd = p("htpasswd").display(),
                ));
            }
            std::fs::write(p("config.yml"), config).unwrap();
            let log = std::fs::File::create(p("registry.log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(p("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let mut r = Registry {
                port,
                secure,
                ca_pem_path: p("ca.pem"),
                cert_dir: cert_dir.clone(),
                user: user.clone(),
                password: password.clone(),
                storage: storage.clone(),
                child,
            };
            if r.wait_ready() {
                return r;
            }
            let _ = r.child.kill();
            let _ = r.child.wait();
            eprintln!("registry attempt {attempt} on port {port} did not come up; retrying");
        }
        panic!("docker-registry did not start: {}", std::fs::read_to_string(p("registry.log")).unwrap_or_default());
    }

    fn wait_ready(&mut self) -> bool {
        wait_listening(&mut self.child, self.port, Duration::from_secs(20))
    }

    /// `host:port` of the registry.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps a blob (tests corrupt it there).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// Pushes a one-layer containerDisk (gzip layer, `disk/<file name>`, this machine's
    /// architecture is not set: amd64) as `repo_tag`; returns its docker:// URL.
    pub fn push_disk(&self, dir: &Path, repo_tag: &str, disk: &Path) -> String {
        let name = disk.file_name().unwrap().to_string_lossy();
        let image = ImageSpec::new("amd64", vec![LayerSpec::disk(&format!("disk/{name}"), disk)]);
        self.push_image(dir, repo_tag, &[image]).url
    }

    /// Pushes one image, or an image index when several platforms are given.
    pub fn push_image(&self, dir: &Path, repo_tag: &str, images: &[ImageSpec]) -> Pushed {
        self.push(dir, repo_tag, images, false)
    }

    /// [`Registry::push_image`] converted by skopeo to Docker's schema 2 (manifest list for
    /// several platforms); layer digests as written, manifests not.
    pub fn push_image_docker_v2s2(&self, dir: &Path, repo_tag: &str, images: &[ImageSpec]) -> Pushed {
        self.push(dir, repo_tag, images, true)
    }

    fn push(&self, dir: &Path, repo_tag: &str, images: &[ImageSpec], docker_v2s2: bool) -> Pushed {
        let layout = dir.join(format!("layout-{}", repo_tag.replace(['/', ':'], "_")));
        let (tag, layers) = write_layout(&layout, repo_tag, images);
        let dest = format!("docker://{}/{repo_tag}", self.host());
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet"]);
        if docker_v2s2 {
            cmd.args(["--format", "v2s2"]);
        } else {
            // Pushed as written (skopeo would gzip uncompressed layers).
            cmd.arg("--preserve-digests");
        }
        if self.secure {
            let creds = format!("{}:{}", self.user, self.password);
            cmd.args(["--dest-creds", &creds, "--dest-cert-dir"]).arg(&self.cert_dir);
        } else {
            cmd.arg("--dest-tls-verify=false");
        }
        if images.len() > 1 {
            cmd.arg("--all");
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display())).arg(&dest);
        run(&mut cmd);
        Pushed { url: dest, layers }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an OCI image layout at `layout` tagged with `repo_tag`'s tag; returns the tag and
/// the layer digests of each image. Several images make an image index.
pub fn write_layout(layout: &Path, repo_tag: &str, images: &[ImageSpec]) -> (String, Vec<Vec<String>>) {
    let tag = repo_tag.rsplit_once(':').map_or("latest", |(_, t)| t).to_string();
    let _ = std::fs::remove_dir_all(layout);
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let work = layout.with_extension("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let add_blob = |file: &Path| -> (String, u64) {
        let hex = sha256_file(file);
        let size = std::fs::metadata(file).unwrap().len();
        std::fs::rename(file, blobs.join(&hex)).unwrap();
        (format!("sha256:{hex}"), size)
    };
    let add_json = |name: &str, json: &str| -> (String, u64) {
        let f = work.join(name);
        std::fs::write(&f, json).unwrap();
        add_blob(&f)
    };
    let mut manifests = Vec::new();
    let mut all_layers = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut digests = Vec::new();
        for (j, layer) in image.layers.iter().enumerate() {
            let root = work.join(format!("root-{i}-{j}"));
            std::fs::create_dir_all(&root).unwrap();
            let mut paths = Vec::new();
            for (in_image, source) in &layer.files {
                let dest = root.join(in_image);
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                match source {
                    Some(s) => {
                        std::fs::copy(s, &dest).unwrap();
                    }
                    None => std::fs::write(&dest, b"").unwrap(),
                }
                paths.push(in_image.clone());
            }
            let tar = work.join(format!("layer-{i}-{j}.tar"));
            run(Command::new("tar")
                .args(["--owner=0", "--group=0", "--numeric-owner", "--sort=name", "-C"])
                .arg(&root)
                .arg("-cf")
                .arg(&tar)
                .args(&paths));
            diff_ids.push(format!("\"sha256:{}\"", sha256_file(&tar)));
            let (file, media_type) = match layer.compression {
                LayerCompression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
                LayerCompression::Gzip => {
                    run(Command::new("gzip").args(["-n", "-1", "-f"]).arg(&tar));
                    (tar.with_extension("tar.gz"), "application/vnd.oci.image.layer.v1.tar+gzip")
                }
                LayerCompression::Zstd => {
                    run(Command::new("zstd").args(["-q", "-3", "--rm", "-f"]).arg(&tar));
                    (tar.with_extension("tar.zst"), "application/vnd.oci.image.layer.v1.tar+zstd")
                }
            };
            let (digest, size) = add_blob(&file);
            layer_descs.push(format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}"#));
            digests.push(digest);
        }
        let labels: Vec<String> = image.labels.iter().map(|(k, v)| format!("\"{k}\":\"{v}\"")).collect();
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","config":{{"Labels":{{{labels}}}}},"rootfs":{{"type":"layers","diff_ids":[{diff}]}}}}"#,
            arch = image.architecture,
            labels = labels.join(","),
            diff = diff_ids.join(",")
        );
        let (config_digest, config_size) = add_json(&format!("config-{i}.json"), &config);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{}]}}"#,
            layer_descs.join(",")
        );
        let (digest, size) = add_json(&format!("manifest-{i}.json"), &manifest);
        manifests.push((digest, size, image.architecture.clone()));
        all_layers.push(digests);
    }
    let ref_name = format!(r#""annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}"#);
    let top = if manifests.len() == 1 {
        let (d, s, _) = &manifests[0];
        format!(r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":{s},{ref_name}}}"#)
    } else {
        let entries: Vec<String> = manifests
            .iter()
            .map(|(d, s, arch)| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":{s},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#
                )
            })
            .collect();
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
            entries.join(",")
        );
        let (d, s) = add_json("index.json", &index);
        format!(r#"{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{d}","size":{s},{ref_name}}}"#)
    };
    std::fs::write(
        layout.join("index.json"),
        format!(r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{top}]}}"#),
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&work);
    (tag, all_layers)
}

/// Packs an OCI layout into an OCI archive (a tar of the layout), as `oci-archive:` names it.
pub fn pack_oci_archive(layout: &Path, archive: &Path) {
    run(Command::new("tar").arg("-C").arg(layout).arg("-cf").arg(archive).arg("."));
}
