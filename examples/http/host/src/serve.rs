//! The service: an axum app whose every request the shop plugin answers, the database
//! services it offers the plugin, the socket it listens on (its own, or one a supervisor hands
//! over), and its graceful shutdown.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_api::{page, Shop};
use http_db::Db;
use swapkit::{Grant, Sandbox, Swapper, Vault};
use tokio::net::TcpListener;

/// The database services the host offers the shop, each awaited by the plugin.
const SERVICES: [&str; 3] = ["db.visit", "db.visits", "db.add_to_cart"];

/// What a request handler needs.
pub(crate) struct App {
    pub swapper: Arc<Swapper>,
    pub db: Arc<Db>,
}

/// Offers the database to the shop as async services in `vault`: the plugin awaits them, and
/// the host's runtime drives the queries.
pub(crate) fn offer(vault: &Vault, db: &Arc<Db>) {
    let d = db.clone();
    vault.provide_async(
        "db.visit",
        move |(user, path, version): (String, String, String)| {
            let db = d.clone();
            async move { db.visit(&user, &path, &version).await }
        },
    );
    let d = db.clone();
    vault.provide_async("db.visits", move |(user,): (String,)| {
        let db = d.clone();
        async move { db.visits(&user).await }
    });
    let d = db.clone();
    vault.provide_async(
        "db.add_to_cart",
        move |(user, sku, qty, version): (String, u64, u64, String)| {
            let db = d.clone();
            async move { db.add_to_cart(&user, sku, qty, &version).await }
        },
    );
}

/// The shop may call the database services and nothing else of the host's (what a wasm
/// shop may call is enforced; a native one is trusted code).
pub(crate) fn sandbox() -> Sandbox {
    SERVICES.iter().fold(Sandbox::default(), |s, name| {
        s.grant("shop", Grant::HostFn((*name).into()))
    })
}

/// The service's routes: every path goes to the shop.
pub(crate) fn app(app: App) -> Router {
    Router::new().fallback(handle).with_state(Arc::new(app))
}

/// Answers a request through the shop plugin: its first call (which awaits the database),
/// a query of the host's own, its second call.
async fn handle(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap) -> Response {
    let user = headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    // One version for the whole request: the pin holds its generation across both calls and
    // every await between and inside them, so a swap in the middle changes nothing for it.
    let pin = app.swapper.pin();
    let shop = pin.client::<dyn Shop>();
    let failed = |e: &dyn std::fmt::Display| {
        (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
    };
    let (status, answer, visit, handled) = match shop.handle(path, user).await {
        Ok(handled) => handled,
        Err(e) => return failed(&e),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if visit < 0 {
        // The shop could not record the visit: its answer says why.
        let version = (header::HeaderName::from_static("x-shop-version"), handled);
        return (status, [version], answer).into_response();
    }
    // The host's own await between the two calls: the version the visit's row records.
    let row = match app.db.visit_version(visit).await {
        Ok(row) => row,
        Err(e) => return failed(&e),
    };
    let (page, version) = match (shop.render(answer, handled, row).await, shop.version()) {
        (Ok(page), Ok(version)) => (page, version),
        (Err(e), _) | (_, Err(e)) => return failed(&e),
    };
    if !page::whole(&page, &version) {
        return failed(&format!(
            "a request mixed versions (pinned {version}): {page}"
        ));
    }
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::HeaderName::from_static("x-shop-version"), version),
        ],
        page,
    )
        .into_response()
}

/// The socket to serve on: the one a supervisor handed over as descriptor 3 when
/// `LISTEN_FDS=1` is set (systemd's socket-activation convention, which a graceful restart
/// uses to give the next process the same socket), otherwise 127.0.0.1:`port`.
pub(crate) fn listener(port: u16) -> std::io::Result<TcpListener> {
    let std_listener = if std::env::var_os("LISTEN_FDS").is_some_and(|n| n == "1") {
        use std::os::fd::FromRawFd;
        // SAFETY: by the convention LISTEN_FDS=1 announces, descriptor 3 is a listening socket
        // the parent left open for this process, and nothing else in it owns that descriptor.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
        // A descriptor 3 that is not a bound socket fails here, not later.
        listener.local_addr()?;
        listener
    } else {
        std::net::TcpListener::bind(("127.0.0.1", port))?
    };
    std_listener.set_nonblocking(true)?;
    TcpListener::from_std(std_listener)
}

/// Resolves on SIGTERM or SIGINT: the server then stops accepting, finishes the requests in
/// flight, closes its idle connections and returns.
pub(crate) async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
