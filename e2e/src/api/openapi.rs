//! The OpenAPI documents: `/openapi/v3` (an index, then one document per group/version) and
//! `/openapi/v2` (one Swagger 2.0 document, JSON or gnostic protobuf). kubectl reads them for
//! `explain`, for the patch metadata of client-side apply, and to learn that the server
//! validates fields itself (the PATCH operation's `fieldValidation` parameter).
//!
//! Built-in schemas come from k8s-openapi's `schemars` impls (descriptions, formats,
//! `required`), with the `x-kubernetes-*` property extensions those lack taken from
//! `openapi_ext.json`. That table was extracted from Kubernetes v1.33's published
//! `api/openapi-spec/swagger.json`: for every definition reachable from the kinds served here,
//! the `x-kubernetes-*` keys of the definition and of its properties (list types and map keys,
//! patch strategies and merge keys, map types, unions); regenerate it when a kind is added.
//! CRD schemas come from each served version's `openAPIV3Schema`. Documents are built once per
//! set of served types and CRDs, not per request.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::Resource;
use k8s_openapi::schemars::JsonSchema;
use k8s_openapi::schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::discovery::KUBE_VERSION;
use super::error::ApiError;
use super::registry::{Registry, ResourceType, gvk_json};
use super::store::Store;

const REF_V3: &str = "#/components/schemas/";
const REF_V2: &str = "#/definitions/";
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const PROTO_V2: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
/// How kubectl asks for the protobuf form (`@` in the Accept header, `.` in the answer).
const PROTO_V2_ACCEPT: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// `GET /openapi/<rest…>`.
pub fn serve(store: &Store, reg: &Registry, rest: &[&str], accept: &str) -> Result<Response, ApiError> {
    let docs = documents(store, reg);
    match rest {
        ["v3"] => Ok(json_bytes(docs.v3_index().to_string().into_bytes())),
        ["v3", "api", v] => docs.v3_doc(&format!("api/{v}")),
        ["v3", "apis", g, v] => docs.v3_doc(&format!("apis/{g}/{v}")),
        ["v2"] => docs.v2(accept),
        _ => Err(ApiError::path_not_found()),
    }
}

fn json_bytes(body: Vec<u8>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

// ---------------------------------------------------------------------------------------------
// Built-in schemas

/// The built-in schemas (OpenAPI v3 form, refs to `#/components/schemas/`) and which schema
/// each served built-in kind has.
#[derive(Debug)]
struct Builtins {
    schemas: Map<String, Value>,
    kinds: Vec<(String, String, String, String)>,
}

macro_rules! generate_kinds {
    ($g:ident; $($t:ty),* $(,)?) => {
        vec![$({
            let _ = $g.subschema_for::<$t>();
            (
                <$t as Resource>::GROUP.to_string(),
                <$t as Resource>::VERSION.to_string(),
                <$t as Resource>::KIND.to_string(),
                <$t as JsonSchema>::schema_name().into_owned(),
            )
        }),*]
    };
}

fn builtins() -> &'static Builtins {
    static B: OnceLock<Builtins> = OnceLock::new();
    B.get_or_init(|| {
        use k8s_openapi::api::{
            admissionregistration, apps, authentication, authorization, coordination, core, discovery, events, rbac,
            storage,
        };
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
        use k8s_openapi::kube_aggregator::pkg::apis::apiregistration;
        let mut g: SchemaGenerator = SchemaSettings::openapi3().into_generator();
        // Every kind registry.rs serves as a built-in (a test checks that none is missing).
        let kinds = generate_kinds!(g;
            core::v1::Namespace, core::v1::Node, core::v1::Pod, core::v1::PersistentVolumeClaim,
            core::v1::PersistentVolume, core::v1::Secret, core::v1::ConfigMap, core::v1::Event,
            core::v1::Service, core::v1::ServiceAccount, events::v1::Event, coordination::v1::Lease,
            storage::v1::StorageClass, storage::v1::CSIDriver,
            apiextensions::v1::CustomResourceDefinition,
            rbac::v1::Role, rbac::v1::RoleBinding, rbac::v1::ClusterRole, rbac::v1::ClusterRoleBinding,
            apps::v1::Deployment, apps::v1::DaemonSet, apps::v1::ReplicaSet,
            discovery::v1::EndpointSlice, apiregistration::v1::APIService,
            authentication::v1::TokenReview, authentication::v1::SelfSubjectReview,
            authorization::v1::SubjectAccessReview, authorization::v1::SelfSubjectAccessReview,
            authorization::v1::LocalSubjectAccessReview, authorization::v1::SelfSubjectRulesReview,
            admissionregistration::v1::ValidatingWebhookConfiguration,
            admissionregistration::v1::MutatingWebhookConfiguration,
        );
        let mut schemas = g.take_definitions(true);
        add_extensions(&mut schemas);
        // Kubernetes publishes these two as what they are on the wire rather than as
        // k8s-openapi's int-or-string marker.
        if let Some(q) = schemas.get_mut(QUANTITY).and_then(Value::as_object_mut) {
            q.remove("x-kubernetes-int-or-string");
            q.insert("oneOf".into(), json!([{"type": "string"}, {"type": "number"}]));
        }
        for (group, version, kind, name) in &kinds {
            if let Some(s) = schemas.get_mut(name).and_then(Value::as_object_mut) {
                let gvks = s.entry("x-kubernetes-group-version-kind").or_insert_with(|| json!([]));
                if let Some(a) = gvks.as_array_mut() {
                    a.push(json!({"group": group, "version": version, "kind": kind}));
                }
            }
        }
        Builtins { schemas, kinds }
    })
}

