//! Kubernetes' protobuf wire form (`application/vnd.kubernetes.protobuf`) for the built-in
//! kinds: request bodies are turned into the JSON the store holds, and responses are turned
//! back into protobuf when the client's `Accept` prefers it.
//!
//! The mapping is generic: the wire schema of Kubernetes 1.33 (`e2e/proto/k8s-wire.txt`, every
//! message's field numbers, labels, types and names, compiled into a descriptor set by
//! `build.rs`), walked with prost-reflect. What protobuf alone does not say about the JSON
//! form comes from `e2e/proto/k8s-fields.txt`, from the API's Go types:
//! JSON names that differ from proto names, inlined structs, and which zero values are
//! meaningful (Go pointers and fields without `omitempty`). A handful of well-known types
//! (Quantity, Time, MicroTime, IntOrString, FieldsV1, RawExtension, the CRD schema's JSON
//! unions, the review APIs' ExtraValue) have their own JSON forms.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use base64::Engine as _;
use prost::Message as _;
use prost_reflect::ReflectMessage as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value as PValue,
};
use serde_json::{Map, Number, Value, json};

use super::error::ApiError;
use super::registry::ResourceType;

/// The media type of Kubernetes' protobuf encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// Every protobuf body starts with these four bytes, then a `runtime.Unknown`.
const MAGIC: &[u8; 4] = b"k8s\0";

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";
const APIEXT: &str = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1";

/// How one field's JSON form departs from the plain mapping.
#[derive(Debug, Default, Clone)]
struct FieldInfo {
    json: Option<String>,
    inline: bool,
    /// A zero value on the wire is meaningful (a Go pointer, or no `omitempty`).
    keep_zero: bool,
    ptr: bool,
}

struct Schema {
    pool: DescriptorPool,
    fields: HashMap<(String, String), FieldInfo>,
}

static SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/k8s.fds"))[..])
        .map_err(|e| format!("the vendored Kubernetes descriptors do not load: {e}"))?;
    let mut fields = HashMap::new();
    for line in include_str!("../../proto/k8s-fields.txt").lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = line.split(' ').collect();
        let [message, field, json, flags] = cols[..] else { continue };
        let flags: Vec<&str> = flags.split(',').collect();
        let info = FieldInfo {
            json: (json != "-" && json != field).then(|| json.to_string()),
            inline: flags.contains(&"inline"),
            keep_zero: flags.contains(&"ptr") || flags.contains(&"always"),
            ptr: flags.contains(&"ptr"),
        };
        fields.insert((message.to_string(), field.to_string()), info);
    }
    Ok(Schema { pool, fields })
});

fn schema() -> Result<&'static Schema, ApiError> {
    SCHEMA.as_ref().map_err(|e| ApiError::internal(e.clone()))
}

impl Schema {
    fn info(&self, message: &MessageDescriptor, field: &FieldDescriptor) -> FieldInfo {
        self.fields.get(&(message.full_name().to_string(), field.name().to_string())).cloned().unwrap_or_default()
    }

    /// The message of a kind at an apiVersion: the group's package, else meta/v1 (Status,
    /// DeleteOptions and the other kinds every group version serves).
    fn message(&self, api_version: &str, kind: &str) -> Option<MessageDescriptor> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let package = match group {
            "" => "k8s.io.api.core",
            "apps" => "k8s.io.api.apps",
            "storage.k8s.io" => "k8s.io.api.storage",
            "coordination.k8s.io" => "k8s.io.api.coordination",
            "rbac.authorization.k8s.io" => "k8s.io.api.rbac",
            "events.k8s.io" => "k8s.io.api.events",
            "authentication.k8s.io" => "k8s.io.api.authentication",
            "authorization.k8s.io" => "k8s.io.api.authorization",
            "apiextensions.k8s.io" => "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions",
            "meta.k8s.io" => "k8s.io.apimachinery.pkg.apis.meta",
            _ => return None,
        };
        self.pool
            .get_message_by_name(&format!("{package}.{version}.{kind}"))
            .or_else(|| self.pool.get_message_by_name(&format!("{META}.{kind}")))
    }

    fn unknown(&self) -> Result<MessageDescriptor, ApiError> {
        self.pool.get_message_by_name(UNKNOWN).ok_or_else(|| ApiError::internal("no runtime.Unknown descriptor"))
    }
}

