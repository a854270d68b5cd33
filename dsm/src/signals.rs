//! Ctrl-C and SIGTERM for `dsm` itself, counted rather than acted on in the handler: the main loop
//! reads the count and stops the roles in order; a second signal means "stop now" (SIGKILL).

use std::sync::atomic::{AtomicUsize, Ordering};

static RECEIVED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    // An atomic add is async-signal-safe; nothing else happens here.
    RECEIVED.fetch_add(1, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only performs an atomic add; `signal` with a valid function pointer.
        let previous = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How many SIGINT/SIGTERM have arrived since start.
pub fn received() -> usize {
    RECEIVED.load(Ordering::SeqCst)
}
