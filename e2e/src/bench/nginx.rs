//! nginx as the benchmarks' independent peers: a plain file server for the HTTP import, and
//! CDI's upload path stood in by two TLS servers (a reverse proxy as cdi-uploadproxy, and a
//! server writing the body to a scratch file as cdi-uploadserver does for anything qemu-img
//! must convert).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// One single-process nginx (`master_process off`) with its own prefix folder.
struct Instance {
    child: Child,
}

impl Instance {
    /// Starts nginx with `http` as its `http {}` block, and waits until `port` accepts.
    fn start(root: &Path, name: &str, http: &str, port: u16) -> anyhow::Result<Instance> {
        super::ensure_package("nginx", "nginx-light")?;
        std::fs::create_dir_all(root.join(format!("{name}-temp")))?;
        let temp = root.join(format!("{name}-temp")).display().to_string();
        let conf = root.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "daemon off; master_process off; worker_processes 1; pid {root}/{name}.pid; error_log {root}/{name}.log;\n\
                 events {{}}\nhttp {{ access_log off; client_body_temp_path {temp}; proxy_temp_path {temp}; \
                 fastcgi_temp_path {temp}; uwsgi_temp_path {temp}; scgi_temp_path {temp};\n{http}\n}}\n",
                root = root.display()
            ),
        )?;
        let child = Command::new("nginx").arg("-c").arg(&conf).arg("-p").arg(root).spawn()?;
        let mut instance = Instance { child };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(instance);
            }
            if let Some(status) = instance.child.try_wait()? {
                bail!("nginx ({name}) exited with {status}; see {}/{name}.log", root.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx ({name}) did not listen on 127.0.0.1:{port}")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Serves one file over plain HTTP on a free loopback port.
pub struct FileServer {
    pub port: u16,
    _nginx: Instance,
}

impl FileServer {
    pub fn start(dir: &Path, file: &Path) -> anyhow::Result<FileServer> {
        let root = dir.join("nginx");
        std::fs::create_dir_all(root.join("www"))?;
        let link = root.join("www").join(file.file_name().context("the served file has no name")?);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(file.canonicalize()?, &link)?;
        let port = free_port()?;
        let http = format!("sendfile on; server {{ listen 127.0.0.1:{port}; root {}/www; }}", root.display());
        Ok(FileServer { port, _nginx: Instance::start(&root, "files", &http, port)? })
    }
}

/// CDI's upload path up to the scratch file: HTTPS to a reverse proxy that streams the body
/// (unbuffered) over TLS to a second server, which writes it to a file (WebDAV PUT).
pub struct ScratchUpload {
    /// Where a client PUTs: `https://127.0.0.1:port/`.
    pub url: String,
    /// Where the uploaded files land.
    pub scratch: PathBuf,
    _proxy: Instance,
    _server: Instance,
}

impl ScratchUpload {
    pub fn start(dir: &Path) -> anyhow::Result<ScratchUpload> {
        let root = dir.join("nginx-upload");
        let scratch = root.join("scratch");
        std::fs::create_dir_all(&scratch)?;
        let (cert, key) = (root.join("tls.crt"), root.join("tls.key"));
        let key_pair = rcgen::KeyPair::generate()?;
        let issued = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?.self_signed(&key_pair)?;
        std::fs::write(&cert, issued.pem())?;
        std::fs::write(&key, key_pair.serialize_pem())?;
        let tls = format!("ssl_certificate {}; ssl_certificate_key {};", cert.display(), key.display());
        let (proxy_port, server_port) = (free_port()?, free_port()?);
        // The body goes to a temporary file beside the scratch folder, then is renamed into it:
        // one write of every byte, as the upload server's.
        let server = format!(
            "client_max_body_size 0; server {{ listen 127.0.0.1:{server_port} ssl; {tls} root {}; \
             location / {{ dav_methods PUT; }} }}",
            scratch.display()
        );
        let proxy = format!(
            "client_max_body_size 0; proxy_request_buffering off; proxy_http_version 1.1; \
             server {{ listen 127.0.0.1:{proxy_port} ssl; {tls} \
             location / {{ proxy_pass https://127.0.0.1:{server_port}; }} }}"
        );
        let _server = Instance::start(&root, "upload-server", &server, server_port)?;
        let _proxy = Instance::start(&root, "upload-proxy", &proxy, proxy_port)?;
        Ok(ScratchUpload { url: format!("https://127.0.0.1:{proxy_port}/"), scratch, _proxy, _server })
    }
}
