//! The control FIFO: a pipe publishers write lines to (hasses' `-fifo=`).
//!
//! Owns reading the FIFO into the shared line framing. The FIFO is held open for writing too,
//! so it never reports end of input: a writer's end shows only as quiet (see the control
//! thread's doc). It needs no auth: its file mode guards it; and it cannot be answered.

use std::fs::File;
use std::io::Read;
use std::time::Instant;

use tracing::warn;

use super::{Control, Input, Source};
use crate::nonblocking::attempt;

/// The control FIFO and the line it is delivering.
pub(super) struct Fifo {
    pub(super) file: File,
    pub(super) input: Input,
}

impl Control {
    pub(super) fn read_fifo(&mut self) {
        if self.sources.paused {
            return;
        }
        let Some(mut fifo) = self.sources.fifo.take() else { return };
        let max_line = self.settings.limits.max_control_line();
        loop {
            match attempt(|| fifo.file.read(&mut self.sources.read_buf)) {
                // Held open for writing too, so no end of input: 0 means nothing right now.
                Ok(Some(0) | None) => break,
                Ok(Some(n)) => {
                    fifo.input.last_input = Instant::now();
                    let input = std::mem::take(&mut self.sources.read_buf);
                    fifo.input.lines.push(&input[..n], max_line, |piece| self.on_piece(piece, Source::Fifo));
                    self.sources.read_buf = input;
                }
                Err(e) => {
                    warn!("Reading the control FIFO failed: {e}");
                    break;
                }
            }
        }
        self.sources.fifo = Some(fifo);
    }
}
