//! `/metrics` and `/healthz`: the small HTTP server the mover and the populator both run.

use std::future::Future;

/// Serves `/metrics` (what `metrics` returns, in the OpenMetrics text format) and `/healthz`
/// on `listener` until `shutdown` resolves or the listener fails.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: impl Fn() -> String + Clone + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics();
                async move { ([("content-type", OPENMETRICS)], text) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn metrics_and_health_are_served_until_shutdown() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(super::serve_metrics(listener, || "up 1\n# EOF\n".to_string(), async {
            let _ = stopped.await;
        }));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.0 200") || metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("application/openmetrics-text") && metrics.ends_with("up 1\n# EOF\n"), "{metrics}");
        assert!(get(addr, "/healthz").await.ends_with("\r\n\r\nok\n"));
        stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), server).await.expect("shut down").unwrap().unwrap();
    }
}
