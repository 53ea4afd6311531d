//! A real S3 server for tests: moto's standalone server (PyPI `moto[server]`, installed on
//! demand) on a loopback port, objects put with boto3. Std only: the e2e suite includes
//! this file by path, next to `peers.rs`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::peers::{ensure_python, free_port, wait_listening};

/// IAM actions moto lets through unauthenticated before it checks every request: the user,
/// its policy and its access key are made with them (see [`Moto::start`]).
const SETUP_ACTIONS: u32 = 3;

/// Installs moto's server (and boto3, which it brings) if missing, serialised across test
/// processes.
pub fn ensure_moto() {
    ensure_python("moto.server, boto3, flask", "moto[server]");
}

/// A moto S3 server on 127.0.0.1. With keys it checks every request's SigV4 signature and
/// IAM permissions, as AWS does; anonymous, it accepts any request.
pub struct Moto {
    pub port: u16,
    /// The access key id and secret key of an IAM user allowed everything (with auth).
    pub keys: Option<(String, String)>,
    child: Child,
}

impl Moto {
    /// A server that checks signatures; [`Moto::keys`] holds a valid key pair.
    pub fn start(dir: &Path) -> Moto {
        let mut m = Moto::spawn(dir, true);
        let out = m.python(
            "import boto3, json\n\
             iam = boto3.client('iam', endpoint_url=EP, region_name='us-east-1', aws_access_key_id='setup', aws_secret_access_key='setup')\n\
             iam.create_user(UserName='mover')\n\
             iam.put_user_policy(UserName='mover', PolicyName='all', PolicyDocument=json.dumps({'Version': '2012-10-17', \
             'Statement': [{'Effect': 'Allow', 'Action': '*', 'Resource': '*'}]}))\n\
             k = iam.create_access_key(UserName='mover')['AccessKey']\n\
             print(k['AccessKeyId']); print(k['SecretAccessKey'])\n",
        );
        let mut lines = out.lines();
        let (id, secret) = (lines.next().unwrap().to_string(), lines.next().unwrap().to_string());
        m.keys = Some((id, secret));
        m
    }

    /// A server that accepts anonymous (and any) requests.
    pub fn start_anonymous(dir: &Path) -> Moto {
        Moto::spawn(dir, false)
    }

    fn spawn(dir: &Path, auth: bool) -> Moto {
        ensure_moto();
        for attempt in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.join(format!("moto-{port}.log"))).unwrap();
            let mut cmd = Command::new("moto_server");
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            if auth {
                cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", SETUP_ACTIONS.to_string());
            }
            let child = cmd.spawn().expect("start moto_server");
            let mut m = Moto { port, keys: None, child };
            if m.wait_ready() {
                return m;
            }
            eprintln!("moto attempt {attempt} on port {port} failed to come up; retrying");
        }
        panic!("moto_server did not start");
    }

    /// Waits until moto serves; a moto that does not is stopped.
    fn wait_ready(&mut self) -> bool {
        if wait_listening(&mut self.child, self.port, Duration::from_secs(30)) {
            return true;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The path-style URL of an object.
    pub fn url(&self, bucket: &str, key: &str) -> String {
        format!("{}/{bucket}/{key}", self.endpoint())
    }

    /// Creates `bucket` if needed and uploads `file` as `key`.
    pub fn put_object(&self, bucket: &str, key: &str, file: &Path) {
        self.python(&format!(
            "s3 = client('s3')\n\
             try:\n    s3.create_bucket(Bucket={bucket:?})\n\
             except s3.exceptions.BucketAlreadyOwnedByYou:\n    pass\n\
             s3.upload_file({file:?}, {bucket:?}, {key:?})\n",
            file = file.display().to_string(),
        ));
    }

    /// Runs a Python snippet with `EP` (the endpoint) and `client(service)` (a boto3 client
    /// with this server's keys) defined; returns its stdout.
    fn python(&self, body: &str) -> String {
        let (id, secret) = self.keys.clone().unwrap_or_else(|| ("anonymous".into(), "anonymous".into()));
        let script = format!(
            "import boto3\nEP = {ep:?}\n\
             def client(service):\n    return boto3.client(service, endpoint_url=EP, region_name='us-east-1', \
             aws_access_key_id={id:?}, aws_secret_access_key={secret:?})\n{body}",
            ep = self.endpoint(),
        );
        let out = Command::new("python3").arg("-c").arg(&script).output().expect("run python3");
        assert!(out.status.success(), "boto3 against moto failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
