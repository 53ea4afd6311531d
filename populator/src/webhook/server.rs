//! The HTTPS endpoints: `/datavolume-validate` (CDI's path) and `/healthz`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::Api;
use kube::core::admission::{AdmissionResponse, Operation};

use super::datavolume;
use super::review::{self, Denial, Request, Verdict};
use crate::api::names::webhooks::DATAVOLUME_VALIDATE_PATH;
use crate::datavolume::render::CloneKind;

/// What the handlers share.
#[derive(Clone)]
pub struct Ctx {
    pub client: kube::Client,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").finish_non_exhaustive()
    }
}

pub fn router(ctx: Arc<Ctx>) -> axum::Router {
    axum::Router::new()
        .route(DATAVOLUME_VALIDATE_PATH, post(datavolume_validate))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(ctx)
}

async fn datavolume_validate(State(ctx): State<Arc<Ctx>>, body: Bytes) -> Response {
    let answer = review::answer(&body, |request| async move {
        let response = AdmissionResponse::from(&request);
        let verdict = admit_datavolume(&ctx, &request).await;
        if let Err(denial) = &verdict {
            tracing::info!(
                namespace = request.namespace.as_deref().unwrap_or_default(),
                name = %request.name,
                operation = ?request.operation,
                reason = %denial,
                "DataVolume refused"
            );
        }
        (response, verdict)
    })
    .await;
    match answer {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "webhook: unreadable admission review");
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
    }
}

/// Decodes the DataVolumes of the request, looks up the claim of the same name on create,
/// and applies the rules.
async fn admit_datavolume(ctx: &Ctx, request: &Request) -> Verdict {
    let decode = |object: Option<&kube::core::DynamicObject>, which: &str| {
        let object = object.ok_or_else(|| Denial::new(format!("the admission request has no {which}"), ""))?;
        let value = serde_json::to_value(object).map_err(|e| Denial::new(e.to_string(), ""))?;
        serde_json::from_value::<crate::api::DataVolume>(value)
            .map_err(|e| Denial::new(format!("the {which} is not a valid DataVolume: {e}"), ""))
    };
    let dv = decode(request.object.as_ref(), "object")?;
    let old = match request.operation {
        Operation::Update => Some(decode(request.old_object.as_ref(), "old object")?),
        _ => None,
    };
    let existing = match request.operation {
        // A generated name is not known yet: no claim can have it.
        Operation::Create if dv.metadata.name.as_deref().is_some_and(|n| !n.is_empty()) => {
            let namespace = request.namespace.as_deref().unwrap_or_default();
            let name = dv.metadata.name.as_deref().unwrap_or_default();
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
            claims.get_opt(name).await.map_err(|e| {
                Denial::new(format!("cannot check whether PVC {namespace}/{name} exists: {e}; try again"), "")
            })?
        }
        _ => None,
    };
    datavolume::validate(&dv, old.as_ref(), existing.as_ref())?;
    if request.operation == Operation::Create
        && let Some((source, origin)) =
            clone_source_namespace(ctx, &dv, request.namespace.as_deref().unwrap_or_default()).await?
    {
        authorize_clone(ctx, request, &source, origin).await?;
        clone_not_smaller(ctx, &dv, &source).await?;
    }
    Ok(())
}

