//! The service: an axum app whose every request the shop plugin answers, the socket it
//! listens on (its own, or one a supervisor hands over), and its graceful shutdown.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_api::Shop;
use swapkit::Swapper;
use tokio::net::TcpListener;

/// The service's routes: every path goes to the shop.
pub(crate) fn app(swapper: Arc<Swapper>) -> Router {
    Router::new().fallback(handle).with_state(swapper)
}

/// Answers a request through the shop plugin.
async fn handle(State(swapper): State<Arc<Swapper>>, uri: Uri, headers: HeaderMap) -> Response {
    let user = headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    // One version for the whole request: the pin holds its generation across the awaits, so
    // a swap in the middle changes nothing for it.
    let pin = swapper.pin();
    let shop = pin.client::<dyn Shop>();
    let answer = shop.handle(&path, &user);
    // Where a real handler would await a database or another service.
    tokio::task::yield_now().await;
    let version = shop.version();
    match (answer, version) {
        (Ok((status, body)), Ok(version)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (header::HeaderName::from_static("x-shop-version"), version),
            ],
            body,
        )
            .into_response(),
        (Err(e), _) | (_, Err(e)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
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
