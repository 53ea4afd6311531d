//! The control plane's fault matrix, whole-system: the real populator and movers on the
//! mini-cluster while a node's mover is killed or stopped mid-import, the populator is
//! killed mid-import and mid-handover, and the API server answers with conflicts and
//! server errors and drops watch connections.
//!
//! Every run must end with the PVC Bound holding exactly the image (qemu-img compare), or
//! clearly failed (the Failed phase and an ImportFailed event), never complete-looking and
//! wrong; with no prime PVC or holder pod left; and with no more downloads (the image
//! server counts GETs; it has no ranges, so a download that starts over is a new GET) than
//! the fault explains.

use std::time::Duration;

use cdi_e2e::api::faults::{Matcher, When};
use cdi_e2e::system::NAMESPACE;
use http::Method;
use nix::sys::signal::Signal;

use super::*;

/// The PVC request of every target here (see `Env::pvc`).
const REQUEST: u64 = 64 << 20;

/// Waits until the PVC's progress annotation shows at least `percent`.
async fn wait_progress_at_least(env: &Env, name: &str, percent: f64) {
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    let reached = await_condition(api, name, move |p: Option<&PersistentVolumeClaim>| {
        p.and_then(|p| p.metadata.annotations.as_ref()?.get(key::POPULATOR_PROGRESS).cloned())
            .and_then(|v| v.trim_end_matches('%').parse::<f64>().ok())
            .is_some_and(|v| v >= percent)
    });
    within(&format!("the import of {name} to pass {percent}%"), reached).await.unwrap();
}

/// The node the (only) holder pod runs on.
async fn holder_node(env: &Env) -> String {
    let pods: Api<Pod> = Api::default_namespaced(env.client());
    let holders = ListParams::default().labels("app.kubernetes.io/name=cdi-populator-holder");
    let list = pods.list(&holders).await.unwrap().items;
    assert_eq!(list.len(), 1, "one holder pod while one import runs: {list:?}");
    list[0].spec.as_ref().and_then(|s| s.node_name.clone()).expect("a running holder has a node")
}

/// Restarts of the mover container on `node`, as its pod status reports them.
async fn mover_restarts(env: &Env, node: &str) -> i32 {
    let pods: Api<Pod> = Api::namespaced(env.client(), NAMESPACE);
    let name = env.system.as_ref().unwrap().mover_pod(node).expect("a mover pod on the node");
    let pod = pods.get(&name).await.unwrap();
    pod.status.and_then(|s| s.container_statuses).and_then(|c| c.first().map(|c| c.restart_count)).unwrap_or(0)
}

/// Signals the mover on `node` (its container's process), as a crash or the runtime would.
async fn signal_mover(env: &mut Env, node: &str, signal: Signal) {
    let pod = env.system().mover_pod(node).expect("a mover pod on the node");
    env.system().cluster.signal_container(NAMESPACE, &pod, "mover", signal).await.expect("the mover runs");
}

/// Waits until the PVC is Bound; a terminal failure on the way fails the test at once,
/// with what the PVC says.
async fn wait_bound_not_failed(env: &Env, name: &str) -> PersistentVolumeClaim {
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    let settled = await_condition(api.clone(), name, |p: Option<&PersistentVolumeClaim>| {
        let failed =
            p.and_then(|p| p.metadata.annotations.as_ref()?.get(key::POD_PHASE).cloned()).as_deref() == Some("Failed");
        failed || p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Bound")
    });
    if tokio::time::timeout(IMPORT_WAIT, settled).await.is_ok() {
        let pvc = api.get(name).await.unwrap();
        if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
            return pvc;
        }
    }
    let pvc = api.get(name).await.unwrap();
    panic!(
        "PVC {name} failed or not bound within {IMPORT_WAIT:?}: {:?}\nevents: {:?}\npopulator logs:\n{}{}",
        pvc.metadata.annotations,
        env.events(name).await,
        env.system.as_ref().unwrap().populator_log("cdi-populator-1"),
        env.system.as_ref().unwrap().populator_log("cdi-populator-2"),
    );
}

