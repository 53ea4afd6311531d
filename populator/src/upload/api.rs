//! The aggregated API `upload.cdi.kubevirt.io/v1beta1`, served over HTTPS by every
//! populator replica behind Service `cdi-api` (APIService `v1beta1.upload.cdi.kubevirt.io`).
//!
//! ```text
//!  client ──> kube-apiserver (authn, RBAC `create uploadtokenrequests`) ──front-proxy cert──>
//!    cdi-api ──> this listener: front-proxy check (api_auth) ──> PVC is an upload target?
//!                                                            ──> signed token (201)
//! ```
//!
//! Only `create` of `uploadtokenrequests` exists; nothing is stored. Discovery
//! (`/apis/upload.cdi.kubevirt.io/v1beta1`) is what the aggregator's availability check
//! reads. Errors are Kubernetes `Status` objects. Tokens are never logged.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use super::api_auth::{CONFIGMAP, CONFIGMAP_NAMESPACE, FrontProxy, FrontProxyConfig, FrontProxyVerifier};
use super::token::{Claims, SigningKey};
use crate::api::names::annotations::reserved::UPLOAD_TARGET;
use crate::api::uploadtoken::{
    API_VERSION, GROUP, KIND, PLURAL, UploadTokenRequest, UploadTokenRequestStatus, VERSION,
};
use crate::certs::{API_SECRET, ServingCert, TOKEN_KEY_SECRET};
use crate::webhook::tls::{CertStore, TlsListener};

/// The APIService the populator keeps the `caBundle` of.
pub const API_SERVICE: &str = "v1beta1.upload.cdi.kubevirt.io";

/// Where and as what the API is served.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The HTTPS listen address (Service `cdi-api`'s target port).
    pub listen: SocketAddr,
    /// The populator's namespace: the Service's and the Secrets'.
    pub namespace: String,
    /// The Service the aggregator calls (the serving certificate is issued for it).
    pub service: String,
    /// The APIService whose `caBundle` the leader keeps.
    pub api_service: String,
}

/// Why the API server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("cannot listen on {addr} for the upload API: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upload API TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the upload API server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("the watch of {0} ended")]
    WatchEnded(String),
}

/// Where the API looks claims up; a trait so tests can hold claims in memory.
pub trait ClaimLookup: Send + Sync + 'static {
    fn claim(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<PersistentVolumeClaim>, kube::Error>> + Send;
}

/// Claims read from the API server.
#[derive(Clone)]
pub struct KubeClaims(pub kube::Client);

impl std::fmt::Debug for KubeClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeClaims")
    }
}

impl ClaimLookup for KubeClaims {
    async fn claim(&self, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>, kube::Error> {
        Api::<PersistentVolumeClaim>::namespaced(self.0.clone(), namespace).get_opt(name).await
    }
}

/// The token signing key, once read from its Secret.
#[derive(Debug, Default)]
pub struct KeyStore(RwLock<Option<Arc<SigningKey>>>);

impl KeyStore {
    pub fn set(&self, key: SigningKey) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(key));
    }

    fn get(&self) -> Option<Arc<SigningKey>> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct Ctx<C> {
    pub claims: C,
    pub key: Arc<KeyStore>,
    pub front_proxy: Arc<FrontProxy>,
    /// Where the key comes from, for messages.
    pub key_secret: String,
}

/// What the TLS handshake established about the peer: the common name of its verified
/// client certificate, if it presented one.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub cert_cn: Option<String>,
    pub has_cert: bool,
}

impl Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let tls: &TlsStream<crate::webhook::tls::Buffered> = stream.io();
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        Peer { has_cert: leaf.is_some(), cert_cn: leaf.and_then(|c| super::api_auth::subject_common_name(c)) }
    }
}