/// Whether objects of this resource have a protobuf form (built-in kinds; custom resources
/// are JSON only, as in Kubernetes).
pub fn supports(rt: &ResourceType) -> bool {
    !rt.custom && schema().is_ok_and(|s| s.message(&rt.api_version(), &rt.kind).is_some())
}

pub fn is_protobuf(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case(MEDIA_TYPE))
}

/// What a response is encoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Json,
    Protobuf,
}

/// Picks the response encoding from `Accept` the way Kubernetes does: clauses by quality,
/// then the more specific first, and the first the server can produce wins. `protobuf_ok`
/// says whether this response has a protobuf form. An `Accept` that names protobuf but
/// nothing this server can produce gets 406; other headers keep the JSON answer.
pub fn negotiate(accept: &str, protobuf_ok: bool) -> Result<Output, ApiError> {
    struct Clause<'a> {
        media: String,
        params: Vec<&'a str>,
        q: f32,
    }
    let mut clauses: Vec<Clause> = accept
        .split(',')
        .filter(|c| !c.trim().is_empty())
        .map(|c| {
            let mut parts = c.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let mut params = Vec::new();
            let mut q = 1.0;
            for p in parts {
                match p.strip_prefix("q=") {
                    Some(v) => q = v.parse().unwrap_or(1.0),
                    None => params.push(p),
                }
            }
            Clause { media, params, q }
        })
        .filter(|c| c.q > 0.0)
        .collect();
    if clauses.is_empty() {
        return Ok(Output::Json);
    }
    let specificity = |m: &str| match m {
        "*/*" => 0,
        m if m.ends_with("/*") => 1,
        _ => 2,
    };
    // Stable: equal clauses keep the client's order.
    clauses.sort_by(|a, b| b.q.total_cmp(&a.q).then(specificity(&b.media).cmp(&specificity(&a.media))));
    let mut named_protobuf = false;
    for c in &clauses {
        match c.media.as_str() {
            MEDIA_TYPE => {
                named_protobuf = true;
                // Tables and partial metadata are served as JSON only here.
                if protobuf_ok && !c.params.iter().any(|p| p.starts_with("as=")) {
                    return Ok(Output::Protobuf);
                }
            }
            "application/json" | "application/yaml" | "application/*" | "*/*" => return Ok(Output::Json),
            _ => {}
        }
    }
    if named_protobuf {
        let accepted = if protobuf_ok { format!("application/json, {MEDIA_TYPE}") } else { "application/json".into() };
        return Err(ApiError::not_acceptable(format!("only the following media types are accepted: {accepted}")));
    }
    Ok(Output::Json)
}

/// A protobuf request body as the JSON the rest of the server reads. `expect` is the
/// apiVersion and kind the body is for, used when the body's own type meta is empty.
pub fn decode_request(body: &[u8], rt: Option<&ResourceType>, expect: (&str, &str)) -> Result<Bytes, ApiError> {
    let unsupported = || {
        ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json{}",
            if rt.is_some_and(supports) { format!(", {MEDIA_TYPE}") } else { String::new() }
        ))
    };
    if !rt.is_some_and(supports) {
        return Err(unsupported());
    }
    let v = decode(body, expect)?;
    serde_json::to_vec(&v).map(Bytes::from).map_err(|e| ApiError::internal(e.to_string()))
}

