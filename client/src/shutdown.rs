//! The one shutdown signal of every role (ARCHITECTURE: "every role … shuts down cleanly on
//! SIGTERM"): SIGTERM, which is what docker, Kubernetes and the tests send, or Ctrl-C at a
//! terminal. Each binary hands this future to its server or run loop, which then stops accepting,
//! reports NOT_SERVING and drains within its bound.

/// Resolves on the first SIGTERM or Ctrl-C after it is first polled (the handlers are installed
/// then). Panics if the SIGTERM handler cannot be installed, which happens only when the process
/// has no signal support at all: better to fail at start than to ignore SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