/// The rustls settings: TLS 1.2+ with ring, HTTP/1.1 (what the aggregator speaks), the
/// serving certificate from `certs`, client certificates checked against the front-proxy CA.
pub fn server_config(
    certs: Arc<CertStore>,
    front_proxy: Arc<FrontProxy>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(FrontProxyVerifier(front_proxy)))
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The routes; serve with `into_make_service_with_connect_info::<Peer>()`.
pub fn router<C: ClaimLookup>(ctx: Arc<Ctx<C>>) -> axum::Router {
    let collection = format!("/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}");
    let api = axum::Router::new()
        .route("/apis", get(api_group_list))
        .route(&format!("/apis/{GROUP}"), get(api_group))
        .route(&format!("/apis/{GROUP}/{VERSION}"), get(api_resource_list))
        .route(&collection, post(create::<C>).fallback(method_not_allowed))
        .route(&format!("{collection}/{{name}}"), any(method_not_allowed))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), authenticate::<C>))
        .with_state(ctx);
    let ok = || async { "ok" };
    axum::Router::new().route("/healthz", get(ok)).route("/readyz", get(ok)).route("/livez", get(ok)).merge(api)
}

/// A Kubernetes `Status` (failure) response.
pub fn status(code: StatusCode, reason: &str, message: String, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    json_response(code, &body)
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(body).unwrap_or_default()).into_response()
}

fn unauthorized(why: &str) -> Response {
    status(StatusCode::UNAUTHORIZED, "Unauthorized", format!("Unauthorized: {why}"), None)
}

/// Lets through only requests the aggregator forwards: a verified front-proxy certificate
/// with an allowed name, and a user header.
async fn authenticate<C: ClaimLookup>(
    State(ctx): State<Arc<Ctx<C>>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    if !peer.has_cert {
        return unauthorized(
            "this API is served to the Kubernetes API server only (no front-proxy client certificate)",
        );
    }
    let Some(config) = ctx.front_proxy.config() else {
        return unauthorized("the front-proxy CA is not loaded yet");
    };
    if !config.allows(peer.cert_cn.as_deref()) {
        tracing::warn!(cn = ?peer.cert_cn, "upload API: client certificate name not in requestheader-allowed-names");
        return unauthorized("the client certificate's name is not an allowed front-proxy name");
    }
    let user = first_header(req.headers(), &config.username_headers);
    if user.is_none() {
        return unauthorized("no user in the request headers");
    }
    next.run(req).await
}

fn first_header(headers: &HeaderMap, names: &[String]) -> Option<String> {
    names
        .iter()
        .find_map(|n| headers.get(n.as_str()).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()))
        .map(str::to_string)
}

fn group_version() -> Value {
    json!({"groupVersion": API_VERSION, "version": VERSION})
}

fn group() -> Value {
    json!({"name": GROUP, "versions": [group_version()], "preferredVersion": group_version()})
}

async fn api_group_list() -> Response {
    json_response(StatusCode::OK, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group()]}))
}

async fn api_group() -> Response {
    let mut g = group();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    json_response(StatusCode::OK, &g)
}

/// What the aggregator's availability check and discovery read.
pub fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION,
        "resources": [{
            "name": PLURAL, "singularName": "uploadtokenrequest", "namespaced": true,
            "kind": KIND, "verbs": ["create"],
        }],
    })
}

async fn api_resource_list() -> Response {
    json_response(StatusCode::OK, &resource_list())
}

async fn method_not_allowed(method: axum::http::Method) -> Response {
    status(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!(
            "{method} is not supported: {PLURAL}.{GROUP} only supports create (POST to the namespace's collection)"
        ),
        Some(json!({"group": GROUP, "kind": PLURAL})),
    )
}

async fn not_found(uri: axum::http::Uri) -> Response {
    status(StatusCode::NOT_FOUND, "NotFound", format!("the server could not find the requested resource ({uri})"), None)
}