/// Decodes `k8s\0` + `runtime.Unknown` into the object's JSON form.
pub fn decode(body: &[u8], expect: (&str, &str)) -> Result<Value, ApiError> {
    let s = schema()?;
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return Err(ApiError::bad_request(format!(
            "the protobuf body of {} {} does not start with Kubernetes' magic prefix \"k8s\\x00\"",
            expect.0, expect.1
        )));
    };
    let unknown = DynamicMessage::decode(s.unknown()?, rest).map_err(|e| {
        ApiError::bad_request(format!("the protobuf body of {} {} is not a runtime.Unknown: {e}", expect.0, expect.1))
    })?;
    let str_field = |m: &DynamicMessage, f: &str| {
        m.get_field_by_name(f).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    };
    let type_meta = unknown.get_field_by_name("typeMeta");
    let type_meta = type_meta.as_deref().and_then(PValue::as_message);
    let mut api_version = type_meta.map(|t| str_field(t, "apiVersion")).unwrap_or_default();
    let mut kind = type_meta.map(|t| str_field(t, "kind")).unwrap_or_default();
    if kind.is_empty() {
        kind = expect.1.to_string();
    }
    if api_version.is_empty() {
        api_version = expect.0.to_string();
    }
    let encoding = str_field(&unknown, "contentEncoding");
    if !encoding.is_empty() {
        return Err(ApiError::unsupported_media_type(format!(
            "the protobuf body of {api_version} {kind} has contentEncoding {encoding:?}, which is not supported"
        )));
    }
    let content_type = str_field(&unknown, "contentType");
    let raw = unknown.get_field_by_name("raw").and_then(|v| v.as_bytes().cloned()).unwrap_or_default();
    if !content_type.is_empty() && !is_protobuf(&content_type) {
        return Err(ApiError::unsupported_media_type(format!(
            "the protobuf body of {api_version} {kind} wraps content of type {content_type:?}, which is not supported"
        )));
    }
    let Some(desc) = s.message(&api_version, &kind) else {
        return Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - no protobuf schema for {api_version} {kind}; \
             accepted media types include: application/json"
        )));
    };
    let msg = DynamicMessage::decode(desc.clone(), raw.as_ref()).map_err(|e| {
        ApiError::bad_request(format!(
            "the protobuf body of {api_version} {kind} does not decode as {}: {e}",
            desc.name()
        ))
    })?;
    let object = to_json(s, &msg)
        .map_err(|e| ApiError::bad_request(format!("the protobuf body of {api_version} {kind} is invalid: {e}")))?;
    let mut out = Map::new();
    out.insert("kind".into(), json!(kind));
    out.insert("apiVersion".into(), json!(api_version));
    if let Value::Object(o) = object {
        out.extend(o);
    }
    Ok(Value::Object(out))
}

/// A protobuf body posted where one `apiVersion` and `kind` is expected (the review APIs
/// and TokenRequest, which the auth middleware answers), as JSON. A body whose own type
/// meta names another type is refused, as Kubernetes' create handler does.
pub fn decode_as(body: &[u8], api_version: &str, kind: &str) -> Result<Value, ApiError> {
    let v = decode(body, (api_version, kind))?;
    let (got_version, got_kind) =
        (v["apiVersion"].as_str().unwrap_or_default(), v["kind"].as_str().unwrap_or_default());
    if got_version != api_version {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({got_version}) does not match the expected API version ({api_version})"
        )));
    }
    if got_kind != kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({got_kind}) does not match the expected kind ({kind})"
        )));
    }
    Ok(v)
}

/// Encodes an object (with `apiVersion` and `kind`) as `k8s\0` + `runtime.Unknown`.
pub fn encode(v: &Value) -> Result<Vec<u8>, String> {
    let s = schema().map_err(|e| e.message)?;
    let api_version = v["apiVersion"].as_str().unwrap_or_default();
    let kind = v["kind"].as_str().unwrap_or_default();
    let desc = s.message(api_version, kind).ok_or_else(|| format!("no protobuf schema for {api_version} {kind}"))?;
    let raw = from_json(s, &desc, v).map_err(|e| format!("{api_version} {kind}: {e}"))?.encode_to_vec();
    let unknown_desc = s.unknown().map_err(|e| e.message)?;
    let mut unknown = DynamicMessage::new(unknown_desc.clone());
    let tm_field = unknown_desc.get_field_by_name("typeMeta").ok_or("runtime.Unknown has no typeMeta")?;
    let Kind::Message(tm_desc) = tm_field.kind() else {
        return Err("runtime.Unknown.typeMeta is not a message".into());
    };
    let mut tm = DynamicMessage::new(tm_desc);
    tm.set_field_by_name("apiVersion", PValue::String(api_version.into()));
    tm.set_field_by_name("kind", PValue::String(kind.into()));
    unknown.set_field(&tm_field, PValue::Message(tm));
    unknown.set_field_by_name("raw", PValue::Bytes(raw.into()));
    // Go always writes these two, empty.
    unknown.set_field_by_name("contentEncoding", PValue::String(String::new()));
    unknown.set_field_by_name("contentType", PValue::String(String::new()));
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    Ok(out)
}

