//! API conformance through kube-rs: `Api`, `watcher`, `Controller`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::common::{TestCluster, within};

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
        "data": {"k": "v"},
    }))
    .expect("configmap")
}

fn api_code(e: &kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_answers_with_kubernetes_status_codes_and_reasons() {
    let tc = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(tc.client.clone());
    let mut generated = cm("", &[]);
    generated.metadata.generate_name = Some("gen-".into());
    let created = within("create", api.create(&PostParams::default(), &generated)).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "generateName gives prefix + 5 chars: {name}");
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    let err = api.create(&PostParams::default(), &created).await.unwrap_err();
    assert_eq!(api_code(&err), (409, "AlreadyExists".into()));
    let err = api.get("missing").await.unwrap_err();
    assert_eq!(api_code(&err), (404, "NotFound".into()));
    let dry = PostParams { dry_run: true, ..Default::default() };
    let answered = api.create(&dry, &cm("dry", &[])).await.unwrap();
    assert_eq!(answered.metadata.name.as_deref(), Some("dry"), "a dry run answers what it would store");
    assert_eq!(api_code(&api.get("dry").await.unwrap_err()).0, 404, "and stores nothing");

    // Replace with a stale resourceVersion: 409 Conflict.
    let mut first = created.clone();
    first.data = Some(BTreeMap::from([("k".into(), "1".into())]));
    within("replace", api.replace(&name, &PostParams::default(), &first)).await.unwrap();
    let mut stale = created.clone();
    stale.data = Some(BTreeMap::from([("k".into(), "2".into())]));
    let err = api.replace(&name, &PostParams::default(), &stale).await.unwrap_err();
    assert_eq!(api_code(&err), (409, "Conflict".into()));

    // A JSON patch whose test fails is refused and changes nothing.
    let p: json_patch::Patch = serde_json::from_value(json!([{"op": "test", "path": "/data/k", "value": "nope"},
        {"op": "replace", "path": "/data/k", "value": "3"}]))
    .unwrap();
    let err = api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(p)).await.unwrap_err();
    assert_eq!(api_code(&err).0, 422);
    assert_eq!(api.get(&name).await.unwrap().data.unwrap()["k"], "1");
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn generation_moves_with_spec_changes_only_and_status_has_its_own_endpoint() {
    let tc = TestCluster::start().await;
    let leases: Api<Lease> = Api::default_namespaced(tc.client.clone());
    let l: Lease = serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}})).unwrap();
    let l = leases.create(&PostParams::default(), &l).await.unwrap();
    assert_eq!(l.metadata.generation, Some(1));
    let pp = PatchParams::default();
    let l = leases.patch("l", &pp, &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}))).await.unwrap();
    assert_eq!(l.metadata.generation, Some(1), "metadata changes keep the generation");
    let l = leases.patch("l", &pp, &Patch::Merge(json!({"spec": {"holderIdentity": "b"}}))).await.unwrap();
    assert_eq!(l.metadata.generation, Some(2));

    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(tc.client.clone());
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({"metadata": {"name": "c"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}, "storageClassName": "none"}}))
    .unwrap();
    let claim = pvcs.create(&PostParams::default(), &claim).await.unwrap();
    assert_eq!(claim.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    assert!(claim.metadata.finalizers.unwrap().contains(&"kubernetes.io/pvc-protection".to_string()));
    let c = pvcs.patch("c", &pp, &Patch::Merge(json!({"status": {"phase": "Lost"}}))).await.unwrap();
    assert_eq!(c.status.unwrap().phase.as_deref(), Some("Pending"), "the main resource ignores status");
    let c = pvcs.patch_status("c", &pp, &Patch::Merge(json!({"status": {"phase": "Lost"}}))).await.unwrap();
    assert_eq!(c.status.unwrap().phase.as_deref(), Some("Lost"));
    assert_eq!(c.metadata.generation, Some(1), "status writes keep the generation");
    let err = pvcs.patch("c", &pp, &Patch::Merge(json!({"spec": {"storageClassName": "other"}}))).await.unwrap_err();
    assert_eq!(api_code(&err).0, 422, "a claim's spec is immutable");
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn finalizers_keep_a_deleted_object_until_the_last_one_goes() {
    let tc = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(tc.client.clone());
    let mut o = cm("held", &[]);
    o.metadata.finalizers = Some(vec!["example.com/a".into(), "example.com/b".into()]);
    api.create(&PostParams::default(), &o).await.unwrap();
    let deleted = within("delete", api.delete("held", &DeleteParams::default())).await.unwrap();
    let held = deleted.left().expect("still there while finalizers remain");
    assert!(held.metadata.deletion_timestamp.is_some());
    let err = api
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/a", "example.com/b", "example.com/c"]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err).0, 422, "no new finalizers on an object being deleted");
    let pp = PatchParams::default();
    api.patch("held", &pp, &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/b"]}}))).await.unwrap();
    assert!(api.get("held").await.is_ok());
    api.patch("held", &pp, &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    within(
        "the object to go",
        await_condition(api.clone(), "held", conditions::is_deleted(held.metadata.uid.as_deref().unwrap())),
    )
    .await
    .unwrap();
    tc.shutdown_and_check_leaks().await;
}

fn owned(name: &str, owner: &ConfigMap, block: bool) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
        "name": owner.metadata.name, "uid": owner.metadata.uid, "blockOwnerDeletion": block}]}}),
    )
    .unwrap()
}