/// `POST .../namespaces/{ns}/uploadtokenrequests`: a token for the named upload claim.
async fn create<C: ClaimLookup>(
    State(ctx): State<Arc<Ctx<C>>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bad = |m: String| status(StatusCode::BAD_REQUEST, "BadRequest", m, None);
    let mut request: UploadTokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("the body is not an {KIND} (JSON): {e}")),
    };
    if request.kind.as_deref().is_some_and(|k| k != KIND)
        || request.api_version.as_deref().is_some_and(|v| v != API_VERSION)
    {
        return bad(format!(
            "the body is a {:?} of {:?}, not an {KIND} of {API_VERSION}",
            request.kind, request.api_version
        ));
    }
    if request.metadata.namespace.as_deref().is_some_and(|n| !n.is_empty() && n != namespace) {
        return bad("the namespace of the provided object does not match the namespace sent on the request".into());
    }
    let name = match (request.metadata.name.as_deref(), request.metadata.generate_name.as_deref()) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
        _ => {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("{KIND}.{GROUP} is invalid: metadata.name: Required value: name or generateName is required"),
                Some(json!({"group": GROUP, "kind": KIND,
                            "causes": [{"reason": "FieldValueRequired", "field": "metadata.name",
                                        "message": "Required value: name or generateName is required"}]})),
            );
        }
    };
    let pvc = request.spec.pvc_name.clone();
    if pvc.is_empty() {
        return bad(format!("{KIND} {namespace}/{name}: spec.pvcName is required (the claim to upload into)"));
    }
    match ctx.claims.claim(&namespace, &pvc).await {
        Ok(Some(claim)) => {
            let annotations = claim.metadata.annotations.unwrap_or_default();
            if !annotations.contains_key(UPLOAD_TARGET) {
                return bad(format!(
                    "PersistentVolumeClaim {namespace}/{pvc} is not an upload target (no {UPLOAD_TARGET} \
                     annotation): upload into a DataVolume with source.upload, a claim whose dataSourceRef \
                     names a VolumeUploadSource, or a claim annotated {UPLOAD_TARGET}"
                ));
            }
        }
        Ok(None) => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!(
                    "persistentvolumeclaims \"{pvc}\" not found in namespace {namespace}: create the claim (or a DataVolume with source.upload) first"
                ),
                Some(json!({"name": pvc, "kind": "persistentvolumeclaims"})),
            );
        }
        Err(e) => {
            tracing::warn!(%namespace, %pvc, error = %e, "upload API: cannot read the claim");
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("cannot read PersistentVolumeClaim {namespace}/{pvc}: {e}; try again"),
                None,
            );
        }
    }
    let Some(key) = ctx.key.get() else {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("the upload token key (Secret {}) is not loaded yet; try again shortly", ctx.key_secret),
            None,
        );
    };
    let now = jiff::Timestamp::now();
    let token = match key.sign(&Claims::upload(&namespace, &pvc, now.as_second())) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "upload API: cannot sign a token");
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("cannot sign the token: {e}"),
                None,
            );
        }
    };
    let user = headers.get("x-remote-user").and_then(|v| v.to_str().ok()).unwrap_or_default();
    tracing::info!(%namespace, %pvc, %user, "issued an upload token");
    request.api_version = Some(API_VERSION.into());
    request.kind = Some(KIND.into());
    request.metadata.name = Some(name);
    request.metadata.namespace = Some(namespace);
    request.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now.round(jiff::Unit::Second).unwrap_or(now)));
    request.status = Some(UploadTokenRequestStatus { token });
    json_response(StatusCode::CREATED, &serde_json::to_value(&request).unwrap_or_default())
}

/// Five characters as kube's generateName appends (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = [0u8; 5];
    // A failing system random source leaves zeros: still a valid name.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
}

