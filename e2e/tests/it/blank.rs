//! The blank source end to end: cdi-rs installed on the mini-cluster, PVCs whose
//! `dataSourceRef` names a VolumeImportSource with `source.blank`, and what lands in the
//! volumes read back from the host (qemu-img saying what the disk is).

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use cdi_e2e::system::{System, SystemConfig};
use cdi_e2e::workload::{Mode, annotation, target_pvc, until_bound, volume_data};
use cdi_populator::api::names::annotations as key;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use crate::common::within;

pub(crate) const MIB: u64 = 1 << 20;

/// Bytes of `path` read to its end, and whether every one of them was zero.
pub(crate) fn read_all(path: &Path) -> (u64, bool) {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let (mut len, mut zeros) = (0u64, true);
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return (len, zeros);
        }
        zeros &= buf[..n].iter().all(|&b| b == 0);
        len += n as u64;
    }
}

/// CDI's usable space of a filesystem volume requested at `request` bytes: the free space
/// it had before the import (now: free + what disk.img holds) capped by the request, less
/// the default 6 % overhead, rounded down to a MiB.
pub(crate) fn cdi_usable(disk: &Path, request: u64) -> u64 {
    let stat = nix::sys::statvfs::statvfs(disk.parent().unwrap()).unwrap();
    let free =
        stat.blocks_available() as u64 * stat.fragment_size() as u64 + std::fs::metadata(disk).unwrap().blocks() * 512;
    ((request.min(free) as f64 / 1.06).ceil() as u64) / MIB * MIB
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blank_source_gives_an_empty_sparse_disk_img_and_a_zeroed_block_volume() {
    let dir = tempfile::Builder::new().prefix("cdi-blank-").tempdir().unwrap();
    let config = SystemConfig::new(dir.path().join("cluster")).expect("binaries built");
    let system = within("cdi-rs to start on the mini-cluster", System::start(config)).await.expect("system");
    let client = system.client.clone();

    let sources: Api<cdi_populator::api::VolumeImportSource> = Api::default_namespaced(client.clone());
    let blank = serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "VolumeImportSource",
        "metadata": {"name": "blank"},
        "spec": {"source": {"blank": {}}},
    }))
    .unwrap();
    sources.create(&PostParams::default(), &blank).await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(client.clone());
    for (name, mode) in [("fs", Mode::Filesystem), ("blk", Mode::Block)] {
        pvcs.create(&PostParams::default(), &target_pvc(name, "local-immediate", mode, "64Mi", "blank")).await.unwrap();
    }
    let bound = until_bound(&client, "default", &["fs", "blk"], |_| {});
    if let Err(e) = within("both blank PVCs to be populated", bound).await {
        panic!("{e:#}\npopulator log:\n{}", system.populator_log("cdi-populator-1"));
    }

    let fs = pvcs.get("fs").await.unwrap();
    assert_eq!(annotation(&fs, key::POPULATOR_PROGRESS), Some("100.0%"));
    assert_eq!(annotation(&fs, key::POD_PHASE), Some("Succeeded"));
    let disk = volume_data(&client, &fs).await.unwrap();
    let meta = std::fs::metadata(&disk).unwrap();
    let size = meta.len();
    let usable = cdi_usable(&disk, 64 * MIB);
    assert_eq!(size % MIB, 0, "disk.img of {size} bytes is not a whole number of MiB");
    // The file's own metadata blocks blur the free space by a little: one MiB of tolerance.
    assert!(size <= usable && size + MIB >= usable, "disk.img of {size} bytes; CDI would make {usable}");
    // ext4 on a 64 MiB device keeps its journal and reserved blocks: about 47 MiB is usable.
    assert!(size >= 40 * MIB, "a 64Mi volume gave a disk.img of only {size} bytes");
    assert!(meta.blocks() * 512 <= 256 << 10, "a blank disk.img holds {} allocated bytes", meta.blocks() * 512);
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(read_all(&disk), (size, true), "disk.img does not read as {size} zero bytes");
    let info = std::process::Command::new("qemu-img").args(["info", "--output=json"]).arg(&disk).output().unwrap();
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!((info["format"].as_str(), info["virtual-size"].as_u64()), (Some("raw"), Some(size)));

    let blk = pvcs.get("blk").await.unwrap();
    assert_eq!(annotation(&blk, key::POPULATOR_PROGRESS), Some("100.0%"));
    let device = volume_data(&client, &blk).await.unwrap();
    assert_eq!(read_all(&device), (64 * MIB, true), "the block volume does not read as 64 MiB of zeros");

    let events: Api<Event> = Api::default_namespaced(client.clone());
    let events = events.list(&ListParams::default()).await.unwrap().items;
    for pvc in ["fs", "blk"] {
        let succeeded = events
            .iter()
            .any(|e| e.involved_object.name.as_deref() == Some(pvc) && e.reason.as_deref() == Some("ImportSucceeded"));
        assert!(succeeded, "no ImportSucceeded event about {pvc}");
    }
    system.shutdown().await;
}