#[tokio::test]
async fn owner_references_are_collected_in_background_foreground_and_orphan_mode() {
    let tc = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(tc.client.clone());
    let pp = PostParams::default();

    let parent = api.create(&pp, &cm("parent", &[])).await.unwrap();
    let child = api.create(&pp, &owned("child", &parent, false)).await.unwrap();
    api.delete("parent", &DeleteParams::background()).await.unwrap();
    within(
        "background GC of the child",
        await_condition(api.clone(), "child", conditions::is_deleted(&child.metadata.uid.unwrap())),
    )
    .await
    .unwrap();

    let parent = api.create(&pp, &cm("fg", &[])).await.unwrap();
    let mut blocker = owned("fg-child", &parent, true);
    blocker.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&pp, &blocker).await.unwrap();
    api.delete("fg", &DeleteParams::foreground()).await.unwrap();
    within(
        "the child to be marked deleted",
        await_condition(api.clone(), "fg-child", |o: Option<&ConfigMap>| {
            o.is_some_and(|o| o.metadata.deletion_timestamp.is_some())
        }),
    )
    .await
    .unwrap();
    let p = api.get("fg").await.expect("the owner waits for its blocking dependent");
    assert!(p.metadata.finalizers.unwrap().contains(&"foregroundDeletion".to_string()));
    api.patch("fg-child", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    within(
        "the foreground owner to go",
        await_condition(api.clone(), "fg", conditions::is_deleted(&parent.metadata.uid.unwrap())),
    )
    .await
    .unwrap();

    let parent = api.create(&pp, &cm("orphaner", &[])).await.unwrap();
    api.create(&pp, &owned("orphan", &parent, false)).await.unwrap();
    api.delete("orphaner", &DeleteParams::orphan()).await.unwrap();
    let orphan = api.get("orphan").await.expect("orphaned dependents stay");
    assert!(orphan.metadata.owner_references.unwrap_or_default().is_empty());
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn selectors_and_pagination_filter_lists() {
    let tc = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(tc.client.clone());
    for i in 0..5 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        api.create(&PostParams::default(), &cm(&format!("cm-{i}"), &[("tier", tier)])).await.unwrap();
    }
    let even = api.list(&ListParams::default().labels("tier=even")).await.unwrap();
    assert_eq!(even.items.len(), 3);
    let not_even = api.list(&ListParams::default().labels("tier notin (even)")).await.unwrap();
    assert_eq!(not_even.items.len(), 2);
    let one = api.list(&ListParams::default().fields("metadata.name=cm-3")).await.unwrap();
    assert_eq!(one.items.len(), 1);
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(2);
    loop {
        let page = api.list(&lp).await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.into_iter().map(|c| c.metadata.name.unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(names, (0..5).map(|i| format!("cm-{i}")).collect::<Vec<_>>());
    tc.shutdown_and_check_leaks().await;
}

async fn watcher_sees_everything(streaming: bool) {
    let tc = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(tc.client.clone());
    api.create(&PostParams::default(), &cm("before", &[])).await.unwrap();
    let mut config = watcher::Config::default();
    if streaming {
        config = config.streaming_lists();
    }
    let mut stream = watcher(api.clone(), config).applied_objects().boxed();
    let first = within("the initial object", stream.try_next()).await.unwrap().unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("before"));
    api.create(&PostParams::default(), &cm("after", &[])).await.unwrap();
    let second = within("the created object", stream.try_next()).await.unwrap().unwrap();
    assert_eq!(second.metadata.name.as_deref(), Some("after"));

    // A dropped connection: the watcher re-watches from its last version and misses nothing.
    tc.cluster().drop_watches();
    api.create(&PostParams::default(), &cm("during", &[])).await.unwrap();
    let third = within("the object created across the reconnect", stream.try_next()).await.unwrap().unwrap();
    assert_eq!(third.metadata.name.as_deref(), Some("during"));
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn watcher_follows_changes_and_resumes_after_a_disconnect() {
    watcher_sees_everything(false).await;
}

#[tokio::test]
async fn watcher_with_streaming_lists_gets_initial_events_and_the_end_bookmark() {
    watcher_sees_everything(true).await;
}

#[tokio::test]
async fn a_watch_resumes_from_its_resource_version_and_expired_versions_get_410() {
    let tc = TestCluster::start_with(|c| c.watch_history = 20).await;
    let api: Api<ConfigMap> = Api::default_namespaced(tc.client.clone());
    let a = api.create(&PostParams::default(), &cm("a", &[])).await.unwrap();
    let rv = a.metadata.resource_version.clone().unwrap();
    api.create(&PostParams::default(), &cm("b", &[])).await.unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let mut w = within("watch start", api.watch(&WatchParams::default(), &rv)).await.unwrap().boxed();
    let mut seen = Vec::new();
    for _ in 0..2 {
        match within("replayed events", w.try_next()).await.unwrap().unwrap() {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.metadata.name.unwrap())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED b", "DELETED a"]);

    for i in 0..30 {
        api.create(&PostParams::default(), &cm(&format!("churn-{i}"), &[])).await.unwrap();
    }
    let mut w = within("watch start", api.watch(&WatchParams::default(), &rv)).await.unwrap().boxed();
    match within("the expiry event", w.try_next()).await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    let page = api.list(&ListParams::default().limit(5)).await.unwrap();
    api.create(&PostParams::default(), &cm("after-the-page", &[])).await.unwrap();
    tc.cluster().store().compact();
    let err = api
        .list(&ListParams::default().limit(5).continue_token(page.metadata.continue_.as_deref().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err).0, 410, "a continue token older than the history is Gone");
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn bookmarks_carry_the_current_resource_version() {
    let tc = TestCluster::start_with(|c| c.bookmark_interval = Duration::from_millis(200)).await;
    let api: Api<ConfigMap> = Api::default_namespaced(tc.client.clone());
    let o = api.create(&PostParams::default(), &cm("x", &[])).await.unwrap();
    let rv = o.metadata.resource_version.unwrap();
    let mut w = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    match within("a bookmark", w.try_next()).await.unwrap().unwrap() {
        WatchEvent::Bookmark(b) => {
            assert!(b.metadata.resource_version.parse::<u64>().unwrap() >= rv.parse::<u64>().unwrap())
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn server_side_apply_owns_fields_per_manager_and_conflicts_without_force() {
    let tc = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(tc.client.clone());
    let doc = |v: &str, extra: bool| {
        let mut data = json!({"shared": v});
        if extra {
            data["mine"] = json!("1");
        }
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": data})
    };
    api.patch("ssa", &PatchParams::apply("alpha"), &Patch::Apply(doc("a", true))).await.unwrap();
    let err = api.patch("ssa", &PatchParams::apply("beta"), &Patch::Apply(doc("b", false))).await.unwrap_err();
    assert_eq!(api_code(&err), (409, "Conflict".into()));
    let forced = api.patch("ssa", &PatchParams::apply("beta").force(), &Patch::Apply(doc("b", false))).await.unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["shared"], "b");
    let managers: Vec<String> = forced.metadata.managed_fields.unwrap().into_iter().filter_map(|m| m.manager).collect();
    assert!(managers.contains(&"alpha".into()) && managers.contains(&"beta".into()), "{managers:?}");
    // alpha stops applying "mine": the field it alone owned goes.
    let after = api
        .patch(
            "ssa",
            &PatchParams::apply("alpha").force(),
            &Patch::Apply(json!({"apiVersion": "v1",
        "kind": "ConfigMap", "metadata": {"name": "ssa"}})),
        )
        .await
        .unwrap();
    assert_eq!(after.data.unwrap(), BTreeMap::from([("shared".to_string(), "b".to_string())]));
    let err = api.patch("ssa", &PatchParams::default(), &Patch::Apply(doc("c", false))).await.unwrap_err();
    assert_eq!(api_code(&err).0, 400, "apply needs a field manager");
    tc.shutdown_and_check_leaks().await;
}

#[derive(Debug, thiserror::Error)]
#[error("reconcile failed: {0}")]
struct ReconcileError(#[from] kube::Error);

#[tokio::test]
async fn a_controller_reconciles_every_object_and_settles() {
    let tc = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(tc.client.clone());
    for i in 0..3 {
        api.create(&PostParams::default(), &cm(&format!("c{i}"), &[])).await.unwrap();
    }
    let reconcile = |o: Arc<ConfigMap>, api: Arc<Api<ConfigMap>>| async move {
        let name = o.metadata.name.clone().unwrap();
        let patch = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"reconciled": "yes"}}});
        api.patch(&name, &PatchParams::apply("test-controller").force(), &Patch::Apply(patch)).await?;
        Ok::<_, ReconcileError>(Action::await_change())
    };
    let ctrl = Controller::new(api.clone(), watcher::Config::default())
        .run(reconcile, |_, _, _| Action::requeue(Duration::from_secs(1)), Arc::new(api.clone()))
        .for_each(|_| async {});
    let handle = tokio::spawn(ctrl);
    within(
        "the controller to label every ConfigMap",
        await_condition(api.clone(), "c2", |o: Option<&ConfigMap>| {
            o.and_then(|o| o.metadata.labels.as_ref()).is_some_and(|l| l.get("reconciled").is_some())
        }),
    )
    .await
    .unwrap();
    api.create(&PostParams::default(), &cm("late", &[])).await.unwrap();
    within(
        "the controller to see a new object",
        await_condition(api.clone(), "late", |o: Option<&ConfigMap>| {
            o.and_then(|o| o.metadata.labels.as_ref()).is_some_and(|l| l.get("reconciled").is_some())
        }),
    )
    .await
    .unwrap();
    handle.abort();
    tc.shutdown_and_check_leaks().await;
}

pub fn widget_crd(scope: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": scope,
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                                             {"name": "Phase", "type": "string", "jsonPath": ".status.phase"}]}]}
    })
}