/// Serves the API until it fails: follows the serving certificate, the token key and the
/// front-proxy settings, and listens once the serving certificate is there.
///
/// # Errors
/// The port cannot be bound, or the server fails.
pub async fn serve(client: kube::Client, cfg: ApiConfig) -> Result<(), ApiServerError> {
    let certs = Arc::new(CertStore::default());
    let key = Arc::new(KeyStore::default());
    let front_proxy = Arc::new(FrontProxy::default());
    let (loaded, mut is_loaded) = watch::channel(false);
    let ns = cfg.namespace.clone();
    let serving = {
        let certs = certs.clone();
        let mut current: Option<ServingCert> = None;
        follow(Api::<Secret>::namespaced(client.clone(), &ns), API_SECRET, move |secret: Secret| {
            match ServingCert::from_secret(&secret, &ns) {
                Ok(cert) if current.as_ref() != Some(&cert) => match certs.set(&cert) {
                    Ok(()) => {
                        tracing::info!(secret = API_SECRET, "upload API serving certificate loaded");
                        current = Some(cert);
                        loaded.send_replace(true);
                    }
                    Err(e) => tracing::error!(error = %e, secret = API_SECRET, "unusable upload API certificate"),
                },
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "the upload API certificate Secret is incomplete"),
            }
        })
    };
    let ns = cfg.namespace.clone();
    let signing = {
        let key = key.clone();
        let mut current: Option<Vec<u8>> = None;
        follow(Api::<Secret>::namespaced(client.clone(), &ns), TOKEN_KEY_SECRET, move |secret: Secret| {
            let der = match crate::certs::secret_key(&secret, "signing.key", &ns) {
                Ok(d) if current.as_deref() == Some(d) => return,
                Ok(d) => d.to_vec(),
                Err(e) => return tracing::error!(error = %e, "the upload token key Secret is incomplete"),
            };
            match SigningKey::from_pkcs8(&der) {
                Ok(k) => {
                    key.set(k);
                    current = Some(der);
                    tracing::info!(secret = TOKEN_KEY_SECRET, "upload token key loaded");
                }
                Err(e) => tracing::error!(error = %e, secret = TOKEN_KEY_SECRET, "unusable upload token key"),
            }
        })
    };
    let authentication = {
        let front_proxy = front_proxy.clone();
        follow(Api::<ConfigMap>::namespaced(client.clone(), CONFIGMAP_NAMESPACE), CONFIGMAP, move |cm: ConfigMap| {
            match FrontProxyConfig::from_configmap(&cm).and_then(|c| front_proxy.set(c)) {
                Ok(()) => tracing::info!(configmap = CONFIGMAP, "front-proxy client CA loaded"),
                Err(e) => tracing::error!(error = %e, "the upload API cannot authenticate the API server"),
            }
        })
    };
    let followers = async {
        tokio::select! {
            () = serving => ApiServerError::WatchEnded(format!("Secret {}/{API_SECRET}", cfg.namespace)),
            () = signing => ApiServerError::WatchEnded(format!("Secret {}/{TOKEN_KEY_SECRET}", cfg.namespace)),
            () = authentication => ApiServerError::WatchEnded(format!("ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP}")),
        }
    };
    tokio::pin!(followers);
    tokio::select! {
        e = &mut followers => return Err(e),
        _ = is_loaded.wait_for(|l| *l) => {}
    }
    let tcp = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ApiServerError::Bind { addr: cfg.listen, source })?;
    let addr = tcp.local_addr().map_err(|source| ApiServerError::Bind { addr: cfg.listen, source })?;
    let listener = TlsListener::new(tcp, server_config(certs, front_proxy.clone())?).map_err(ApiServerError::Serve)?;
    tracing::info!(%addr, group = API_VERSION, "upload API serving");
    let ctx = Ctx {
        claims: KubeClaims(client),
        key,
        front_proxy,
        key_secret: format!("{}/{TOKEN_KEY_SECRET}", cfg.namespace),
    };
    let app = router(Arc::new(ctx)).into_make_service_with_connect_info::<Peer>();
    tokio::select! {
        e = followers => Err(e),
        served = axum::serve(listener, app) => {
            served.map_err(ApiServerError::Serve)?;
            Err(ApiServerError::Serve(std::io::Error::other("the server returned")))
        }
    }
}

