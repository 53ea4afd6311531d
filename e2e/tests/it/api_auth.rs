//! HTTPS, authentication, RBAC and the review APIs, through real kubectl, kube-rs and the
//! Python `kubernetes` client.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use serde_json::json;

use crate::common::{TestCluster, json_of, within};

fn api_code(e: &kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("not an API error: {other:?}"),
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// A kubeconfig for this cluster with `token` as its credential (none: anonymous), trusting
/// the cluster's CA or (`trust_ca` false) nothing but the system's roots.
fn kubeconfig_yaml(tc: &TestCluster, token: Option<&str>, trust_ca: bool) -> String {
    let cluster = tc.cluster();
    let ca = if trust_ca {
        use base64::Engine as _;
        format!(
            "\n    certificate-authority-data: {}",
            base64::engine::general_purpose::STANDARD.encode(cluster.ca_pem())
        )
    } else {
        String::new()
    };
    let user = match token {
        Some(t) => format!("\n    token: {t}"),
        None => " {}".into(),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}{ca}\ncontexts:\n- name: c\n  \
         context:\n    cluster: c\n    user: u\n    namespace: default\ncurrent-context: c\nusers:\n- name: u\n  user:{user}\n",
        cluster.url()
    )
}

fn write_kubeconfig(tc: &TestCluster, name: &str, token: Option<&str>, trust_ca: bool) -> PathBuf {
    let path = tc.cluster().dir().join(name);
    std::fs::write(&path, kubeconfig_yaml(tc, token, trust_ca)).unwrap();
    path
}

async fn client_for(tc: &TestCluster, token: Option<&str>, trust_ca: bool) -> kube::Client {
    let kc = Kubeconfig::from_yaml(&kubeconfig_yaml(tc, token, trust_ca)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// kubectl with another kubeconfig than the admin's.
async fn kubectl_as(kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    within(&format!("kubectl {}", args.join(" ")), cmd.output()).await.expect("kubectl ran")
}

async fn create_sa(tc: &TestCluster, ns: &str, name: &str) -> ServiceAccount {
    let api: Api<ServiceAccount> = Api::namespaced(tc.client.clone(), ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &sa).await.unwrap()
}

/// kubectl's imperative `create namespace/role/...` send protobuf bodies, which the
/// mini-cluster reads only for the review APIs; manifests go as JSON.
async fn apply(tc: &TestCluster, yaml: &str) {
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(yaml)).await;
}

fn role_binding(name: &str, role_kind: &str, role: &str, subject: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}, namespace: default}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: {role_kind}, name: {role}}}\nsubjects:\n- {subject}\n"
    )
}

const POPULATOR: &str = "system:serviceaccount:cdi-rs:cdi-populator";