#[tokio::test]
async fn a_crd_registered_at_run_time_serves_its_custom_resources() {
    let tc = TestCluster::start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(tc.client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(widget_crd("Namespaced")).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    within(
        "the CRD to be established",
        await_condition(crds.clone(), "widgets.example.com", conditions::is_crd_established()),
    )
    .await
    .unwrap();
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"));
    let widgets: Api<DynamicObject> = Api::namespaced_with(tc.client.clone(), "default", &ar);
    let w: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 3}, "status": {"phase": "ignored"}}))
    .unwrap();
    let w = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert!(w.data.get("status").is_none(), "status is dropped on create when it is a subresource");
    let w = widgets
        .patch_status("w1", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Ready"}})))
        .await
        .unwrap();
    assert_eq!(w.data["status"]["phase"], "Ready");
    assert_eq!(w.metadata.generation, Some(1));
    let err = widgets
        .patch("w1", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"size": 4}})))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err).0, 415, "no strategic merge patch for custom resources");
    assert_eq!(widgets.list(&ListParams::default()).await.unwrap().items.len(), 1);
    // Deleting the CRD removes its objects and stops serving it.
    crds.delete("widgets.example.com", &DeleteParams::default()).await.unwrap();
    within(
        "the CRD to go",
        await_condition(crds.clone(), "widgets.example.com", |o: Option<&CustomResourceDefinition>| o.is_none()),
    )
    .await
    .unwrap();
    assert_eq!(api_code(&widgets.list(&ListParams::default()).await.unwrap_err()).0, 404);
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_content_then_the_namespace() {
    use k8s_openapi::api::core::v1::Namespace;
    let tc = TestCluster::start().await;
    let nss: Api<Namespace> = Api::all(tc.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "scratch"}})).unwrap();
    let ns = nss.create(&PostParams::default(), &ns).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(tc.client.clone(), "scratch");
    let mut held = cm("held", &[]);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &held).await.unwrap();
    api.create(&PostParams::default(), &cm("free", &[])).await.unwrap();
    nss.delete("scratch", &DeleteParams::default()).await.unwrap();
    let terminating = nss.get("scratch").await.unwrap();
    assert_eq!(terminating.status.unwrap().phase.as_deref(), Some("Terminating"));
    let err = api.create(&PostParams::default(), &cm("new", &[])).await.unwrap_err();
    assert_eq!(api_code(&err), (403, "Forbidden".into()));
    within("the free object to go", await_condition(api.clone(), "free", |o: Option<&ConfigMap>| o.is_none()))
        .await
        .unwrap();
    assert!(nss.get("scratch").await.is_ok(), "the namespace waits for its content");
    api.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    within(
        "the namespace to go",
        await_condition(nss.clone(), "scratch", conditions::is_deleted(&ns.metadata.uid.unwrap())),
    )
    .await
    .unwrap();
    tc.shutdown_and_check_leaks().await;
}