/// Re-encodes a JSON response of the server (object, list or Status) as protobuf. Other
/// responses (plain text, streams) pass unchanged.
pub async fn to_protobuf_response(resp: Response) -> Response {
    let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|c| c.as_bytes() == b"application/json");
    if !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return internal(&format!("reading the response to encode it: {e}")),
    };
    let encoded = serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string()).and_then(|v| encode(&v));
    match encoded {
        Ok(pb) => {
            parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(pb))
        }
        Err(e) => internal(&format!("the response has no protobuf form: {e}")),
    }
}

fn internal(message: &str) -> Response {
    let e = ApiError::internal(message);
    let body = serde_json::to_vec(&e.status_body()).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn is_extra_value(full_name: &str) -> bool {
    matches!(full_name, "k8s.io.api.authentication.v1.ExtraValue" | "k8s.io.api.authorization.v1.ExtraValue")
}

// ---- protobuf → JSON ----

fn to_json(s: &Schema, msg: &DynamicMessage) -> Result<Value, String> {
    let desc = msg.descriptor();
    let field = |name: &str| msg.get_field_by_name(name).map(|v| v.into_owned());
    match desc.full_name() {
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            return Ok(json!(field("string").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()));
        }
        n if n == format!("{META}.Time") || n == format!("{META}.MicroTime") => {
            let secs = field("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
            let nanos = field("nanos").and_then(|v| v.as_i32()).unwrap_or(0);
            let t = jiff::Timestamp::new(secs, nanos).map_err(|e| format!("{n}: {e}"))?;
            let f = if n.ends_with("MicroTime") { "%Y-%m-%dT%H:%M:%S%.6fZ" } else { "%Y-%m-%dT%H:%M:%SZ" };
            return Ok(json!(t.strftime(f).to_string()));
        }
        // `ExtraValue` is a Go `[]string`: a list in JSON, a message around it on the wire.
        n if is_extra_value(n) => {
            let items = field("items");
            return list_to_json(s, items.as_ref());
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            return Ok(match field("type").and_then(|v| v.as_i64()).unwrap_or(0) {
                0 => json!(field("intVal").and_then(|v| v.as_i32()).unwrap_or(0)),
                _ => json!(field("strVal").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
            });
        }
        n if n == format!("{META}.FieldsV1")
            || n == "k8s.io.apimachinery.pkg.runtime.RawExtension"
            || n == format!("{APIEXT}.JSON") =>
        {
            let raw_name = if n.ends_with("FieldsV1") { "Raw" } else { "raw" };
            let raw = field(raw_name).and_then(|v| v.as_bytes().cloned()).unwrap_or_default();
            if raw.is_empty() {
                return Ok(Value::Null);
            }
            if let Some(rest) = raw.strip_prefix(MAGIC) {
                let mut with_magic = MAGIC.to_vec();
                with_magic.extend_from_slice(rest);
                return decode(&with_magic, ("", "")).map_err(|e| e.message);
            }
            return serde_json::from_slice(&raw).map_err(|e| format!("{n} does not hold JSON: {e}"));
        }
        n if n == format!("{APIEXT}.JSONSchemaPropsOrArray") => {
            return schema_or(s, msg, |m| {
                let items = m.get_field_by_name("jSONSchemas").map(|v| v.into_owned());
                list_to_json(s, items.as_ref())
            });
        }
        n if n == format!("{APIEXT}.JSONSchemaPropsOrBool") => {
            return schema_or(s, msg, |m| {
                Ok(json!(m.get_field_by_name("allows").and_then(|v| v.as_bool()).unwrap_or(false)))
            });
        }
        n if n == format!("{APIEXT}.JSONSchemaPropsOrStringArray") => {
            return schema_or(s, msg, |m| {
                let items = m.get_field_by_name("property").map(|v| v.into_owned());
                list_to_json(s, items.as_ref())
            });
        }
        _ => {}
    }
    let mut out = Map::new();
    for f in desc.fields() {
        if !msg.has_field(&f) {
            continue;
        }
        let info = s.info(&desc, &f);
        let value = msg.get_field(&f);
        if info.inline {
            if let PValue::Message(m) = value.as_ref()
                && let Value::Object(o) = to_json(s, m)?
            {
                out.extend(o);
            }
            continue;
        }
        if let Some(v) = value_to_json(s, &value, &info)? {
            out.insert(info.json.clone().unwrap_or_else(|| f.name().to_string()), v);
        }
    }
    Ok(Value::Object(out))
}

/// The CRD schema unions: a schema when one is set, else the other arm.
fn schema_or(
    s: &Schema,
    msg: &DynamicMessage,
    other: impl Fn(&DynamicMessage) -> Result<Value, String>,
) -> Result<Value, String> {
    match msg.get_field_by_name("schema").as_deref() {
        Some(PValue::Message(m)) if msg.has_field_by_name("schema") => to_json(s, m),
        _ => other(msg),
    }
}

fn list_to_json(s: &Schema, v: Option<&PValue>) -> Result<Value, String> {
    let items = v.and_then(PValue::as_list).unwrap_or_default();
    Ok(Value::Array(items.iter().map(|i| scalar_to_json(s, i)).collect::<Result<_, _>>()?))
}

fn value_to_json(s: &Schema, v: &PValue, info: &FieldInfo) -> Result<Option<Value>, String> {
    Ok(match v {
        PValue::List(items) if items.is_empty() => None,
        PValue::List(items) => {
            Some(Value::Array(items.iter().map(|i| scalar_to_json(s, i)).collect::<Result<_, _>>()?))
        }
        PValue::Map(m) if m.is_empty() => None,
        PValue::Map(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(i) => i.to_string(),
                    MapKey::I64(i) => i.to_string(),
                    MapKey::U32(i) => i.to_string(),
                    MapKey::U64(i) => i.to_string(),
                };
                out.insert(key, scalar_to_json(s, v)?);
            }
            Some(Value::Object(out))
        }
        PValue::Message(m) => {
            let j = to_json(s, m)?;
            // A value (non-pointer) metav1.Time is always on the wire; zero is Go's null.
            let zero_time = matches!(m.descriptor().name(), "Time" | "MicroTime")
                && m.get_field_by_name("seconds").and_then(|v| v.as_i64()) == Some(0)
                && m.get_field_by_name("nanos").and_then(|v| v.as_i32()) == Some(0);
            if (zero_time && !info.ptr) || j.is_null() { None } else { Some(j) }
        }
        scalar => {
            let zero = match scalar {
                PValue::Bool(b) => !b,
                PValue::I32(i) => *i == 0,
                PValue::I64(i) => *i == 0,
                PValue::U32(i) => *i == 0,
                PValue::U64(i) => *i == 0,
                PValue::F32(x) => *x == 0.0,
                PValue::F64(x) => *x == 0.0,
                PValue::String(s) => s.is_empty(),
                PValue::Bytes(b) => b.is_empty(),
                PValue::EnumNumber(n) => *n == 0,
                _ => false,
            };
            if zero && !info.keep_zero { None } else { Some(scalar_to_json(s, scalar)?) }
        }
    })
}

