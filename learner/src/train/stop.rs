//! A clean stop on SIGTERM or Ctrl-C: the run loop finishes the current iteration, writes a
//! checkpoint (and publishes it when training from a coordinator), and returns normally.
//!
//! The flag is process-wide because signals are: [`install`] starts one small thread that waits for
//! either signal and sets it; [`requested`] is what the loop polls once per iteration.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// Whether a stop was requested.
pub fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Requests a stop (what the signal handler does; tests call it directly).
pub fn request() {
    STOP.store(true, Ordering::Relaxed);
}

/// Starts the thread that turns SIGTERM and Ctrl-C into a stop request. A second signal while
/// the checkpoint is being written exits at once with status 130.
pub fn install() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("learner-signals".into()).spawn(move || {
        runtime.block_on(async {
            let mut count = 0;
            loop {
                let ctrl_c = tokio::signal::ctrl_c();
                #[cfg(unix)]
                {
                    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                        Ok(t) => t,
                        Err(_) => return,
                    };
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                #[cfg(not(unix))]
                let _ = ctrl_c.await;
                count += 1;
                if count > 1 {
                    eprintln!("\nsecond signal: exiting without a final checkpoint");
                    std::process::exit(130);
                }
                eprintln!("\nstop requested: finishing this iteration and writing a checkpoint (signal again to exit at once)");
                request();
            }
        })
    })?;
    Ok(())
}