/// A clone written with `spec.pvc` (its request taken as written) must not ask for less than
/// its source claim requests, as CDI's webhook checks. (`spec.storage` sizes are completed
/// by the controller, which takes the source's size when none is given.)
async fn clone_not_smaller(ctx: &Ctx, dv: &crate::api::DataVolume, namespace: &str) -> Verdict {
    let Some(size) = dv
        .spec
        .pvc
        .as_ref()
        .and_then(|p| p.resources.as_ref()?.requests.as_ref()?.get("storage"))
        .and_then(|q| crate::api::quantity::parse_bytes(&q.0).ok())
    else {
        return Ok(());
    };
    let Some(name) = dv.spec.source.as_ref().and_then(|s| s.pvc.as_ref()).map(|p| p.name.clone()) else {
        return Ok(());
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let source = claims
        .get_opt(&name)
        .await
        .map_err(|e| Denial::new(format!("cannot read the clone source PVC {namespace}/{name}: {e}; try again"), ""))?;
    match source.as_ref().and_then(crate::controller::build::requested_bytes) {
        Some(needed) if size < needed => Err(Denial::new(
            "target resources requests storage size is smaller than the source",
            "spec.pvc.resources.requests.storage",
        )),
        _ => Ok(()),
    }
}

/// The namespace a clone DataVolume copies from (its own when the source names none), and
/// what it copies; for a `sourceRef`, what its DataSource names, which must resolve now.
async fn clone_source_namespace(
    ctx: &Ctx,
    dv: &crate::api::DataVolume,
    namespace: &str,
) -> Result<Option<(String, CloneKind)>, Denial> {
    let or_own = |ns: &Option<String>| ns.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| namespace.to_string());
    if let Some(pvc) = dv.spec.source.as_ref().and_then(|s| s.pvc.as_ref()) {
        return Ok(Some((or_own(&pvc.namespace), CloneKind::Pvc)));
    }
    if let Some(snapshot) = dv.spec.source.as_ref().and_then(|s| s.snapshot.as_ref()) {
        return Ok(Some((or_own(&snapshot.namespace), CloneKind::Snapshot)));
    }
    let Some(r) = dv.spec.source_ref.as_ref() else { return Ok(None) };
    let ds_namespace = or_own(&r.namespace);
    let client = ctx.client.clone();
    let Some(ds) = crate::datasource::get(&client, ds_namespace.clone(), r.name.clone()).await else {
        return Err(Denial::new(format!("DataSource {ds_namespace}/{} not found", r.name), "spec.sourceRef"));
    };
    match crate::datasource::resolve(&ds, |ns, n| crate::datasource::get(&client, ns, n)).await {
        Ok(crate::datasource::Resolved::Pvc { namespace, .. }) => Ok(Some((namespace, CloneKind::Pvc))),
        Ok(crate::datasource::Resolved::Snapshot { namespace, .. }) => Ok(Some((namespace, CloneKind::Snapshot))),
        Err(why) => Err(Denial::new(format!("DataSource {ds_namespace}/{}: {why}", r.name), "spec.sourceRef")),
    }
}

/// CDI's rule: whoever creates a clone DataVolume must be allowed to `create` the
/// `datavolumes/source` subresource (group cdi.kubevirt.io) in the source's namespace, or
/// else to `create` pods there (for a snapshot, pods and claims: restoring one makes a
/// claim); asked of the API server with SubjectAccessReviews as that user.
async fn authorize_clone(ctx: &Ctx, request: &Request, namespace: &str, origin: CloneKind) -> Verdict {
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
    let user = &request.user_info;
    let allowed = |group: &str, resource: &str, subresource: Option<&str>| {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    verb: Some("create".into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    subresource: subresource.map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        async move {
            let api: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
            let answer = api.create(&Default::default(), &review).await.map_err(|e| {
                Denial::new(
                    format!("cannot check the permissions of the clone's source namespace {namespace}: {e}; try again"),
                    "",
                )
            })?;
            Ok::<bool, Denial>(answer.status.is_some_and(|s| s.allowed))
        }
    };
    if allowed(crate::api::names::api::GROUP, "datavolumes", Some("source")).await?
        || (allowed("", "pods", None).await?
            && (origin == CloneKind::Pvc || allowed("", "persistentvolumeclaims", None).await?))
    {
        return Ok(());
    }
    let field = match origin {
        CloneKind::Pvc => "spec.source.pvc",
        CloneKind::Snapshot => "spec.source.snapshot",
    };
    Err(Denial::new(
        format!(
            "User {} has insufficient permissions in clone source namespace {namespace}",
            user.username.as_deref().unwrap_or("(unknown)")
        ),
        field,
    ))
}
