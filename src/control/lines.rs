//! Line framing for the control channel: bytes in, whole lines out.
//!
//! A control connection or the FIFO may deliver a line in pieces, or many lines at once. This
//! buffers a partial line until its `\n` arrives (an optional `\r` before it is dropped), and
//! hands what remains at end of input as a last line. Pure: no I/O.
//!
//! Memory stays bounded: a partial line is never buffered beyond `max_line` bytes (plus the `\r`
//! of its ending); a longer line is reported once and skipped up to its `\n`.

/// The capacity an idle buffer may keep. Most control lines are short; a big message's buffer
/// is released once its line is done, so thousands of idle connections cost nothing.
const IDLE_CAPACITY: usize = 1024;

/// Accumulates control input and yields complete lines.
///
/// Pass the same `max_line` to every [`push`](Self::push) of one buffer.
#[derive(Debug, Default)]
pub struct LineBuffer {
    /// The start of a line whose `\n` has not arrived yet.
    partial: Vec<u8>,
    /// The current line was already reported too long: drop its bytes up to its `\n`.
    discarding: bool,
}

/// A line too long to be a control line; it is discarded up to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("control line longer than {max} bytes")]
pub struct LineTooLong {
    /// The configured maximum line length.
    pub max: usize,
}

impl LineBuffer {
    /// Feeds `input`; calls `on_line` for every complete line, without its line ending.
    ///
    /// Lines may be empty. A line longer than `max_line` (its ending not counted) gives one
    /// `Err(LineTooLong)`, as soon as it is known to be too long, and its bytes are dropped.
    pub fn push(
        &mut self,
        input: &[u8],
        max_line: usize,
        mut on_line: impl FnMut(Result<&[u8], LineTooLong>),
    ) {
        let mut rest = input;
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            self.end_line(&rest[..newline], max_line, &mut on_line);
            rest = &rest[newline + 1..];
        }
        self.keep_partial(rest, max_line, &mut on_line);
        self.release_if_idle();
    }

    /// End of input: the partial line, if any, is the last line.
    ///
    /// A `\r` at its end is dropped, as before a `\n`. A line being discarded as too long yields
    /// nothing (it was reported already). The buffer is empty afterwards, ready for new input.
    pub fn finish(&mut self, mut on_line: impl FnMut(&[u8])) {
        if !self.discarding && !self.partial.is_empty() {
            on_line(strip_cr(&self.partial));
        }
        self.discarding = false;
        self.partial.clear();
        self.release_if_idle();
    }

    /// True while the start of a line is held (or a too-long line is being skipped): its `\n`
    /// has not arrived yet.
    pub fn is_pending(&self) -> bool {
        !self.partial.is_empty() || self.discarding
    }

    /// Drops the line in progress, which will never be finished (its writer is gone); returns
    /// how many of its bytes were held. The next byte starts a new line.
    pub fn abandon(&mut self) -> usize {
        let held = self.partial.len();
        self.partial.clear();
        self.discarding = false;
        self.release_if_idle();
        held
    }

    /// A `\n` arrived: `tail` is the part of the line that came with it.
    fn end_line(
        &mut self,
        tail: &[u8],
        max_line: usize,
        on_line: &mut impl FnMut(Result<&[u8], LineTooLong>),
    ) {
        if std::mem::take(&mut self.discarding) {
            self.partial.clear();
            return;
        }
        let ends_in_cr = tail.last().or(self.partial.last()) == Some(&b'\r');
        let len = self.partial.len() + tail.len() - usize::from(ends_in_cr);
        if len > max_line {
            self.partial.clear();
            on_line(Err(LineTooLong { max: max_line }));
        } else if self.partial.is_empty() {
            // The common case, a whole line in one read: hand it over without copying.
            on_line(Ok(strip_cr(tail)));
        } else {
            self.partial.extend_from_slice(tail);
            on_line(Ok(strip_cr(&self.partial)));
            self.partial.clear();
        }
    }

    /// Keeps the start of a line that has no `\n` yet, unless it is already too long.
    fn keep_partial(
        &mut self,
        head: &[u8],
        max_line: usize,
        on_line: &mut impl FnMut(Result<&[u8], LineTooLong>),
    ) {
        if self.discarding || head.is_empty() {
            return;
        }
        let len = self.partial.len() + head.len();
        // `max_line` bytes and a `\r` may still be a good line if the `\n` comes next.
        let may_fit = len <= max_line || (len - 1 == max_line && head.last() == Some(&b'\r'));
        if may_fit {
            self.reserve_up_to(head.len(), max_line.saturating_add(1));
            self.partial.extend_from_slice(head);
        } else {
            self.partial.clear();
            self.discarding = true;
            on_line(Err(LineTooLong { max: max_line }));
        }
    }

    /// Grows like `Vec` does (doubling, so byte-by-byte input stays linear), but never past
    /// `limit`, the most a partial line can hold.
    fn reserve_up_to(&mut self, additional: usize, limit: usize) {
        let needed = self.partial.len() + additional;
        if needed > self.partial.capacity() {
            let target = (self.partial.capacity() * 2).clamp(needed, limit.max(needed));
            self.partial.reserve_exact(target - self.partial.len());
        }
    }

    fn release_if_idle(&mut self) {
        if self.partial.is_empty() && self.partial.capacity() > IDLE_CAPACITY {
            self.partial = Vec::new();
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Out = Vec<Result<Vec<u8>, LineTooLong>>;

    /// Feeds `chunks` in order, then finishes; returns every line and error in order.
    fn run<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, max_line: usize) -> Out {
        let mut buffer = LineBuffer::default();
        let mut out = Out::new();
        for chunk in chunks {
            buffer.push(chunk, max_line, |line| out.push(line.map(<[u8]>::to_vec)));
            assert!(buffer.partial.len() <= max_line + 1, "buffered past the limit");
        }
        buffer.finish(|line| out.push(Ok(line.to_vec())));
        assert!(buffer.partial.is_empty() && !buffer.discarding);
        out
    }

    fn lines(list: &[&[u8]]) -> Out {
        list.iter().map(|l| Ok(l.to_vec())).collect()
    }

    #[test]
    fn splits_on_lf_and_crlf() {
        let out = run([&b"status\r\na=b\n\nc=d\r\n"[..]], 100);
        assert_eq!(out, lines(&[b"status", b"a=b", b"", b"c=d"]));
    }

    #[test]
    fn only_one_cr_is_dropped() {
        let out = run([&b"a\r\r\nb\rc\n"[..]], 100);
        assert_eq!(out, lines(&[b"a\r", b"b\rc"]));
    }

    #[test]
    fn partial_line_waits_for_the_rest() {
        let mut buffer = LineBuffer::default();
        let mut out = Vec::new();
        buffer.push(b"room1=hel", 100, |l| out.push(l.unwrap().to_vec()));
        assert!(out.is_empty());
        buffer.push(b"lo\r", 100, |l| out.push(l.unwrap().to_vec()));
        assert!(out.is_empty());
        buffer.push(b"\nx", 100, |l| out.push(l.unwrap().to_vec()));
        assert_eq!(out, [b"room1=hello".to_vec()]);
    }

    #[test]
    fn finish_yields_the_last_line_without_cr() {
        assert_eq!(run([&b"a\nstatus\r"[..]], 100), lines(&[b"a", b"status"]));
        assert_eq!(run([&b"a\n"[..]], 100), lines(&[b"a"]));
        assert_eq!(run([&b""[..]], 100), lines(&[]));
    }

    #[test]
    fn over_long_line_is_reported_once_then_good_lines_follow() {
        let too_long = LineTooLong { max: 4 };
        let out = run([&b"abcdefghij"[..], b"klmnop", b"\nok\n"], 4);
        assert_eq!(out, vec![Err(too_long.clone()), Ok(b"ok".to_vec())]);
        let out = run([&b"abcdefghij\nok"[..]], 4);
        assert_eq!(out, vec![Err(too_long.clone()), Ok(b"ok".to_vec())]);
        let out = run([&b"abcdefghij"[..]], 4);
        assert_eq!(out, vec![Err(too_long)]);
    }

    #[test]
    fn exactly_max_line_fits_with_either_ending() {
        assert_eq!(run([&b"abcd\r"[..], b"\nabcd\nabcd\r"], 4), lines(&[b"abcd", b"abcd", b"abcd"]));
        assert_eq!(run([&b"abcd\r"[..], b"e\n"], 4), vec![Err(LineTooLong { max: 4 })]);
        assert_eq!(run([&b"abcd\rx"[..]], 4), vec![Err(LineTooLong { max: 4 })]);
    }

    #[test]
    fn big_allocation_is_released_when_idle() {
        let mut buffer = LineBuffer::default();
        let big = vec![b'x'; 100_000];
        buffer.push(&big, 200_000, |_| {});
        assert!(buffer.partial.capacity() >= 100_000);
        buffer.push(b"\n", 200_000, |_| {});
        assert_eq!(buffer.partial.capacity(), 0);
    }

    #[test]
    fn capacity_never_exceeds_what_a_partial_line_can_hold() {
        let mut buffer = LineBuffer::default();
        for _ in 0..5000 {
            buffer.push(b"x", 5000, |_| {});
        }
        assert!(buffer.partial.capacity() <= 5001);
    }

    #[test]
    fn an_abandoned_line_is_dropped_and_the_next_one_is_whole() {
        let mut buffer = LineBuffer::default();
        let mut out = Vec::new();
        assert!(!buffer.is_pending());
        buffer.push(b"a=1\nroom1=hal", 100, |l| out.push(l.unwrap().to_vec()));
        assert!(buffer.is_pending());
        assert_eq!(buffer.abandon(), 9);
        assert!(!buffer.is_pending());
        buffer.push(b"room1=hello\n", 100, |l| out.push(l.unwrap().to_vec()));
        assert_eq!(out, [b"a=1".to_vec(), b"room1=hello".to_vec()]);
    }

    #[test]
    fn abandoning_a_too_long_line_ends_its_skipping() {
        let mut buffer = LineBuffer::default();
        let mut out = Out::new();
        buffer.push(b"abcdefgh", 4, |l| out.push(l.map(<[u8]>::to_vec)));
        assert!(buffer.is_pending(), "still skipping up to the newline");
        assert_eq!(buffer.abandon(), 0);
        buffer.push(b"ok\n", 4, |l| out.push(l.map(<[u8]>::to_vec)));
        assert_eq!(out, vec![Err(LineTooLong { max: 4 }), Ok(b"ok".to_vec())]);
    }

    fn control_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), Just(b'='), any::<u8>()],
            0..200,
        )
    }

    proptest! {
        #[test]
        fn whole_and_byte_by_byte_give_the_same_lines(input in control_bytes(), max_line in 0usize..20) {
            let whole = run([&input[..]], max_line);
            let bytes = run(input.chunks(1), max_line);
            prop_assert_eq!(&whole, &bytes);
        }

        #[test]
        fn any_split_gives_the_same_lines(input in control_bytes(), cut in 0usize..200, max_line in 0usize..20) {
            let cut = cut.min(input.len());
            let (a, b) = input.split_at(cut);
            prop_assert_eq!(run([&input[..]], max_line), run([a, b], max_line));
        }

        #[test]
        fn arbitrary_pieces_give_the_same_lines(
            input in control_bytes(),
            cuts in proptest::collection::vec(0usize..200, 0..12),
            max_line in 0usize..20,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let bounds = std::iter::once(0).chain(cuts).chain(std::iter::once(input.len()));
            let bounds: Vec<usize> = bounds.collect();
            let pieces = bounds.windows(2).map(|w| &input[w[0]..w[1]]);
            prop_assert_eq!(run([&input[..]], max_line), run(pieces, max_line));
        }

        #[test]
        fn lines_hold_no_lf_and_respect_the_limit(input in control_bytes(), max_line in 0usize..20) {
            for line in run([&input[..]], max_line).into_iter().flatten() {
                prop_assert!(!line.contains(&b'\n'));
                prop_assert!(line.len() <= max_line);
            }
        }
    }
}
