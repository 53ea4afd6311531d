//! `cdi-mover client upload`: feed a local file to an upload task, as the upload proxy does
//! with a user's HTTP body (and for benchmarks of that path without the proxy).

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use cdi_proto::v1 as pb;
use cdi_proto::v1::mover_client::MoverClient;

use super::output::human;

/// What the proxy sends per message, at most.
const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the network.
const QUEUE: usize = 4;

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The upload task (a Populate with source `upload:`).
    #[arg(long)]
    pub task_id: String,
    /// The image (or tar archive, for an archive task) to send.
    pub file: PathBuf,
}

pub async fn upload(client: &mut MoverClient<Channel>, args: &UploadArgs) -> anyhow::Result<i32> {
    use pb::upload_request::Request;
    let started = Instant::now();
    let mut file = std::fs::File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let len = file.metadata().with_context(|| format!("cannot stat {}", args.file.display()))?.len();
    let (tx, rx) = mpsc::channel(QUEUE);
    let start = pb::UploadStart { task_id: args.task_id.clone(), content_length: len };
    tx.try_send(pb::UploadRequest { request: Some(Request::Start(start)) }).expect("an empty queue");
    // A failed read sends no end: the mover then commits nothing.
    let path = args.file.clone();
    let reading = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            sent += n as u64;
            if tx.blocking_send(pb::UploadRequest { request: Some(Request::Data(buf.into())) }).is_err() {
                // The mover stopped listening; its answer says why.
                return Ok(sent);
            }
        }
        let _ = tx.blocking_send(pb::UploadRequest { request: Some(Request::End(pb::UploadEnd { length: sent })) });
        Ok(sent)
    });
    let response = client.upload(ReceiverStream::new(rx)).await;
    let sent = reading.await.context("the local reader crashed")??;
    let completed = match response {
        Ok(r) => r.into_inner().completed.unwrap_or_default(),
        Err(status) => bail!("the upload to task {} failed: {}", args.task_id, status.message()),
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "task_id": args.task_id, "bytes_sent": sent, "seconds": secs,
            "bytes_per_second": if secs > 0.0 { sent as f64 / secs } else { 0.0 },
            "virtual_size": completed.virtual_size, "bytes_written": completed.bytes_written,
            "formats": completed.formats, "target_path": completed.target_path,
        })
    );
    eprintln!("uploaded {} in {secs:.1}s", human(sent));
    Ok(0)
}
