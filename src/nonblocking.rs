//! One reading of a non-blocking call's outcome, for every socket loop in the server.
//!
//! A non-blocking `read`, `write` or `accept` has three outcomes that matter: it did something,
//! there is nothing to do until epoll says so (`WouldBlock`), or it failed. `Interrupted` is
//! none of them: the call is simply made again. This module owns that reading, so that no loop
//! spells it out by hand (or forgets a case).

use std::io;

/// Calls `op` until it is not interrupted: `Ok(Some(_))` when it did something, `Ok(None)` when
/// it would block, `Err` when it failed.
pub fn attempt<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<Option<T>> {
    loop {
        match op() {
            Ok(done) => return Ok(Some(done)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_calls_are_made_again_and_would_block_is_not_an_error() {
        let mut outcomes =
            vec![Ok(7), Err(io::ErrorKind::Interrupted.into()), Err(io::ErrorKind::Interrupted.into())];
        assert_eq!(attempt(|| outcomes.pop().unwrap()).unwrap(), Some(7));
        assert_eq!(attempt(|| Err::<(), _>(io::ErrorKind::WouldBlock.into())).unwrap(), None);
        let failed = attempt(|| Err::<(), _>(io::ErrorKind::ConnectionReset.into())).unwrap_err();
        assert_eq!(failed.kind(), io::ErrorKind::ConnectionReset);
    }
}
