//! CDIConfig's importProxy on an installed cdi-rs: an http import goes through the proxy it
//! names (nginx as a forward proxy), with the CA bundle of its trustedCAProxy ConfigMap read
//! from cdi-rs's namespace. The image's host resolves nowhere, so only the proxy can fetch it.

use cdi_e2e::system::NAMESPACE;
use cdi_populator::api::CDIConfig;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn cdiconfigs_import_proxy_carries_http_imports() {
    let env = Env::start(8, &["--retry-base", "1"]).await;
    let origin = crate::peers::Nginx::start(env.dir.path(), &env.dir.path().join("www"), "", "");
    let proxy_www = env.dir.path().join("proxy-www");
    std::fs::create_dir(&proxy_www).unwrap();
    // Whatever host a request names, this proxy fetches it from the origin.
    let pass = format!("location / {{ proxy_pass http://127.0.0.1:{}$request_uri; }}", origin.port);
    let proxy = crate::peers::Nginx::start(env.dir.path(), &proxy_www, &pass, "");

    // The proxy's CA, as an admin would hand it over (a TLS-inspecting proxy's).
    let ca = rcgen::generate_simple_self_signed(vec!["proxy.example".to_string()]).unwrap().cert.pem();
    let maps: Api<ConfigMap> = Api::namespaced(env.client(), NAMESPACE);
    let map = json!({"metadata": {"name": "proxy-ca"}, "data": {"ca.pem": ca}});
    maps.create(&PostParams::default(), &serde_json::from_value(map).unwrap()).await.unwrap();
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let configs: Api<CDIConfig> = Api::all(env.client());
    let patch = json!({"spec": {"importProxy": {
        "HTTPProxy": proxy_url, "HTTPSProxy": proxy_url, "noProxy": "example.com", "trustedCAProxy": "proxy-ca",
    }}});
    configs.patch("config", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let published = await_condition(configs, "config", |c: Option<&CDIConfig>| {
        let http = c.and_then(|c| c.status.as_ref()?.import_proxy.as_ref()?.http_proxy.clone());
        http.is_some_and(|h| h.ends_with(&proxy.port.to_string()))
    });
    within("the import proxy in CDIConfig's status", published).await.unwrap();

    let url = format!("http://images.proxy-only.test:{}/disk.qcow2", origin.port);
    env.source("proxied", &url).await;
    env.pvc("proxied", "local-immediate", Mode::Filesystem, "proxied").await;
    let pvc = env.wait_bound("proxied").await;
    qemu_same(&env.raw, &env.backing(&pvc).await.join("disk.img"), None);
    let through = proxy.detail_log();
    assert!(through.lines().any(|l| l.starts_with(&format!("GET {url}"))), "the proxy saw: {through}");
}
