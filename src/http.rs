//! HTTP pieces every server shares: JSON errors and serving with a bounded graceful drain.

mod streams;
pub use streams::{LeanStreams, Peer};

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Readiness};
use crate::metrics::Metrics;
use crate::settings::Common;
use crate::shutdown::CancellationToken;

/// A JSON error body: `{"error": "..."}`. The message is for the client; causes go to logs.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Serves `bound` until `shutdown` is cancelled, then stops accepting, lets requests in flight
/// and the `tasks` they started finish for at most `grace`, and returns.
async fn serve(
    bound: Bound,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
) -> anyhow::Result<()> {
    let Bound { listener, router, streams } = bound;
    let stopped = shutdown.clone().cancelled_owned();
    // Handlers may ask who the peer is (`ConnectInfo<Peer>`), as the API's limits do.
    let service = router.clone().into_make_service_with_connect_info::<Peer>();
    let mut server = match streams {
        None => tokio::spawn(axum::serve(listener, service).with_graceful_shutdown(stopped).into_future()),
        Some(streams) => {
            let listener = streams::Sorting::new(listener, router, streams, tasks.clone());
            tokio::spawn(axum::serve(listener, service).with_graceful_shutdown(stopped).into_future())
        }
    };
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
struct Bound {
    listener: TcpListener,
    router: Router,
    /// Never-ending responses, served without hyper when a connection opens with one (see
    /// [`streams`]).
    streams: Option<LeanStreams>,
}

impl Bound {
    async fn bind(addr: SocketAddr, router: Router) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        Ok(Self { listener, router, streams: None })
    }
}

/// A long-running process's servers, bound and ready to run: its main router and the admin
/// router (`/healthz`, `/readyz`, `/metrics`) on its own port.
pub struct Server {
    name: &'static str,
    main: Bound,
    admin: Bound,
    readiness: Readiness,
    tasks: TaskTracker,
    grace: Duration,
    /// Background loops of the process, stopped once the servers have drained.
    background: Vec<CancellationToken>,
    /// Cancelled as soon as the drain starts (long-lived responses end then).
    on_drain: Vec<CancellationToken>,
}

impl Server {
    /// Binds both listeners (port 0 picks a free port, as tests do).
    pub async fn bind(
        name: &'static str,
        listen: SocketAddr,
        router: Router,
        common: &Common,
        metrics: Arc<Metrics>,
        readiness: Readiness,
        tasks: TaskTracker,
    ) -> anyhow::Result<Self> {
        let admin_router = admin::router(metrics, readiness.clone());
        Ok(Self {
            name,
            main: Bound::bind(listen, router).await?,
            admin: Bound::bind(common.admin_listen, admin_router).await?,
            readiness,
            tasks,
            grace: common.shutdown_grace,
            background: Vec::new(),
            on_drain: Vec::new(),
        })
    }

    /// Cancels `token` as soon as the drain starts: for responses that never end by themselves.
    pub fn cancel_on_drain(mut self, token: CancellationToken) -> Self {
        self.on_drain.push(token);
        self
    }

    /// Serves connections that open with a `GET` of one of the stream paths (never-ending
    /// streams) without hyper's per-connection buffers: see [`streams`].
    pub fn lean_streams(mut self, streams: LeanStreams) -> Self {
        self.main.streams = Some(streams);
        self
    }

    /// Stops a background loop of the process (cancels `token`) after the drain.
    pub fn cancel_on_stop(mut self, token: CancellationToken) -> Self {
        self.background.push(token);
        self
    }

    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.main.listener.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.listener.local_addr()
    }

    /// Serves until `shutdown`; then `/readyz` fails at once, the main server drains (bounded by
    /// the grace period) and the admin server stops last, so that probes see the drain.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = ?self.addr()?, admin = ?self.admin_addr()?, "{} serving", self.name);
        let admin_stop = CancellationToken::new();
        let admin_server = tokio::spawn(
            axum::serve(self.admin.listener, self.admin.router)
                .with_graceful_shutdown(admin_stop.clone().cancelled_owned())
                .into_future(),
        );
        let draining = {
            let (shutdown, readiness, on_drain) = (shutdown.clone(), self.readiness.clone(), self.on_drain);
            tokio::spawn(async move {
                shutdown.cancelled().await;
                readiness.start_draining();
                on_drain.iter().for_each(CancellationToken::cancel);
            })
        };
        let served = serve(self.main, shutdown, self.tasks, self.grace).await;
        draining.abort();
        admin_stop.cancel();
        admin_server.await??;
        self.background.iter().for_each(CancellationToken::cancel);
        tracing::info!("{} stopped", self.name);
        served
    }
}
