//! `cdi-mover serve`: the `cdi.mover.v1` gRPC service of the node agent.
//!
//! ```text
//!  client ──mTLS──▶ server.rs ──▶ MoverService ──▶ convert.rs (validate, resolve targets)
//!                   (reloading     │                 │
//!                    certificates) │                 ▼
//!                                  │               tasks.rs: Registry ──spawn_blocking──▶ crate::import
//!                                  │                 (queue, re-attach, retention)
//!                                  ├──▶ volume streaming (ReadVolume / WriteVolume)
//!                                  └──▶ upload.rs: Upload bytes into an upload task's import
//! ```
//!
//! `tonic::Status` lives only in this module (and, as what a peer answers, in the volume
//! source `source/peer.rs`, a client of another mover): the data path's errors become task
//! failures with reason codes; request problems become INVALID_ARGUMENT before anything runs.

pub mod claims;
pub mod convert;
pub mod metrics;
pub mod resolve;
pub mod server;
pub mod tasklog;
pub mod tasks;
pub mod tls;
pub mod upload;
pub mod volume;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use cdi_proto::v1 as pb;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use claims::{Access, Claim};
use tasks::{Registry, StartError, State};

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::PopulateEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::VolumeChunk, Status>> + Send>>;

/// The service's state: where pod volumes are, and the tasks.
#[derive(Debug, Clone)]
pub struct MoverService {
    pub kubelet_root: PathBuf,
    pub node_name: String,
    pub tasks: Arc<Registry>,
    /// How a volume source reaches its mover: this mover's own identity.
    pub peers: crate::source::PeerClient,
}

impl MoverService {
    /// Claims a volume stream's target; ABORTED while a task or another stream has it.
    fn claim(&self, target: &convert::ResolvedTarget, access: Access, holder: &str) -> Result<Claim, Status> {
        self.tasks
            .claims()
            .claim(&target.path, &target.display, access, holder.to_string())
            .map_err(|e| Status::aborted(e.to_string()))
    }
}

#[tonic::async_trait]
impl pb::mover_server::Mover for MoverService {
    type PopulateStream = EventStream;
    type ReadVolumeStream = ChunkStream;

    async fn populate(&self, request: Request<pb::PopulateRequest>) -> Result<Response<EventStream>, Status> {
        let spec = convert::populate(request.get_ref(), &self.kubelet_root, &self.peers)?;
        let (task, reattached) = self.tasks.start_or_attach(spec).map_err(|e| match e {
            StartError::Conflict { .. } => Status::already_exists(e.to_string()),
            StartError::Draining => Status::unavailable(e.to_string()),
            StartError::TargetBusy(_) => Status::aborted(e.to_string()),
        })?;
        let (tx, rx) = mpsc::channel(16);
        let mut follow = task.subscribe();
        let id = task.id.clone();
        tokio::spawn(async move {
            let event = |e: pb::populate_event::Event| Ok(pb::PopulateEvent { task_id: id.clone(), event: Some(e) });
            let first = convert::state(follow.borrow().state) as i32;
            if tx
                .send(event(pb::populate_event::Event::Accepted(pb::Accepted { reattached, state: first })))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let snap = follow.borrow_and_update().clone();
                let last = match snap.state {
                    State::Succeeded => {
                        let done = snap.result.as_ref().map(convert::completed).unwrap_or_default();
                        Some(pb::populate_event::Event::Completed(done))
                    }
                    State::Failed | State::Cancelled => {
                        Some(pb::populate_event::Event::Failed(convert::failed(&snap).unwrap_or_default()))
                    }
                    State::Queued | State::Running => None,
                };
                let msg = match last {
                    Some(final_event) => {
                        // The final numbers first, then the outcome.
                        let _ = tx.send(event(pb::populate_event::Event::Progress(convert::progress(&snap)))).await;
                        let _ = tx.send(event(final_event)).await;
                        return;
                    }
                    None => event(pb::populate_event::Event::Progress(convert::progress(&snap))),
                };
                // A client that went away stops being followed; the task goes on.
                if tx.send(msg).await.is_err() || follow.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_task(&self, request: Request<pb::GetTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let id = convert::task_id(&request.get_ref().task_id)?;
        let task = self.tasks.get(&id).ok_or_else(|| Status::not_found(format!("no task {id}")))?;
        Ok(Response::new(convert::task(&task)))
    }

    async fn list_tasks(&self, _: Request<pb::ListTasksRequest>) -> Result<Response<pb::ListTasksResponse>, Status> {
        let tasks = self.tasks.list().iter().map(|t| convert::task(t)).collect();
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn cancel_task(&self, request: Request<pb::CancelTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let id = convert::task_id(&request.get_ref().task_id)?;
        let task = self.tasks.cancel(&id).ok_or_else(|| Status::not_found(format!("no task {id}")))?;
        // Report the state once the task has actually stopped (it does within a second).
        let mut follow = task.subscribe();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), follow.wait_for(|s| s.state.is_final())).await;
        Ok(Response::new(convert::task(&task)))
    }

    async fn read_volume(&self, request: Request<pb::ReadVolumeRequest>) -> Result<Response<ChunkStream>, Status> {
        let req = request.into_inner();
        let target = convert::target("target", req.target.as_ref(), &self.kubelet_root)?;
        let format =
            pb::VolumeFormat::try_from(req.format).map_err(|_| Status::invalid_argument("format: unknown value"))?;
        let claim = self.claim(&target, Access::Read, "a ReadVolume stream")?;
        let rx = volume::serve_read(target.path, format, claim)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn write_volume(
        &self,
        request: Request<Streaming<pb::WriteVolumeRequest>>,
    ) -> Result<Response<pb::WriteVolumeResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream is empty: the first message must name the target"))?;
        let Some(pb::write_volume_request::Request::Target(target)) = first.request else {
            return Err(Status::invalid_argument("target: the first message must name the target"));
        };
        let resolved = convert::target("target.target", target.target.as_ref(), &self.kubelet_root)?;
        let options = convert::write_target_options(&target)?;
        let claim = self.claim(&resolved, Access::Write, "a WriteVolume stream")?;
        let response = volume::serve_write(resolved.path, options, stream, claim).await?;
        Ok(Response::new(response))
    }

    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        upload::serve(&self.tasks, request.into_inner()).await.map(Response::new)
    }

    async fn capabilities(
        &self,
        _: Request<pb::CapabilitiesRequest>,
    ) -> Result<Response<pb::CapabilitiesResponse>, Status> {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Ok(Response::new(pb::CapabilitiesResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api: pb::API.to_string(),
            formats: strings(&["raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "gz", "xz", "zst", "tar"]),
            sources: strings(&[
                "http",
                "https",
                "file",
                "docker",
                "oci-archive",
                crate::source::blank::FORMAT,
                "s3",
                "gcs",
                crate::source::upload::NAME,
                crate::source::peer::NAME,
            ]),
            content_types: strings(&["kubevirt", "archive"]),
            node_name: self.node_name.clone(),
        }))
    }
}