#[tokio::test]
async fn kubectl_auth_can_i_and_whoami_follow_rbac() {
    let tc = TestCluster::start().await;
    apply(&tc, "apiVersion: v1\nkind: Namespace\nmetadata: {name: cdi-rs}\n").await;
    create_sa(&tc, "cdi-rs", "cdi-populator").await;
    let as_populator = format!("--as={POPULATOR}");
    let can_i = ["auth", "can-i", "create", "pods", "-n", "cdi-rs", as_populator.as_str()];

    let before = tc.kubectl_output(&can_i, None).await;
    assert_eq!(stdout(&before), "no", "{}", stderr(&before));
    assert_eq!(before.status.code(), Some(1), "can-i exits 1 for no");

    let rbac = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-maker, namespace: cdi-rs}
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create", "get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: populator-pods, namespace: cdi-rs}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-maker}
subjects:
- {kind: ServiceAccount, name: cdi-populator, namespace: cdi-rs}
"#;
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(rbac)).await;
    let after = tc.kubectl_output(&can_i, None).await;
    assert_eq!(stdout(&after), "yes", "{}", stderr(&after));
    assert_eq!(after.status.code(), Some(0));
    // The binding is the namespace's: elsewhere, and for other verbs, still no.
    let other_ns = tc.kubectl_output(&["auth", "can-i", "create", "pods", "-n", "default", &as_populator], None).await;
    assert_eq!(stdout(&other_ns), "no");
    let delete = tc.kubectl_output(&["auth", "can-i", "delete", "pods", "-n", "cdi-rs", &as_populator], None).await;
    assert_eq!(stdout(&delete), "no");
    // The admin may do anything; anyone authenticated may ask about themselves.
    assert_eq!(tc.kubectl(&["auth", "can-i", "delete", "nodes"]).await.trim(), "yes");
    let list = tc.kubectl(&["auth", "can-i", "--list", "-n", "cdi-rs", &as_populator]).await;
    assert!(list.lines().any(|l| l.starts_with("pods ") && l.contains("[create get]")), "{list}");

    let me = json_of(&tc.kubectl(&["auth", "whoami", "-o", "json"]).await);
    assert_eq!(me["kind"], "SelfSubjectReview");
    assert_eq!(me["status"]["userInfo"]["username"], "kubernetes-admin");
    let groups = me["status"]["userInfo"]["groups"].to_string();
    assert!(groups.contains("system:masters") && groups.contains("system:authenticated"), "{groups}");
    let sa = json_of(&tc.kubectl(&["auth", "whoami", "-o", "json", &as_populator]).await);
    assert_eq!(sa["status"]["userInfo"]["username"], POPULATOR);
    assert_eq!(
        sa["status"]["userInfo"]["groups"],
        json!(["system:serviceaccounts", "system:serviceaccounts:cdi-rs", "system:authenticated"])
    );

    // A SubjectAccessReview names the binding that allowed it.
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": POPULATOR, "groups": ["system:serviceaccounts"],
        "resourceAttributes": {"namespace": "cdi-rs", "verb": "get", "resource": "pods", "name": "p"}}});
    let out = json_of(&tc.kubectl_stdin(&["create", "-f", "-", "-o", "json"], Some(&sar.to_string())).await);
    assert_eq!(out["status"]["allowed"], true, "{out}");
    assert!(out["status"]["reason"].as_str().unwrap().contains("populator-pods"), "{out}");
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn impersonated_users_get_kubernetes_403s_until_bound() {
    let tc = TestCluster::start().await;
    let denied = tc.kubectl_output(&["--as=alice", "get", "pods"], None).await;
    assert!(!denied.status.success());
    assert_eq!(
        stderr(&denied),
        "Error from server (Forbidden): pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" \
         in the namespace \"default\""
    );

    apply(
        &tc,
        &role_binding(
            "alice-view",
            "ClusterRole",
            "view",
            "{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}",
        ),
    )
    .await;
    let allowed = tc.kubectl_output(&["--as=alice", "get", "pods"], None).await;
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    // view reads, it does not write; a named object is named in the message.
    apply(&tc, "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: x}]}\n").await;
    let delete = tc.kubectl_output(&["--as=alice", "delete", "pod", "p"], None).await;
    assert_eq!(
        stderr(&delete),
        "Error from server (Forbidden): pods \"p\" is forbidden: User \"alice\" cannot delete resource \"pods\" in API \
         group \"\" in the namespace \"default\""
    );
    // Groups count: alice is no one special, but as a member of a bound group she may.
    let group_denied = tc.kubectl_output(&["--as=bob", "get", "configmaps", "-n", "kube-system"], None).await;
    assert!(stderr(&group_denied).contains("User \"bob\" cannot list resource \"configmaps\""));
    apply(
        &tc,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: ops-view}\nroleRef: \
         {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects:\n- {kind: Group, name: ops, \
         apiGroup: rbac.authorization.k8s.io}\n",
    )
    .await;
    tc.kubectl(&["--as=bob", "--as-group=ops", "get", "configmaps", "-n", "kube-system"]).await;

    // Impersonating takes the right to: a service account without it is refused.
    create_sa(&tc, "default", "robot").await;
    let token = tc.kubectl(&["create", "token", "robot"]).await;
    let kc = write_kubeconfig(&tc, "robot.kubeconfig", Some(token.trim()), true);
    let refused = kubectl_as(&kc, &["--as=alice", "get", "pods"]).await;
    assert_eq!(
        stderr(&refused),
        "Error from server (Forbidden): users \"alice\" is forbidden: User \"system:serviceaccount:default:robot\" \
         cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn service_account_tokens_authenticate_until_the_account_is_recreated() {
    let tc = TestCluster::start().await;
    let sa = create_sa(&tc, "default", "robot").await;
    let token = tc.kubectl(&["create", "token", "robot"]).await.trim().to_string();

    let kc = write_kubeconfig(&tc, "robot.kubeconfig", Some(&token), true);
    let who = json_of(&stdout(&kubectl_as(&kc, &["auth", "whoami", "-o", "json"]).await));
    assert_eq!(who["status"]["userInfo"]["username"], "system:serviceaccount:default:robot");
    assert_eq!(who["status"]["userInfo"]["uid"], sa.metadata.uid.clone().unwrap().as_str());

    // kube-rs with the token: authenticated, and RBAC decides.
    let robot = client_for(&tc, Some(&token), true).await;
    let pods: Api<Pod> = Api::default_namespaced(robot.clone());
    let err = pods.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(api_code(&err), (403, "Forbidden".into()));
    apply(
        &tc,
        &role_binding("robot-view", "ClusterRole", "view", "{kind: ServiceAccount, name: robot, namespace: default}"),
    )
    .await;
    pods.list(&ListParams::default()).await.unwrap();

    // A TokenReview says the same as the server does.
    let review =
        |t: &str| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": t}});
    let out = json_of(&tc.kubectl_stdin(&["create", "-f", "-", "-o", "json"], Some(&review(&token).to_string())).await);
    assert_eq!(out["status"]["authenticated"], true, "{out}");
    assert_eq!(out["status"]["user"]["username"], "system:serviceaccount:default:robot");
    assert!(out["spec"]["token"].is_null(), "the token is not echoed");

    // Deleted and re-created under the same name: the old token names a uid that is gone.
    let sas: Api<ServiceAccount> = Api::default_namespaced(tc.client.clone());
    sas.delete("robot", &DeleteParams::default()).await.unwrap();
    create_sa(&tc, "default", "robot").await;
    let err = pods.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(api_code(&err), (401, "Unauthorized".into()));
    let out = kubectl_as(&kc, &["get", "pods"]).await;
    assert!(stderr(&out).contains("You must be logged in to the server (Unauthorized)"), "{}", stderr(&out));
    let out = json_of(&tc.kubectl_stdin(&["create", "-f", "-", "-o", "json"], Some(&review(&token).to_string())).await);
    assert_eq!(out["status"]["authenticated"], false, "{out}");

    // A garbage token, and a forged one (a valid token with its payload swapped), are 401.
    let garbage = client_for(&tc, Some("not-a-token"), true).await;
    let err = Api::<Pod>::default_namespaced(garbage).list(&ListParams::default()).await.unwrap_err();
    assert_eq!(api_code(&err), (401, "Unauthorized".into()));
    let fresh = tc.kubectl(&["create", "token", "robot"]).await.trim().to_string();
    let parts: Vec<&str> = fresh.split('.').collect();
    let other: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], other[1], parts[2]);
    let err = Api::<Pod>::default_namespaced(client_for(&tc, Some(&forged), true).await)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), (401, "Unauthorized".into()));

    // TokenRequest validation, and tokens for other audiences are not for the API server.
    let short = tc.kubectl_output(&["create", "token", "robot", "--duration=5m"], None).await;
    assert!(stderr(&short).contains("may not specify a duration less than 10 minutes"), "{}", stderr(&short));
    let missing = tc.kubectl_output(&["create", "token", "nobody"], None).await;
    assert!(stderr(&missing).contains("serviceaccounts \"nobody\" not found"), "{}", stderr(&missing));
    let vault = tc.kubectl(&["create", "token", "robot", "--audience=vault"]).await.trim().to_string();
    let err = Api::<Pod>::default_namespaced(client_for(&tc, Some(&vault), true).await)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), (401, "Unauthorized".into()));

    // The kubelet's entry point issues the same tokens.
    let authority = tc.cluster().authority().clone();
    let issued = authority
        .issue_service_account_token(tc.cluster().store(), "default", "robot", Duration::from_secs(3600))
        .unwrap();
    let who = json_of(&stdout(&kubectl_as(&kc, &["--token", &issued, "auth", "whoami", "-o", "json"]).await));
    assert_eq!(who["status"]["userInfo"]["username"], "system:serviceaccount:default:robot");
    let err = authority
        .issue_service_account_token(tc.cluster().store(), "default", "nobody", Duration::from_secs(3600))
        .unwrap_err();
    assert_eq!(err.code, 404);
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn tls_clients_must_trust_the_cluster_ca_and_anonymous_gets_public_info_only() {
    let tc = TestCluster::start().await;
    let cluster = tc.cluster();
    assert!(cluster.url().starts_with("https://127.0.0.1:"), "{}", cluster.url());
    assert_eq!(std::fs::read_to_string(cluster.dir().join("ca.crt")).unwrap(), cluster.ca_pem());

    // Not trusting the CA: the handshake fails, for kube-rs and kubectl alike.
    let untrusting = client_for(&tc, None, false).await;
    let err = untrusting.apiserver_version().await.unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
    // (kubectl asks for a password when the user has no credential at all.)
    let kc = write_kubeconfig(&tc, "untrusting.kubeconfig", Some("x"), false);
    let out = kubectl_as(&kc, &["get", "--raw", "/version"]).await;
    assert!(stderr(&out).contains("certificate signed by unknown authority"), "{}", stderr(&out));

    // Trusting it, without credentials: anonymous may read /version and nothing else.
    let anonymous = client_for(&tc, None, true).await;
    assert_eq!(anonymous.apiserver_version().await.unwrap().minor, "33");
    let err = Api::<ConfigMap>::default_namespaced(anonymous.clone()).list(&ListParams::default()).await.unwrap_err();
    let kube::Error::Api(status) = err else { panic!("{err:?}") };
    assert_eq!(
        status.message,
        "configmaps is forbidden: User \"system:anonymous\" cannot list resource \"configmaps\" in API group \"\" in \
         the namespace \"default\""
    );
    let err = anonymous.request_text(http::Request::get("/api").body(vec![]).unwrap()).await.unwrap_err();
    let kube::Error::Api(status) = err else { panic!("{err:?}") };
    assert_eq!(status.code, 403);
    assert_eq!(status.message, "forbidden: User \"system:anonymous\" cannot get path \"/api\"");
    // The admin's kubeconfig carries the CA and the admin's token.
    assert!(tc.kubectl(&["get", "--raw", "/api"]).await.contains("APIVersions"));
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn every_namespace_has_a_default_service_account_and_discovery_lists_the_auth_apis() {
    let tc = TestCluster::start().await;
    for ns in ["default", "kube-system"] {
        Api::<ServiceAccount>::namespaced(tc.client.clone(), ns).get("default").await.unwrap();
    }
    apply(&tc, "apiVersion: v1\nkind: Namespace\nmetadata: {name: fresh}\n").await;
    let sas: Api<ServiceAccount> = Api::namespaced(tc.client.clone(), "fresh");
    within(
        "the default service account of a new namespace",
        await_condition(sas, "default", |o: Option<&ServiceAccount>| o.is_some()),
    )
    .await
    .unwrap();

    let out = tc.kubectl(&["api-resources", "-o", "name"]).await;
    for r in [
        "roles.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
        "subjectaccessreviews.authorization.k8s.io",
        "selfsubjectaccessreviews.authorization.k8s.io",
        "localsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
        "tokenreviews.authentication.k8s.io",
        "selfsubjectreviews.authentication.k8s.io",
    ] {
        assert!(out.lines().any(|l| l == r), "{r} missing from {out}");
    }
    // Reviews are created, not stored or listed.
    let list = tc.kubectl_output(&["get", "subjectaccessreviews"], None).await;
    assert!(
        stderr(&list).contains("MethodNotAllowed") || stderr(&list).contains("does not allow"),
        "{}",
        stderr(&list)
    );
    let roles = tc.kubectl(&["get", "clusterroles", "-o", "name"]).await;
    for r in ["cluster-admin", "system:discovery", "system:basic-user", "system:public-info-viewer", "view"] {
        assert!(roles.lines().any(|l| l == format!("clusterrole.rbac.authorization.k8s.io/{r}")), "{roles}");
    }
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn python_client_gets_403_for_what_rbac_denies_and_serves_what_it_allows() {
    let tc = TestCluster::start().await;
    create_sa(&tc, "default", "reader").await;
    apply(
        &tc,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: cm-reader, namespace: default}\nrules:\n\
         - {apiGroups: [\"\"], resources: [configmaps], verbs: [get, list]}\n",
    )
    .await;
    apply(
        &tc,
        &role_binding("reader-cm", "Role", "cm-reader", "{kind: ServiceAccount, name: reader, namespace: default}"),
    )
    .await;
    let token = tc.kubectl(&["create", "token", "reader"]).await;
    let script = format!(
        r#"
import json, kubernetes
from kubernetes.client.rest import ApiException
# The admin, from KUBECONFIG (CA and token).
kubernetes.config.load_kube_config()
admin = kubernetes.client.CoreV1Api()
namespaces = [n.metadata.name for n in admin.list_namespace().items]
# The service account, by its token, trusting the cluster's CA.
c = kubernetes.client.Configuration()
c.host = "{url}"
c.ssl_ca_cert = "{ca}"
c.api_key = {{"authorization": "Bearer {token}"}}
sa = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(c))
configmaps = len(sa.list_namespaced_config_map("default").items)
try:
    sa.list_namespaced_pod("default")
    denied = None
except ApiException as e:
    denied = {{"status": e.status, "body": json.loads(e.body)}}
print(json.dumps({{"namespaces": namespaces, "configmaps": configmaps, "denied": denied}}))
"#,
        url = tc.cluster().url(),
        ca = tc.cluster().dir().join("ca.crt").display(),
        token = token.trim(),
    );
    let out = tc.python(&script).await;
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let r = json_of(&stdout(&out));
    assert!(r["namespaces"].as_array().unwrap().contains(&json!("kube-system")), "{r}");
    assert_eq!(r["configmaps"], 0);
    assert_eq!(r["denied"]["status"], 403, "{r}");
    assert_eq!(r["denied"]["body"]["reason"], "Forbidden");
    assert_eq!(
        r["denied"]["body"]["message"],
        "pods is forbidden: User \"system:serviceaccount:default:reader\" cannot list resource \"pods\" in API group \"\" \
         in the namespace \"default\""
    );
    assert_eq!(r["denied"]["body"]["details"], json!({"kind": "pods"}));
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn the_deploy_rbac_of_the_populator_is_enforced() {
    let tc = TestCluster::start().await;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let ns = deploy.join("namespace.yaml");
    let rbac = deploy.join("populator-rbac.yaml");
    tc.kubectl(&["apply", "-f", ns.to_str().unwrap(), "-f", rbac.to_str().unwrap()]).await;
    let token = tc
        .cluster()
        .authority()
        .issue_service_account_token(tc.cluster().store(), "cdi-rs", "cdi-populator", Duration::from_secs(3600))
        .unwrap();
    let populator = client_for(&tc, Some(&token), true).await;

    // Cluster-wide claims and pods: its ClusterRole.
    Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::all(populator.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    Api::<Pod>::all(populator.clone()).list(&ListParams::default()).await.unwrap();
    // Writing Secrets: in cdi-rs only (its Role).
    let secret = |name: &str| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"k": "v"}})).unwrap()
    };
    let own = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(populator.clone(), "cdi-rs");
    own.create(&PostParams::default(), &secret("cdi-mover-tls")).await.unwrap();
    let elsewhere = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(populator.clone(), "default");
    let err = elsewhere.create(&PostParams::default(), &secret("x")).await.unwrap_err();
    let kube::Error::Api(status) = err else { panic!("{err:?}") };
    assert_eq!(
        (status.code, status.message.as_str()),
        (
            403,
            "secrets is forbidden: User \"system:serviceaccount:cdi-rs:cdi-populator\" cannot create resource \
             \"secrets\" in API group \"\" in the namespace \"default\""
        )
    );
    // Verbs it was not given: deleting a Secret, deleting a PV.
    let err = own.delete("cdi-mover-tls", &DeleteParams::default()).await.unwrap_err();
    assert_eq!(api_code(&err), (403, "Forbidden".into()));
    let pvs = Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(populator);
    let err = pvs.delete("pv-1", &DeleteParams::default()).await.unwrap_err();
    assert_eq!(api_code(&err), (403, "Forbidden".into()));
    tc.shutdown_and_check_leaks().await;
}