/// Adds the `x-kubernetes-*` extensions of `openapi_ext.json`: `{schema: {property: {ext:
/// value}}}`, where the property `""` holds the schema's own extensions.
fn add_extensions(schemas: &mut Map<String, Value>) {
    let table: Map<String, Value> = serde_json::from_str(include_str!("openapi_ext.json")).unwrap_or_default();
    for (name, props) in table {
        let Some(schema) = schemas.get_mut(&name) else { continue };
        for (prop, exts) in props.as_object().into_iter().flatten() {
            let target = if prop.is_empty() { Some(&mut *schema) } else { schema["properties"].get_mut(prop) };
            if let (Some(Value::Object(t)), Some(exts)) = (target, exts.as_object()) {
                t.extend(exts.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CRD schemas

/// `cdi.kubevirt.io` → `io.kubevirt.cdi`: Kubernetes names CRD schemas by the reversed group.
fn crd_schema_name(group: &str, version: &str, kind: &str) -> String {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

/// The schema of one served version of a CRD, completed as Kubernetes completes it:
/// `apiVersion`, `kind` and `metadata` (a reference to ObjectMeta) with their descriptions,
/// and the kind's group/version/kind.
fn crd_schema(version: &Value, t: &ResourceType) -> Value {
    let mut s = version["schema"]["openAPIV3Schema"].clone();
    if !s.is_object() {
        s = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    }
    // The same words a built-in kind's schema has for these three fields.
    let pod = builtins().schemas.get("io.k8s.api.core.v1.Pod");
    let describe = |field: &str| pod.and_then(|p| p["properties"][field].get("description")).cloned();
    let mut field = |name: &str, mut v: Value| {
        if let Some(d) = describe(name) {
            v["description"] = d;
        }
        if !s["properties"].is_object() {
            s["properties"] = json!({});
        }
        s["properties"][name] = v;
    };
    field("apiVersion", json!({"type": "string"}));
    field("kind", json!({"type": "string"}));
    field("metadata", json!({"allOf": [{"$ref": format!("{REF_V3}{OBJECT_META}")}]}));
    s["type"] = json!("object");
    s["x-kubernetes-group-version-kind"] = json!([gvk_json(t)]);
    s
}

// ---------------------------------------------------------------------------------------------
// The cache

/// The documents for one set of served types and CRDs.
#[derive(Debug)]
struct Docs {
    key: [u8; 32],
    /// Every schema served (built-ins and CRDs), OpenAPI v3 form.
    schemas: Map<String, Value>,
    /// Group/version path (`api/v1`, `apis/<g>/<v>`) → (document, its hash).
    v3: BTreeMap<String, (Vec<u8>, String)>,
    v2_json: OnceLock<Vec<u8>>,
    v2_proto: OnceLock<Vec<u8>>,
    /// The served types, for v2's paths.
    reg: Registry,
}

/// What the documents depend on: the served types, and the CRDs that define some.
fn cache_key(reg: &Registry, crds: &[Arc<Value>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for t in reg.all() {
        h.update(format!("{}/{}/{}/{}/{}\n", t.group, t.version, t.plural, t.kind, t.custom));
    }
    for c in crds {
        h.update(format!("{}/{}\n", c["metadata"]["uid"], c["metadata"]["resourceVersion"]));
    }
    h.finalize().into()
}

fn documents(store: &Store, reg: &Registry) -> Arc<Docs> {
    // A few recent sets: several clusters may share this process (tests).
    static CACHE: Mutex<Vec<Arc<Docs>>> = Mutex::new(Vec::new());
    let crds = reg.preferred("apiextensions.k8s.io", "customresourcedefinitions").map(|rt| store.all(rt));
    let crds = crds.unwrap_or_default();
    let key = cache_key(reg, &crds);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = cache.iter().find(|d| d.key == key) {
        return d.clone();
    }
    let docs = Arc::new(build(key, reg, &crds));
    if cache.len() >= 4 {
        cache.remove(0);
    }
    cache.push(docs.clone());
    docs
}

fn build(key: [u8; 32], reg: &Registry, crds: &[Arc<Value>]) -> Docs {
    let b = builtins();
    let mut schemas = b.schemas.clone();
    // The root schema of each served type.
    let mut roots: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in reg.all() {
        let name = if t.custom {
            let crd = crds.iter().find(|c| c["spec"]["group"] == t.group && c["spec"]["names"]["plural"] == t.plural);
            let version = crd.and_then(|c| {
                c["spec"]["versions"].as_array().and_then(|vs| vs.iter().find(|v| v["name"] == t.version.as_str()))
            });
            let Some(version) = version else { continue };
            let name = crd_schema_name(&t.group, &t.version, &t.kind);
            schemas.insert(name.clone(), crd_schema(version, t));
            Some(name)
        } else {
            b.kinds.iter().find(|(g, v, k, _)| *g == t.group && *v == t.version && *k == t.kind).map(|k| k.3.clone())
        };
        roots.entry(gv_path(&t.group, &t.version)).or_default().extend(name);
    }
    let mut v3 = BTreeMap::new();
    for (group, versions) in reg.groups() {
        for version in versions {
            let path = gv_path(&group, &version);
            let wanted = closure(&schemas, roots.get(&path).map(Vec::as_slice).unwrap_or_default());
            let components: Map<String, Value> =
                wanted.into_iter().filter_map(|n| schemas.get(&n).map(|s| (n, s.clone()))).collect();
            let doc = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", KUBE_VERSION.0, KUBE_VERSION.1)},
                "paths": v3_paths(reg, &group, &version),
                "components": {"schemas": components},
            });
            let bytes = doc.to_string().into_bytes();
            let hash = hex_upper(&Sha256::digest(&bytes));
            v3.insert(path, (bytes, hash));
        }
    }
    Docs { key, schemas, v3, v2_json: OnceLock::new(), v2_proto: OnceLock::new(), reg: reg.clone() }
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// `roots` and every schema they reference, directly or not.
fn closure(schemas: &Map<String, Value>, roots: &[String]) -> BTreeSet<String> {
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", Value::String(r)) => out.extend(r.strip_prefix(REF_V3).map(str::to_string)),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo = roots.to_vec();
    while let Some(n) = todo.pop() {
        if seen.insert(n.clone())
            && let Some(s) = schemas.get(&n)
        {
            refs(s, &mut todo);
        }
    }
    seen
}

impl Docs {
    fn v3_index(&self) -> Value {
        let paths: Map<String, Value> = self
            .v3
            .iter()
            .map(|(p, (_, hash))| (p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")})))
            .collect();
        json!({"paths": paths})
    }

    fn v3_doc(&self, path: &str) -> Result<Response, ApiError> {
        let (bytes, _) = self.v3.get(path).ok_or_else(ApiError::path_not_found)?;
        Ok(json_bytes(bytes.clone()))
    }

    /// JSON when the client takes it; the gnostic protobuf kubectl asks for first otherwise.
    fn v2(&self, accept: &str) -> Result<Response, ApiError> {
        let kinds: Vec<&str> = accept.split(',').map(|m| m.split(';').next().unwrap_or("").trim()).collect();
        let proto = kinds.iter().position(|k| *k == PROTO_V2_ACCEPT || *k == PROTO_V2);
        let json = kinds.iter().position(|k| matches!(*k, "application/json" | "application/*" | "*/*" | ""));
        let doc = || self.v2_json.get_or_init(|| v2_document(&self.schemas, &self.reg).to_string().into_bytes());
        match (proto, json) {
            (Some(p), j) if j.is_none_or(|j| p < j) => {
                let body = self.v2_proto.get_or_init(|| {
                    let v: Value = serde_json::from_slice(doc()).unwrap_or_default();
                    proto_v2::encode(&v)
                });
                Ok((StatusCode::OK, [(header::CONTENT_TYPE, PROTO_V2)], body.clone()).into_response())
            }
            (_, Some(_)) => Ok(json_bytes(doc().clone())),
            _ => Err(ApiError::not_acceptable(format!(
                "only the following media types are accepted: application/json, {PROTO_V2_ACCEPT}"
            ))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Operations

/// One operation on one path: its verb, the operation itself (id, action, kind), its query
/// parameters, and the media types a PATCH takes.
type Op = (String, &'static str, Value, Vec<&'static str>, Vec<&'static str>);

/// The operations of one group/version. kubectl reads two things from them: the PATCH
/// operation's `fieldValidation` parameter (the server validates fields, so kubectl does not),
/// and whether PATCH takes strategic merge patches (built-in kinds do, custom resources do not),
/// which decides how client-side apply computes its patch.
fn operations(reg: &Registry, group: &str, version: &str) -> Vec<Op> {
    let mut out = Vec::new();
    for t in reg.all().iter().filter(|t| t.group == group && t.version == version) {
        let base = format!("/{}", gv_path(group, version));
        let item = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{base}/{}/{{name}}", t.plural)
        };
        let write = vec!["pretty", "dryRun", "fieldManager", "fieldValidation"];
        let mut patch = write.clone();
        patch.push("force");
        let mut patch_types = vec!["application/json-patch+json", "application/merge-patch+json"];
        if !t.custom {
            patch_types.push("application/strategic-merge-patch+json");
        }
        patch_types.push("application/apply-patch+yaml");
        for (verb, params, consumes) in [
            ("get", vec!["pretty"], vec![]),
            ("put", write, vec![]),
            ("patch", patch, patch_types),
            ("delete", vec!["pretty", "dryRun", "gracePeriodSeconds", "propagationPolicy"], vec![]),
        ] {
            let op = json!({"operationId": format!("{verb}{}", t.kind), "x-kubernetes-action": verb,
                            "x-kubernetes-group-version-kind": gvk_json(t)});
            out.push((item.clone(), verb, op, params, consumes));
        }
    }
    out
}

fn v3_paths(reg: &Registry, group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    for (item, verb, mut op, params, consumes) in operations(reg, group, version) {
        op["parameters"] = params
            .iter()
            .map(|n| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
            .collect();
        if !consumes.is_empty() {
            let content: Map<String, Value> =
                consumes.iter().map(|c| (c.to_string(), json!({"schema": {"type": "object"}}))).collect();
            op["requestBody"] = json!({"content": content, "required": true});
        }
        op["responses"] = json!({"200": {"description": "OK"}});
        let entry = paths.entry(item).or_insert_with(|| json!({}));
        entry[verb] = op;
    }
    Value::Object(paths)
}

// ---------------------------------------------------------------------------------------------
// OpenAPI v2

fn v2_document(schemas: &Map<String, Value>, reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in reg.groups() {
        for version in versions {
            for (item, verb, mut op, params, consumes) in operations(reg, &group, &version) {
                op["parameters"] = params
                    .iter()
                    .map(|n| json!({"name": n, "in": "query", "type": "string", "uniqueItems": true}))
                    .collect();
                if !consumes.is_empty() {
                    op["consumes"] = json!(consumes);
                }
                op["responses"] = json!({"200": {"description": "OK"}});
                let entry = paths.entry(item).or_insert_with(|| json!({}));
                entry[verb] = op;
            }
        }
    }
    let definitions: Map<String, Value> = schemas.iter().map(|(n, s)| (n.clone(), to_v2(n, s))).collect();
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", KUBE_VERSION.0, KUBE_VERSION.1)},
        "paths": paths,
        "definitions": definitions,
    })
}

/// One named schema in Swagger 2.0 form.
fn to_v2(name: &str, s: &Value) -> Value {
    match name {
        // What Kubernetes publishes for these in v2.
        INT_OR_STRING => json!({"description": s["description"], "type": "string", "format": "int-or-string"}),
        QUANTITY => json!({"description": s["description"], "type": "string"}),
        _ => schema_v2(s),
    }
}

/// A schema in Swagger 2.0 form: refs to `#/definitions/`, a sole `allOf` ref folded back into
/// `$ref` (v2 allows description next to it), and what v2 has no words for (`oneOf`, `anyOf`,
/// `not`, `nullable`) dropped, as Kubernetes does for CRD schemas.
fn schema_v2(s: &Value) -> Value {
    let Value::Object(m) = s else { return s.clone() };
    let mut out = Map::new();
    for (k, v) in m {
        match k.as_str() {
            "$ref" => {
                let r = v.as_str().unwrap_or_default();
                out.insert(k.clone(), json!(r.replace(REF_V3, REF_V2)));
            }
            "allOf" => match v.as_array().map(Vec::as_slice) {
                Some([one]) if one.get("$ref").is_some() => {
                    out.extend(schema_v2(one).as_object().cloned().unwrap_or_default());
                }
                _ => {
                    out.insert(k.clone(), Value::Array(v.as_array().into_iter().flatten().map(schema_v2).collect()));
                }
            },
            "oneOf" | "anyOf" | "not" | "nullable" => {}
            "properties" | "patternProperties" | "definitions" => {
                let props = v.as_object().into_iter().flatten().map(|(p, x)| (p.clone(), schema_v2(x))).collect();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" => {
                out.insert(k.clone(), schema_v2(v));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// The gnostic `openapi.v2.Document` protobuf (what client-go's `OpenAPISchema` decodes), for
/// the parts kubectl reads: definitions, with descriptions, types, refs, required fields and
/// vendor extensions, and the operations with their parameters.
mod proto_v2 {
    use prost::Message;
    use serde_json::Value;

    #[derive(Clone, PartialEq, Message)]
    pub struct Document {
        #[prost(string, tag = "1")]
        pub swagger: String,
        #[prost(message, optional, tag = "2")]
        pub info: Option<Info>,
        #[prost(message, optional, tag = "8")]
        pub paths: Option<Paths>,
        #[prost(message, optional, tag = "9")]
        pub definitions: Option<Definitions>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Info {
        #[prost(string, tag = "1")]
        pub title: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Paths {
        #[prost(message, repeated, tag = "2")]
        pub path: Vec<NamedPathItem>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct NamedPathItem {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<PathItem>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct PathItem {
        #[prost(message, optional, tag = "2")]
        pub get: Option<Operation>,
        #[prost(message, optional, tag = "3")]
        pub put: Option<Operation>,
        #[prost(message, optional, tag = "5")]
        pub delete: Option<Operation>,
        #[prost(message, optional, tag = "8")]
        pub patch: Option<Operation>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Operation {
        #[prost(string, tag = "5")]
        pub operation_id: String,
        #[prost(string, repeated, tag = "7")]
        pub consumes: Vec<String>,
        #[prost(message, repeated, tag = "8")]
        pub parameters: Vec<ParametersItem>,
        #[prost(message, optional, tag = "9")]
        pub responses: Option<Responses>,
        #[prost(message, repeated, tag = "13")]
        pub vendor_extension: Vec<NamedAny>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct ParametersItem {
        #[prost(message, optional, tag = "1")]
        pub parameter: Option<Parameter>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Parameter {
        #[prost(message, optional, tag = "2")]
        pub non_body_parameter: Option<NonBodyParameter>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct NonBodyParameter {
        #[prost(message, optional, tag = "3")]
        pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct QueryParameterSubSchema {
        #[prost(string, tag = "2")]
        pub r#in: String,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "6")]
        pub r#type: String,
        #[prost(bool, tag = "20")]
        pub unique_items: bool,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Responses {
        #[prost(message, repeated, tag = "1")]
        pub response_code: Vec<NamedResponseValue>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct NamedResponseValue {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<ResponseValue>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct ResponseValue {
        #[prost(message, optional, tag = "1")]
        pub response: Option<Response>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Response {
        #[prost(string, tag = "1")]
        pub description: String,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Definitions {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSchema>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct NamedSchema {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Schema>,
    }

    /// A value as YAML text (JSON is YAML), which is how kube-openapi reads vendor extensions.
    #[derive(Clone, PartialEq, Message)]
    pub struct Any {
        #[prost(string, tag = "2")]
        pub yaml: String,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct NamedAny {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Any>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Schema {
        #[prost(string, tag = "1")]
        pub r#ref: String,
        #[prost(string, tag = "2")]
        pub format: String,
        #[prost(string, tag = "3")]
        pub title: String,
        #[prost(string, tag = "4")]
        pub description: String,
        #[prost(message, optional, tag = "5")]
        pub default: Option<Any>,
        #[prost(double, tag = "7")]
        pub maximum: f64,
        #[prost(double, tag = "9")]
        pub minimum: f64,
        #[prost(int64, tag = "11")]
        pub max_length: i64,
        #[prost(int64, tag = "12")]
        pub min_length: i64,
        #[prost(string, tag = "13")]
        pub pattern: String,
        #[prost(int64, tag = "14")]
        pub max_items: i64,
        #[prost(int64, tag = "15")]
        pub min_items: i64,
        #[prost(bool, tag = "16")]
        pub unique_items: bool,
        #[prost(string, repeated, tag = "19")]
        pub required: Vec<String>,
        #[prost(message, repeated, tag = "20")]
        pub r#enum: Vec<Any>,
        #[prost(message, optional, tag = "21")]
        pub additional_properties: Option<AdditionalPropertiesItem>,
        #[prost(message, optional, tag = "22")]
        pub r#type: Option<TypeItem>,
        #[prost(message, optional, tag = "23")]
        pub items: Option<ItemsItem>,
        #[prost(message, repeated, tag = "24")]
        pub all_of: Vec<Schema>,
        #[prost(message, optional, tag = "25")]
        pub properties: Option<Properties>,
        #[prost(message, repeated, tag = "31")]
        pub vendor_extension: Vec<NamedAny>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct AdditionalPropertiesItem {
        #[prost(oneof = "AdditionalProperties", tags = "1, 2")]
        pub oneof: Option<AdditionalProperties>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum AdditionalProperties {
        #[prost(message, boxed, tag = "1")]
        Schema(Box<Schema>),
        #[prost(bool, tag = "2")]
        Boolean(bool),
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct TypeItem {
        #[prost(string, repeated, tag = "1")]
        pub value: Vec<String>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct ItemsItem {
        #[prost(message, repeated, tag = "1")]
        pub schema: Vec<Schema>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Properties {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSchema>,
    }

    fn any(v: &Value) -> Any {
        Any { yaml: v.to_string() }
    }

    fn extensions(v: &Value) -> Vec<NamedAny> {
        v.as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("x-"))
            .map(|(k, x)| NamedAny { name: k.clone(), value: Some(any(x)) })
            .collect()
    }

    fn text(v: &Value, k: &str) -> String {
        v[k].as_str().unwrap_or_default().to_string()
    }

    fn schema(v: &Value) -> Schema {
        let ty = v["type"].as_str().map(str::to_string);
        // kube-openapi refuses a whole document over one array without its item schema.
        let ty = ty.filter(|t| t != "array" || v["items"].is_object());
        Schema {
            r#ref: text(v, "$ref"),
            format: text(v, "format"),
            title: text(v, "title"),
            description: text(v, "description"),
            default: v.get("default").map(any),
            maximum: v["maximum"].as_f64().unwrap_or_default(),
            minimum: v["minimum"].as_f64().unwrap_or_default(),
            max_length: v["maxLength"].as_i64().unwrap_or_default(),
            min_length: v["minLength"].as_i64().unwrap_or_default(),
            pattern: text(v, "pattern"),
            max_items: v["maxItems"].as_i64().unwrap_or_default(),
            min_items: v["minItems"].as_i64().unwrap_or_default(),
            unique_items: v["uniqueItems"].as_bool().unwrap_or_default(),
            required: v["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            r#enum: v["enum"].as_array().into_iter().flatten().map(any).collect(),
            additional_properties: match &v["additionalProperties"] {
                Value::Bool(b) => Some(AdditionalPropertiesItem { oneof: Some(AdditionalProperties::Boolean(*b)) }),
                x @ Value::Object(_) => {
                    Some(AdditionalPropertiesItem { oneof: Some(AdditionalProperties::Schema(Box::new(schema(x)))) })
                }
                _ => None,
            },
            r#type: ty.map(|t| TypeItem { value: vec![t] }),
            items: v["items"].is_object().then(|| ItemsItem { schema: vec![schema(&v["items"])] }),
            all_of: v["allOf"].as_array().into_iter().flatten().map(schema).collect(),
            properties: v["properties"].as_object().map(|p| Properties {
                additional_properties: p
                    .iter()
                    .map(|(n, s)| NamedSchema { name: n.clone(), value: Some(schema(s)) })
                    .collect(),
            }),
            vendor_extension: extensions(v),
        }
    }

    fn operation(v: &Value) -> Option<Operation> {
        v.is_object().then(|| Operation {
            operation_id: text(v, "operationId"),
            consumes: v["consumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            parameters: v["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| ParametersItem {
                    parameter: Some(Parameter {
                        non_body_parameter: Some(NonBodyParameter {
                            query_parameter_sub_schema: Some(QueryParameterSubSchema {
                                r#in: text(p, "in"),
                                name: text(p, "name"),
                                r#type: text(p, "type"),
                                unique_items: p["uniqueItems"].as_bool().unwrap_or_default(),
                            }),
                        }),
                    }),
                })
                .collect(),
            responses: Some(Responses {
                response_code: vec![NamedResponseValue {
                    name: "200".into(),
                    value: Some(ResponseValue { response: Some(Response { description: "OK".into() }) }),
                }],
            }),
            vendor_extension: extensions(v),
        })
    }

    /// The Swagger 2.0 JSON document `doc`, as protobuf.
    pub fn encode(doc: &Value) -> Vec<u8> {
        let paths = doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, item)| NamedPathItem {
                name: name.clone(),
                value: Some(PathItem {
                    get: operation(&item["get"]),
                    put: operation(&item["put"]),
                    delete: operation(&item["delete"]),
                    patch: operation(&item["patch"]),
                }),
            })
            .collect();
        let definitions = doc["definitions"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, s)| NamedSchema { name: name.clone(), value: Some(schema(s)) })
            .collect();
        Document {
            swagger: text(doc, "swagger"),
            info: Some(Info { title: text(&doc["info"], "title"), version: text(&doc["info"], "version") }),
            paths: Some(Paths { path: paths }),
            definitions: Some(Definitions { additional_properties: definitions }),
        }
        .encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_kind_has_a_schema_with_its_gvk() {
        let b = builtins();
        for t in Registry::default().all() {
            let (_, _, _, name) = b
                .kinds
                .iter()
                .find(|(g, v, k, _)| *g == t.group && *v == t.version && *k == t.kind)
                .unwrap_or_else(|| panic!("no schema for {}", t.qualified()));
            let gvks = &b.schemas[name]["x-kubernetes-group-version-kind"];
            assert!(gvks.as_array().unwrap().contains(&gvk_json(t)), "{name}: {gvks}");
        }
    }

    #[test]
    fn extensions_table_applies() {
        let s = &builtins().schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(s["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(s["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(s["x-kubernetes-list-type"], "map");
        let meta = &builtins().schemas[OBJECT_META]["properties"]["ownerReferences"];
        assert_eq!(meta["x-kubernetes-patch-merge-key"], "uid");
    }

    #[test]
    fn refs_point_at_components_and_resolve() {
        let b = builtins();
        let all: Vec<String> = b.kinds.iter().map(|k| k.3.clone()).collect();
        for n in closure(&b.schemas, &all) {
            assert!(b.schemas.contains_key(&n), "dangling ref {n}");
        }
    }

    #[test]
    fn crd_schema_names_reverse_the_group() {
        assert_eq!(
            crd_schema_name("cdi.kubevirt.io", "v1beta1", "VolumeImportSource"),
            "io.kubevirt.cdi.v1beta1.VolumeImportSource"
        );
    }
}