fn scalar_to_json(s: &Schema, v: &PValue) -> Result<Value, String> {
    Ok(match v {
        PValue::Bool(b) => json!(b),
        PValue::I32(i) => json!(i),
        PValue::I64(i) => json!(i),
        PValue::U32(i) => json!(i),
        PValue::U64(i) => json!(i),
        PValue::F32(x) => Number::from_f64(f64::from(*x)).map(Value::Number).unwrap_or(Value::Null),
        PValue::F64(x) => Number::from_f64(*x).map(Value::Number).unwrap_or(Value::Null),
        PValue::String(s) => json!(s),
        // Go's []byte is base64 in JSON (Secret data, caBundle).
        PValue::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        PValue::EnumNumber(n) => json!(n),
        PValue::Message(m) => to_json(s, m)?,
        PValue::List(_) | PValue::Map(_) => return Err("a list or map nested in a list".into()),
    })
}

// ---- JSON → protobuf ----

fn from_json(s: &Schema, desc: &MessageDescriptor, v: &Value) -> Result<DynamicMessage, String> {
    let mut msg = DynamicMessage::new(desc.clone());
    let full = desc.full_name();
    let set = |msg: &mut DynamicMessage, name: &str, value: PValue| {
        msg.set_field_by_name(name, value);
    };
    match full {
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            let q = match v {
                Value::String(q) => q.clone(),
                Value::Number(n) => n.to_string(),
                other => return Err(format!("a quantity must be a string or a number, not {other}")),
            };
            set(&mut msg, "string", PValue::String(q));
            return Ok(msg);
        }
        n if n == format!("{META}.Time") || n == format!("{META}.MicroTime") => {
            let text = v.as_str().ok_or_else(|| format!("a time must be an RFC 3339 string, not {v}"))?;
            let t: jiff::Timestamp = text.parse().map_err(|e| format!("time {text:?}: {e}"))?;
            set(&mut msg, "seconds", PValue::I64(t.as_second()));
            set(&mut msg, "nanos", PValue::I32(t.subsec_nanosecond()));
            return Ok(msg);
        }
        n if is_extra_value(n) => {
            let f = desc.get_field_by_name("items").ok_or_else(|| format!("{n} has no items"))?;
            let Value::Array(items) = v else { return Err(format!("an extra value must be a list, not {v}")) };
            let items = items.iter().map(|i| json_to_scalar(s, &f.kind(), i)).collect::<Result<_, _>>()?;
            msg.set_field(&f, PValue::List(items));
            return Ok(msg);
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            match v {
                Value::Number(n) => {
                    let i =
                        n.as_i64().and_then(|i| i32::try_from(i).ok()).ok_or_else(|| format!("{n} is not an int32"))?;
                    set(&mut msg, "type", PValue::I64(0));
                    set(&mut msg, "intVal", PValue::I32(i));
                }
                Value::String(t) => {
                    set(&mut msg, "type", PValue::I64(1));
                    set(&mut msg, "strVal", PValue::String(t.clone()));
                }
                other => return Err(format!("an int-or-string must be a number or a string, not {other}")),
            }
            return Ok(msg);
        }
        n if n == format!("{META}.FieldsV1")
            || n == "k8s.io.apimachinery.pkg.runtime.RawExtension"
            || n == format!("{APIEXT}.JSON") =>
        {
            let raw_name = if n.ends_with("FieldsV1") { "Raw" } else { "raw" };
            let raw = serde_json::to_vec(v).map_err(|e| e.to_string())?;
            set(&mut msg, raw_name, PValue::Bytes(raw.into()));
            return Ok(msg);
        }
        n if n.starts_with(&format!("{APIEXT}.JSONSchemaPropsOr")) => {
            let schema_field = desc.get_field_by_name("schema").ok_or("no schema field")?;
            match v {
                Value::Object(_) => {
                    let Kind::Message(sd) = schema_field.kind() else { return Err("schema is not a message".into()) };
                    msg.set_field(&schema_field, PValue::Message(from_json(s, &sd, v)?));
                }
                Value::Bool(b) if n.ends_with("OrBool") => set(&mut msg, "allows", PValue::Bool(*b)),
                Value::Array(items) => {
                    let list_field = if n.ends_with("OrArray") { "jSONSchemas" } else { "property" };
                    let f = desc.get_field_by_name(list_field).ok_or_else(|| format!("{n} has no {list_field}"))?;
                    let items = items.iter().map(|i| json_to_scalar(s, &f.kind(), i)).collect::<Result<_, _>>()?;
                    msg.set_field(&f, PValue::List(items));
                }
                other => return Err(format!("{n}: unexpected {other}")),
            }
            return Ok(msg);
        }
        _ => {}
    }
    let Value::Object(obj) = v else { return Err(format!("{} must be an object, not {v}", desc.name())) };
    for f in desc.fields() {
        let info = s.info(desc, &f);
        if info.inline {
            let Kind::Message(sub) = f.kind() else { continue };
            msg.set_field(&f, PValue::Message(from_json(s, &sub, v)?));
            continue;
        }
        let name = info.json.clone().unwrap_or_else(|| f.name().to_string());
        let Some(jv) = obj.get(&name).filter(|j| !j.is_null()) else { continue };
        let pv = if f.is_map() {
            let Kind::Message(entry) = f.kind() else { continue };
            let vf = entry.map_entry_value_field();
            let Value::Object(m) = jv else { return Err(format!("{name} must be an object")) };
            let mut out = HashMap::new();
            for (k, item) in m {
                out.insert(
                    MapKey::String(k.clone()),
                    json_to_scalar(s, &vf.kind(), item).map_err(|e| format!("{name}.{k}: {e}"))?,
                );
            }
            PValue::Map(out)
        } else if f.is_list() {
            let Value::Array(items) = jv else { return Err(format!("{name} must be a list")) };
            let items = items
                .iter()
                .enumerate()
                .map(|(i, item)| json_to_scalar(s, &f.kind(), item).map_err(|e| format!("{name}[{i}]: {e}")))
                .collect::<Result<_, _>>()?;
            PValue::List(items)
        } else {
            json_to_scalar(s, &f.kind(), jv).map_err(|e| format!("{name}: {e}"))?
        };
        msg.set_field(&f, pv);
    }
    Ok(msg)
}