/// Bound and holding the image: `disk.img` (CDI-sized) for Filesystem, the device's first
/// bytes for Block.
async fn assert_holds_image(env: &Env, name: &str, mode: Mode) {
    let pvc = wait_bound_not_failed(env, name).await;
    let backing = env.backing(&pvc).await;
    match mode {
        Mode::Filesystem => {
            let disk = backing.join("disk.img");
            qemu_same(&env.raw, &disk, None);
            assert_cdi_sized(&disk, REQUEST);
        }
        Mode::Block => {
            let size = std::fs::metadata(&env.raw).unwrap().len();
            qemu_same(&env.raw, &backing, Some(size));
        }
    }
    let ann = pvc.metadata.annotations.unwrap_or_default();
    assert_eq!(ann.get(key::POD_PHASE).map(String::as_str), Some("Succeeded"), "{ann:?}");
    assert!(ann.contains_key(key::POPULATOR_PVC_PRIME), "the pvcPrime annotation is missing: {ann:?}");
    assert_eq!(ann.get(key::POPULATOR_PROGRESS).map(String::as_str), Some("100.0%"), "{ann:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mover_killed_mid_import_comes_back_and_the_import_starts_over_into_a_cdi_sized_volume() {
    let mut env = Env::start(32, &["--retry-base", "1"]).await;
    // About 12 s at this rate: the kill lands mid-download.
    env.server.knobs.throttle.store(768 << 10, Ordering::SeqCst);
    env.source("img", &env.server.url("disk.qcow2")).await;
    env.pvc("data", "local-immediate", Mode::Filesystem, "img").await;
    // Some of disk.img written: what the killed task leaves must not shrink the new one.
    wait_progress_at_least(&env, "data", 30.0).await;
    let node = holder_node(&env).await;
    signal_mover(&mut env, &node, Signal::SIGKILL).await;
    env.server.knobs.throttle.store(0, Ordering::SeqCst);

    assert_holds_image(&env, "data", Mode::Filesystem).await;
    assert!(mover_restarts(&env, &node).await >= 1, "the kubelet did not restart the killed mover");
    let events = env.events("data").await;
    assert!(
        !events.iter().any(|e| e.starts_with("ImportFailed")),
        "a crash of the mover failed the import: {events:?}"
    );
    env.wait_no_leftovers().await;
    // The killed mover's download is lost with it; the task starts over once, on the new one.
    assert_eq!(env.server.knobs.gets(), 2, "one download per mover lifetime");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mover_stopped_mid_import_is_retried_not_failed() {
    let mut env = Env::start(32, &["--retry-base", "1"]).await;
    env.server.knobs.throttle.store(768 << 10, Ordering::SeqCst);
    env.source("img", &env.server.url("disk.qcow2")).await;
    env.pvc("data", "local-immediate", Mode::Block, "img").await;
    env.wait_progress("data").await;
    let node = holder_node(&env).await;
    // What a rolling update of the DaemonSet or a node drain does: SIGTERM, then the mover
    // cancels its tasks and exits.
    signal_mover(&mut env, &node, Signal::SIGTERM).await;
    env.server.knobs.throttle.store(0, Ordering::SeqCst);

    assert_holds_image(&env, "data", Mode::Block).await;
    assert!(mover_restarts(&env, &node).await >= 1, "the kubelet did not restart the stopped mover");
    let pvc: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    let ann = pvc.get("data").await.unwrap().metadata.annotations.unwrap_or_default();
    assert_eq!(ann.get(key::POD_RESTARTS).map(String::as_str), Some("1"), "retried once: {ann:?}");
    env.wait_no_leftovers().await;
    assert_eq!(env.server.knobs.gets(), 2, "one download per attempt");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_populator_killed_mid_import_and_mid_handover_finishes_without_a_second_download() {
    let mut env = Env::start(16, &[]).await;
    // About 23 s: longer than the dead leader's lease (15 s), so the new populator finds the
    // download still running.
    env.server.knobs.throttle.store(192 << 10, Ordering::SeqCst);
    env.source("img", &env.server.url("disk.qcow2")).await;
    env.pvc("data", "local-immediate", Mode::Filesystem, "img").await;
    env.wait_progress("data").await;
    env.system().kill_populator("cdi-populator-1").await.unwrap();
    env.system().start_populator("cdi-populator-2").await.unwrap();

    // Hold the handover at the PV's rebind (it fails until cleared), so the next kill lands
    // between the holder's deletion and the prime's.
    let faults = env.system().cluster.faults().clone();
    faults.fail_every(Matcher::any().method(Method::PATCH).resource("persistentvolumes"), 1, 500, When::Before);
    let held = async {
        while faults.injected() == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    within("the new populator to reach the PV's rebind", held).await;
    let pods: Api<Pod> = Api::default_namespaced(env.client());
    let holders = ListParams::default().labels("app.kubernetes.io/name=cdi-populator-holder");
    assert!(pods.list(&holders).await.unwrap().items.is_empty(), "the holder goes before the rebind");
    // A container restart: the same pod, so the same identity, which holds the lease.
    env.system().kill_populator("cdi-populator-2").await.unwrap();
    faults.clear();
    env.system().start_populator("cdi-populator-2").await.unwrap();

    assert_holds_image(&env, "data", Mode::Filesystem).await;
    env.wait_no_leftovers().await;
    assert_eq!(env.server.knobs.gets(), 1, "each new populator re-attached to the one download");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conflict_on_the_lease_does_not_cost_the_leader_its_leadership() {
    use k8s_openapi::api::coordination::v1::Lease;
    let mut env = Env::start(8, &[]).await;
    let faults = env.system().cluster.faults().clone();
    faults.fail_next(Matcher::any().method(Method::PUT).resource("leases"), 1, 409, When::Before);
    let conflicted = async {
        while faults.injected() == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    within("a renewal of the lease to meet the conflict", conflicted).await;
    let leases: Api<Lease> = Api::namespaced(env.client(), NAMESPACE);
    let renew_time = |l: &Lease| l.spec.as_ref().and_then(|s| s.renew_time.clone());
    let before = renew_time(&leases.get("cdi-populator").await.unwrap());
    // Renewals come every 3 s: two periods are plenty.
    let renewed = await_condition(leases.clone(), "cdi-populator", move |l: Option<&Lease>| {
        l.is_some_and(|l| renew_time(l) != before)
    });
    if tokio::time::timeout(Duration::from_secs(7), renewed).await.is_err() {
        panic!(
            "the leader stopped renewing its lease after one conflict:\n{}",
            env.system.as_ref().unwrap().populator_log("cdi-populator-1")
        );
    }
    let lease = leases.get("cdi-populator").await.unwrap();
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), env.system().populator_pod("cdi-populator-1"));
    // And it still acts as the leader.
    env.source("img", &env.server.url("disk.qcow2")).await;
    env.pvc("data", "local-immediate", Mode::Filesystem, "img").await;
    assert_holds_image(&env, "data", Mode::Filesystem).await;
    env.stop().await;
}

/// Breaks every watch connection of the system every `every` until dropped.
fn drop_watches_repeatedly(env: &mut Env, every: Duration) -> tokio::task::JoinHandle<()> {
    let faults = env.system().cluster.faults().clone();
    tokio::spawn(async move {
        loop {
            // Generating faults, not waiting for anything.
            tokio::time::sleep(every).await;
            faults.drop_watches();
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_and_dropped_watches_during_a_populate_end_with_the_image_bound() {
    let mut env = Env::start(16, &[]).await;
    env.server.knobs.throttle.store(4 << 20, Ordering::SeqCst);
    let faults = env.system().cluster.faults().clone();
    // Every write of the populator to a claim conflicts at first (status, finalizer,
    // annotations, progress), then one in three.
    faults.fail_next(Matcher::any().method(Method::PATCH).resource("persistentvolumeclaims"), 6, 409, When::Before);
    faults.fail_every(Matcher::any().method(Method::PATCH).resource("persistentvolumeclaims"), 3, 409, When::Before);
    faults.fail_every(Matcher::any().method(Method::PUT), 2, 409, When::Before);
    let dropper = drop_watches_repeatedly(&mut env, Duration::from_millis(700));
    env.source("img", &env.server.url("disk.qcow2")).await;
    env.pvc("fs", "local-immediate", Mode::Filesystem, "img").await;
    env.pvc("blk", "local-immediate", Mode::Block, "img").await;

    assert_holds_image(&env, "fs", Mode::Filesystem).await;
    assert_holds_image(&env, "blk", Mode::Block).await;
    dropper.abort();
    assert!(faults.injected() >= 6, "only {} conflicts were injected", faults.injected());
    assert!(faults.watches_dropped() > 0, "no watch was dropped: the test proves nothing");
    faults.clear();
    env.wait_no_leftovers().await;
    assert_eq!(env.server.knobs.gets(), 2, "one download per PVC");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_during_a_populate_end_with_the_image_bound() {
    let mut env = Env::start(16, &[]).await;
    env.server.knobs.throttle.store(4 << 20, Ordering::SeqCst);
    let faults = env.system().cluster.faults().clone();
    // One request in ten fails; one write in ten happens but is answered with a 500. At
    // random: a fixed "every tenth" falls into step with a reconcile that makes the same
    // requests each time, and fails the same one forever. (Each failed reconcile waits the
    // populator's 10 s error requeue, so a higher rate only makes the run longer.)
    faults.fail_randomly(Matcher::any(), 10, 500, When::Before, 1);
    for (seed, method) in [Method::POST, Method::PATCH, Method::PUT, Method::DELETE].into_iter().enumerate() {
        faults.fail_randomly(Matcher::any().method(method), 10, 500, When::After, 2 + seed as u64);
    }
    env.source("img", &env.server.url("disk.qcow2")).await;
    env.pvc("fs", "local-immediate", Mode::Filesystem, "img").await;
    env.pvc("blk", "local-immediate", Mode::Block, "img").await;

    assert_holds_image(&env, "fs", Mode::Filesystem).await;
    assert_holds_image(&env, "blk", Mode::Block).await;
    assert!(faults.injected() > 0, "no error was injected: the test proves nothing");
    faults.clear();
    env.wait_no_leftovers().await;
    assert_eq!(env.server.knobs.gets(), 2, "one download per PVC");
    env.stop().await;
}
