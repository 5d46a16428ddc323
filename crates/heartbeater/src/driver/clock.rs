//! The driver's clock: tokio's, so that tests with a paused clock move it,
//! as the `std` instants the core takes.

use std::time::Instant;

/// Now, on the runtime's clock.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