fn json_to_scalar(s: &Schema, kind: &Kind, v: &Value) -> Result<PValue, String> {
    let int = |v: &Value| v.as_i64().ok_or_else(|| format!("{v} is not an integer"));
    Ok(match kind {
        Kind::Message(d) => PValue::Message(from_json(s, d, v)?),
        Kind::String => PValue::String(v.as_str().ok_or_else(|| format!("{v} is not a string"))?.to_string()),
        Kind::Bool => PValue::Bool(v.as_bool().ok_or_else(|| format!("{v} is not a boolean"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            PValue::I32(i32::try_from(int(v)?).map_err(|_| format!("{v} is out of range for int32"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => PValue::I64(int(v)?),
        Kind::Uint32 | Kind::Fixed32 => {
            PValue::U32(u32::try_from(int(v)?).map_err(|_| format!("{v} is out of range for uint32"))?)
        }
        Kind::Uint64 | Kind::Fixed64 => {
            PValue::U64(v.as_u64().ok_or_else(|| format!("{v} is not an unsigned integer"))?)
        }
        Kind::Double => PValue::F64(v.as_f64().ok_or_else(|| format!("{v} is not a number"))?),
        Kind::Float => PValue::F32(v.as_f64().ok_or_else(|| format!("{v} is not a number"))? as f32),
        Kind::Bytes => {
            let text = v.as_str().ok_or_else(|| format!("{v} is not a base64 string"))?;
            let b = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("not base64: {e}"))?;
            PValue::Bytes(b.into())
        }
        Kind::Enum(_) => PValue::EnumNumber(int(v)? as i32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_kubernetes() {
        let p = |a: &str| negotiate(a, true).unwrap();
        assert_eq!(p(""), Output::Json);
        assert_eq!(p("application/json"), Output::Json);
        assert_eq!(p("application/vnd.kubernetes.protobuf, */*"), Output::Protobuf);
        assert_eq!(p("application/vnd.kubernetes.protobuf,application/json"), Output::Protobuf);
        assert_eq!(p("application/json, application/vnd.kubernetes.protobuf"), Output::Json);
        assert_eq!(p("*/*, application/vnd.kubernetes.protobuf"), Output::Protobuf);
        assert_eq!(p("application/vnd.kubernetes.protobuf;q=0.5, application/json"), Output::Json);
        assert_eq!(
            p("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io, application/json"),
            Output::Json
        );
        assert_eq!(negotiate("application/vnd.kubernetes.protobuf, */*", false).unwrap(), Output::Json);
        assert_eq!(negotiate("application/vnd.kubernetes.protobuf", false).unwrap_err().code, 406);
    }

    #[test]
    fn round_trip_keeps_json_forms() {
        let pod = json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "p", "namespace": "default", "creationTimestamp": "2024-05-06T07:08:09Z",
                          "labels": {"a": "b"}, "managedFields": [{"manager": "m", "operation": "Update",
                          "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}, "time": "2024-05-06T07:08:09Z"}]},
            "spec": {
                "containers": [{"name": "c", "image": "busybox",
                    "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}},
                    "ports": [{"containerPort": 80}],
                    "livenessProbe": {"httpGet": {"port": "http", "path": "/"}}}],
                "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "pvc"}}],
                "automountServiceAccountToken": false,
            },
        });
        let pb = encode(&pod).unwrap();
        assert!(pb.starts_with(MAGIC));
        let back = decode(&pb, ("v1", "Pod")).unwrap();
        assert_eq!(back, pod, "{}", serde_json::to_string_pretty(&back).unwrap());
    }

    #[test]
    fn secret_bytes_are_base64_and_empty_pointer_strings_survive() {
        let secret = json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s"}, "data": {"k": "dg=="}, "type": "Opaque"});
        assert_eq!(decode(&encode(&secret).unwrap(), ("v1", "Secret")).unwrap(), secret);
        let pvc = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1", "metadata": {"name": "c"},
            "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        assert_eq!(decode(&encode(&pvc).unwrap(), ("v1", "PersistentVolumeClaim")).unwrap(), pvc);
    }

    #[test]
    fn review_and_token_request_bodies_decode_to_their_json() {
        let sar = json!({
            "kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {},
            "spec": {
                "resourceAttributes": {"namespace": "ns", "verb": "get", "group": "apps", "version": "v1",
                                       "resource": "deployments", "subresource": "scale", "name": "d"},
                "user": "alice", "groups": ["dev", "system:authenticated"], "uid": "u-1",
                "extra": {"scopes": ["a", "b"]},
            },
        });
        let pb = encode(&sar).unwrap();
        assert!(pb.starts_with(MAGIC));
        let back = decode_as(&pb, "authorization.k8s.io/v1", "SubjectAccessReview").unwrap();
        assert_eq!(back, sar, "{}", serde_json::to_string_pretty(&back).unwrap());

        // expirationSeconds is a pointer; boundObjectRef's uid is `uID` on the wire.
        let tr = json!({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {},
            "spec": {"audiences": ["api", "vault"], "expirationSeconds": 3600,
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u-2"}},
        });
        let back = decode_as(&encode(&tr).unwrap(), "authentication.k8s.io/v1", "TokenRequest").unwrap();
        assert_eq!(back, tr, "{}", serde_json::to_string_pretty(&back).unwrap());
    }

    #[test]
    fn a_body_of_another_kind_is_refused_where_a_review_is_expected() {
        let cm = encode(&json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c"}})).unwrap();
        let e = decode_as(&cm, "authorization.k8s.io/v1", "SubjectAccessReview").unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("API version in the data (v1)"), "{}", e.message);
        let ssar = encode(&json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                                  "spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}}}))
        .unwrap();
        let e = decode_as(&ssar, "authorization.k8s.io/v1", "SubjectAccessReview").unwrap_err();
        assert!(e.message.contains("kind in the data (SelfSubjectAccessReview)"), "{}", e.message);
    }

    #[test]
    fn garbage_is_a_bad_request() {
        let e = decode(b"k8s\0\xff\xff\xff", ("v1", "ConfigMap")).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("v1 ConfigMap"), "{}", e.message);
        assert_eq!(decode(b"{}", ("v1", "ConfigMap")).unwrap_err().code, 400);
    }
}