/// Calls `apply` with object `name` each time it is seen (created or changed); returns
/// only if the watch ends (errors are retried with backoff).
async fn follow<K>(api: Api<K>, name: &str, mut apply: impl FnMut(K))
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let objects = watcher(api, config).default_backoff().applied_objects();
    futures_util::pin_mut!(objects);
    while let Some(event) = objects.next().await {
        match event {
            Ok(o) => apply(o),
            Err(e) => tracing::warn!(error = %e, object = name, "upload API: watching"),
        }
    }
}

/// How often the leader checks the APIService again.
const RESYNC: Duration = Duration::from_secs(30);

/// What [`ensure_ca_bundle`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleOutcome {
    Unchanged,
    Patched,
    /// No such APIService (not installed from `deploy/`?).
    Missing,
    /// The APIService points at another Service: left alone.
    NotOurs,
}

/// The merge patch that sets `ca` as `caBundle` of `apiservice` if its `spec.service` is
/// `namespace/service` and its bundle differs: `Err(())` when it is not ours.
#[allow(clippy::result_unit_err)]
pub fn ca_bundle_patch(apiservice: &Value, ca: &[u8], namespace: &str, service: &str) -> Result<Option<Value>, ()> {
    use base64::Engine as _;
    let spec = &apiservice["spec"];
    if spec["service"]["namespace"] != namespace || spec["service"]["name"] != service {
        return Err(());
    }
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca);
    if spec["caBundle"] == bundle.as_str() {
        return Ok(None);
    }
    Ok(Some(json!({"spec": {"caBundle": bundle}})))
}

fn api_service_resource() -> ApiResource {
    ApiResource {
        group: "apiregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiregistration.k8s.io/v1".into(),
        kind: "APIService".into(),
        plural: "apiservices".into(),
    }
}

/// Sets the CA on our APIService where it is missing or stale.
///
/// # Errors
/// The API refused the read or the patch.
pub async fn ensure_ca_bundle(client: kube::Client, cfg: &ApiConfig, ca: &[u8]) -> Result<BundleOutcome, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client, &api_service_resource());
    let Some(obj) = api.get_opt(&cfg.api_service).await? else { return Ok(BundleOutcome::Missing) };
    let value = serde_json::to_value(&obj).map_err(kube::Error::SerdeError)?;
    match ca_bundle_patch(&value, ca, &cfg.namespace, &cfg.service) {
        Err(()) => Ok(BundleOutcome::NotOurs),
        Ok(None) => Ok(BundleOutcome::Unchanged),
        Ok(Some(patch)) => {
            api.patch(&cfg.api_service, &PatchParams::default(), &Patch::Merge(patch)).await?;
            Ok(BundleOutcome::Patched)
        }
    }
}

/// Keeps the CA in place for as long as it runs (the leader runs it).
pub async fn keep_ca_bundle(client: kube::Client, cfg: ApiConfig, ca: Vec<u8>) {
    let mut last = None;
    loop {
        match ensure_ca_bundle(client.clone(), &cfg, &ca).await {
            Ok(outcome) if last != Some(outcome) || outcome == BundleOutcome::Patched => {
                match outcome {
                    BundleOutcome::Patched => {
                        tracing::info!(apiservice = %cfg.api_service, "set the APIService caBundle")
                    }
                    BundleOutcome::Missing => tracing::warn!(
                        apiservice = %cfg.api_service,
                        "no APIService of that name: UploadTokenRequest is not served (install from deploy/)"
                    ),
                    BundleOutcome::NotOurs => tracing::warn!(
                        apiservice = %cfg.api_service,
                        service = %format!("{}/{}", cfg.namespace, cfg.service),
                        "the APIService does not point at our Service: its caBundle is left alone"
                    ),
                    BundleOutcome::Unchanged => {}
                }
                last = Some(outcome);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(apiservice = %cfg.api_service, error = %e, "cannot set the APIService caBundle"),
        }
        tokio::time::sleep(RESYNC).await;
    }
}
