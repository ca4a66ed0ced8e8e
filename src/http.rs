//! HTTP pieces every server shares: JSON errors and serving with a bounded graceful drain.

use std::future::IntoFuture;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::shutdown::CancellationToken;

/// A JSON error body: `{"error": "..."}`. The message is for the client; causes go to logs.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting, lets
/// requests in flight and the `tasks` they started finish for at most `grace`, and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
) -> anyhow::Result<()> {
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let mut server = tokio::spawn(server);
    tokio::select! {
        result = &mut server => return Ok(result??),
        () = shutdown.cancelled() => {}
    }
    tasks.close();
    let drained = async {
        let served = server.await;
        tasks.wait().await;
        served
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(served) => Ok(served??),
        Err(_) => {
            tracing::warn!(grace_secs = grace.as_secs(), "drain did not finish within the grace period");
            Ok(())
        }
    }
}

/// A bound listener with the router to serve on it.
pub struct Bound {
    pub listener: TcpListener,
    pub router: Router,
}

impl Bound {
    pub async fn bind(addr: std::net::SocketAddr, router: Router) -> anyhow::Result<Self> {
        use anyhow::Context;
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        Ok(Self { listener, router })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// Runs a process's main server and its admin server. On `shutdown`, `/readyz` starts failing
/// at once, the main server drains (bounded by `grace`), and the admin server stops last so
/// that probes see the drain.
pub async fn run_with_admin(
    main: Bound,
    admin: Bound,
    readiness: crate::admin::Readiness,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
) -> anyhow::Result<()> {
    let admin_stop = CancellationToken::new();
    let admin_server = tokio::spawn(
        axum::serve(admin.listener, admin.router)
            .with_graceful_shutdown(admin_stop.clone().cancelled_owned())
            .into_future(),
    );
    let draining = {
        let (shutdown, readiness) = (shutdown.clone(), readiness.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            readiness.start_draining();
        })
    };
    let served = serve(main.listener, main.router, shutdown, tasks, grace).await;
    draining.abort();
    admin_stop.cancel();
    admin_server.await??;
    served
}
