//! Framing for the control channel: bytes in, complete pieces out.
//!
//! A control connection or the FIFO may deliver a line in pieces, or many lines at once; and a
//! hasses-style publisher ends its commands with the separator alone (`a=x;`) and keeps its
//! connection open, so it must be served without any newline. A piece is complete when:
//! - a `\n` ends its line (an optional `\r` before it is dropped);
//! - the separator (`;`, or `--separator`) ends it, on a line that can no longer be an `auth`
//!   line or a JSON command: those are taken whole, separators and all ([`LineStart`]). A line
//!   whose first non-blank byte is `{` may be JSON, which only its end can tell, so it waits for
//!   its end: `{x=1;` (hasses' publish to `{x`) is served at its newline or after the quiet
//!   time rather than at the `;`, and means what it meant;
//! - or its owner calls [`finish`](LineBuffer::finish), knowing that no more bytes will come
//!   for the line: its writer closed, or went quiet. How long is quiet is the owner's business:
//!   this module has no clock and does no I/O.
//!
//! A piece says whether it is a whole line ([`Piece::line`]): only a whole line may be an auth
//! line or a blank line. The pieces of a line, joined with the separator, are the line that
//! framing on `\n` alone gives, so every line means what it meant when only `\n` ended lines.
//!
//! Incomplete is not invalid: a piece without its end yet is held, not judged. The one thing
//! judged here is length: memory stays bounded because a piece is never held beyond `max_line`
//! bytes (plus the `\r` of a line ending); a longer one is reported once as [`LineTooLong`] and
//! the rest of its line is skipped up to its `\n`.

use super::command::LineStart;

/// The capacity an idle buffer may keep. Most control lines are short; a big message's buffer
/// is released once its line is done, so thousands of idle connections cost nothing.
const IDLE_CAPACITY: usize = 1024;

/// Accumulates control input and yields complete pieces.
///
/// [`Default`] ends pieces at line endings only; [`LineBuffer::new`] at the separator too. Pass
/// the same `max_line` to every [`push`](Self::push) of one buffer.
#[derive(Debug, Default)]
pub struct LineBuffer {
    /// The byte that ends a command as a line ending does, if any.
    separator: Option<u8>,
    /// The start of a piece whose end has not arrived yet.
    partial: Vec<u8>,
    /// The current line was already reported too long: drop its bytes up to its `\n`.
    discarding: bool,
    /// How the current line starts, as far as read: unless it reads [`LineStart::Other`], a
    /// separator is one of its bytes rather than the end of a piece.
    start: LineStart,
    /// A piece of the current line was handed over already, ended by the separator.
    split: bool,
}

/// The line in progress of a [`LineBuffer`], as it is handed to a new process at an upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldLine {
    /// The start of a piece whose end has not arrived.
    pub partial: Vec<u8>,
    /// The line was reported too long: its bytes are dropped up to its `\n`.
    pub discarding: bool,
    /// A piece of the line was handed over already, ended by the separator.
    pub split: bool,
}

/// One complete piece of control input: a line, or a part of a line that the separator cut
/// (one command, unless the separator is blank and cut the line only once it could no longer
/// be an auth line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    bytes: &'a [u8],
    whole_line: bool,
}

impl<'a> Piece<'a> {
    /// Its bytes, without what ended it (the line ending or the separator).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Its bytes if it is a whole line, `None` if the separator cut its line: such a line is
    /// neither an `auth` line nor blank, whatever its pieces look like.
    pub fn line(&self) -> Option<&'a [u8]> {
        self.whole_line.then_some(self.bytes)
    }
}

/// A piece too long to be a control command; the rest of its line is discarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("control line longer than {max} bytes")]
pub struct LineTooLong {
    /// The configured maximum line length.
    pub max: usize,
}

impl LineBuffer {
    /// A buffer that also ends a command at `separator`, as soon as it arrives.
    pub fn new(separator: u8) -> LineBuffer {
        LineBuffer { separator: Some(separator), ..LineBuffer::default() }
    }

    /// Feeds `input`; calls `on_piece` for every piece it completes.
    ///
    /// Pieces may be empty. A piece longer than `max_line` (its ending not counted) gives one
    /// `Err(LineTooLong)`, as soon as it is known to be too long, and the bytes of its line are
    /// dropped up to its `\n`.
    pub fn push(
        &mut self,
        input: &[u8],
        max_line: usize,
        mut on_piece: impl FnMut(Result<Piece<'_>, LineTooLong>),
    ) {
        let mut rest = input;
        while let Some(at) = rest.iter().position(|b| *b == b'\n' || Some(*b) == self.separator) {
            let (head, end) = (&rest[..at], rest[at]);
            rest = &rest[at + 1..];
            if end == b'\n' {
                self.end_line(head, max_line, &mut on_piece);
            } else {
                self.at_separator(head, end, max_line, &mut on_piece);
            }
        }
        self.start = self.start.read(rest);
        self.hold(rest, max_line, &mut on_piece);
        self.release_if_idle();
    }

    /// No more bytes will come for the line in progress (its writer closed or went quiet): what
    /// is held is its last piece.
    ///
    /// A `\r` at its end is dropped, as before a `\n`. A line being discarded as too long yields
    /// nothing (it was reported already). The next byte starts a new line.
    pub fn finish(&mut self, mut on_piece: impl FnMut(Piece<'_>)) {
        if !self.discarding && !self.partial.is_empty() {
            on_piece(Piece { bytes: strip_cr(&self.partial), whole_line: !self.split });
        }
        self.partial.clear();
        self.new_line();
        self.release_if_idle();
    }

    /// What is held of the line in progress, to go on with in another process (an upgrade):
    /// [`LineBuffer::resume`] there frames what follows exactly as this buffer would.
    pub fn held(&self) -> HeldLine {
        HeldLine { partial: self.partial.clone(), discarding: self.discarding, split: self.split }
    }

    /// A buffer that goes on with a line another process held ([`LineBuffer::held`]). How the
    /// line starts is read again from what is held: a line the separator cut reads as
    /// [`LineStart::Other`], and one it did not holds every byte it had.
    pub fn resume(separator: u8, held: HeldLine) -> LineBuffer {
        let start = if held.split { LineStart::Other } else { LineStart::default().read(&held.partial) };
        LineBuffer {
            separator: Some(separator),
            partial: held.partial,
            discarding: held.discarding,
            start,
            split: held.split,
        }
    }

    /// True while a line is in progress: some of it came (held, or handed over as commands the
    /// separator ended, or being skipped as too long) and its `\n` has not.
    pub fn is_pending(&self) -> bool {
        !self.partial.is_empty() || self.discarding || self.split
    }

    /// A `\n` arrived: `tail` is the part of the line that came with it.
    fn end_line(
        &mut self,
        tail: &[u8],
        max_line: usize,
        on_piece: &mut impl FnMut(Result<Piece<'_>, LineTooLong>),
    ) {
        if self.discarding {
            self.partial.clear();
        } else {
            self.hand_over(tail, true, max_line, on_piece);
        }
        self.new_line();
    }

    /// The separator arrived, after `head`: it ends a command unless the line may be an auth
    /// line or a JSON command.
    fn at_separator(
        &mut self,
        head: &[u8],
        separator: u8,
        max_line: usize,
        on_piece: &mut impl FnMut(Result<Piece<'_>, LineTooLong>),
    ) {
        if self.discarding {
            return;
        }
        self.start = self.start.read(head).read(&[separator]);
        if self.start == LineStart::Other {
            self.hand_over(head, false, max_line, on_piece);
            self.split = true;
        } else {
            self.hold(head, max_line, on_piece);
            self.hold(&[separator], max_line, on_piece);
        }
    }

    /// Hands over what is held and `tail` as one piece, or reports it too long. At a line end
    /// a `\r` before the `\n` is dropped; at a separator the line goes on, and if the piece was
    /// too long, so does the skipping.
    fn hand_over(
        &mut self,
        tail: &[u8],
        line_end: bool,
        max_line: usize,
        on_piece: &mut impl FnMut(Result<Piece<'_>, LineTooLong>),
    ) {
        let whole_line = line_end && !self.split;
        let ends_in_cr = line_end && tail.last().or(self.partial.last()) == Some(&b'\r');
        let len = self.partial.len() + tail.len() - usize::from(ends_in_cr);
        if len > max_line {
            self.partial.clear();
            self.discarding = !line_end;
            on_piece(Err(LineTooLong { max: max_line }));
        } else if self.partial.is_empty() {
            // The common case, a whole piece in one read: hand it over without copying.
            on_piece(Ok(Piece { bytes: &tail[..len], whole_line }));
        } else {
            self.partial.extend_from_slice(tail);
            on_piece(Ok(Piece { bytes: &self.partial[..len], whole_line }));
            self.partial.clear();
        }
    }

    /// Keeps the start of a piece that has no end yet, unless it is already too long.
    fn hold(
        &mut self,
        head: &[u8],
        max_line: usize,
        on_piece: &mut impl FnMut(Result<Piece<'_>, LineTooLong>),
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
            on_piece(Err(LineTooLong { max: max_line }));
        }
    }

    /// Forgets all that was known of the line that just ended.
    fn new_line(&mut self) {
        self.discarding = false;
        self.start = LineStart::default();
        self.split = false;
    }

    /// Grows like `Vec` does (doubling, so byte-by-byte input stays linear), but never past
    /// `limit`, the most a partial piece can hold.
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
    use crate::control::command::auth_secret;
    use proptest::prelude::*;

    /// A piece as handed over: its bytes and whether it is a whole line; or a too-long report.
    type Got = Result<(Vec<u8>, bool), LineTooLong>;

    fn got(piece: Piece<'_>) -> (Vec<u8>, bool) {
        (piece.bytes().to_vec(), piece.line().is_some())
    }

    /// Feeds `chunks` in order to `buffer`, then finishes; returns every piece and error in order.
    fn feed<'a>(
        mut buffer: LineBuffer,
        chunks: impl IntoIterator<Item = &'a [u8]>,
        max_line: usize,
    ) -> Vec<Got> {
        let mut out = Vec::new();
        for chunk in chunks {
            buffer.push(chunk, max_line, |piece| out.push(piece.map(got)));
            assert!(buffer.partial.len() <= max_line + 1, "buffered past the limit");
        }
        buffer.finish(|piece| out.push(Ok(got(piece))));
        assert!(!buffer.is_pending() && buffer.partial.is_empty());
        out
    }

    /// Framing on line endings only.
    fn run<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, max_line: usize) -> Vec<Got> {
        feed(LineBuffer::default(), chunks, max_line)
    }

    /// Framing on line endings and `;`.
    fn run_sep<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, max_line: usize) -> Vec<Got> {
        feed(LineBuffer::new(b';'), chunks, max_line)
    }

    fn lines(list: &[&[u8]]) -> Vec<Got> {
        list.iter().map(|l| Ok((l.to_vec(), true))).collect()
    }

    fn part(bytes: &[u8]) -> Got {
        Ok((bytes.to_vec(), false))
    }

    fn line(bytes: &[u8]) -> Got {
        Ok((bytes.to_vec(), true))
    }

    #[test]
    fn a_resumed_buffer_frames_what_follows_as_the_held_one_would() {
        let cases: [(&[u8], &[u8]); 5] = [
            (b"room1=hel", b"lo\nb=c;"),
            (b"a=b;c=", b"d\n"),
            (b"auth s;e", b"cret\nx=y\n"),
            (b"{\"target\":\"a;b\",", b"\"data\":\"x\"}\n"),
            (&[b'x'; 40], b"yy\nok=1\n"),
        ];
        for (before, after) in cases {
            let mut whole = LineBuffer::new(b';');
            let mut expected = Vec::new();
            whole.push(before, 30, |_| {});
            let held = whole.held();
            whole.push(after, 30, |piece| expected.push(piece.map(got)));
            let mut resumed = LineBuffer::resume(b';', held);
            let mut out = Vec::new();
            resumed.push(after, 30, |piece| out.push(piece.map(got)));
            assert_eq!(out, expected, "after {:?}", String::from_utf8_lossy(before));
        }
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
        let mut buffer = LineBuffer::new(b';');
        let mut out = Vec::new();
        buffer.push(b"room1=hel", 100, |p| out.push(got(p.unwrap())));
        assert!(out.is_empty() && buffer.is_pending());
        buffer.push(b"lo\r", 100, |p| out.push(got(p.unwrap())));
        assert!(out.is_empty());
        buffer.push(b"\nx", 100, |p| out.push(got(p.unwrap())));
        assert_eq!(out, [(b"room1=hello".to_vec(), true)]);
    }

    #[test]
    fn finish_yields_the_last_line_without_cr() {
        assert_eq!(run([&b"a\nstatus\r"[..]], 100), lines(&[b"a", b"status"]));
        assert_eq!(run([&b"a\n"[..]], 100), lines(&[b"a"]));
        assert_eq!(run([&b""[..]], 100), lines(&[]));
    }

    #[test]
    fn the_separator_ends_a_command_as_soon_as_it_arrives() {
        let mut buffer = LineBuffer::new(b';');
        let mut out = Vec::new();
        buffer.push(b"a=one;b=tw", 100, |p| out.push(got(p.unwrap())));
        assert_eq!(out, [(b"a=one".to_vec(), false)]);
        buffer.push(b"o;", 100, |p| out.push(got(p.unwrap())));
        assert_eq!(out[1..], [(b"b=two".to_vec(), false)]);
        assert!(buffer.is_pending(), "the line goes on after its last separator");
        buffer.finish(|_| panic!("nothing is held"));
        assert!(!buffer.is_pending());
    }

    #[test]
    fn pieces_of_a_cut_line_are_never_whole_lines() {
        let out = run_sep([&b"a=1;;b=2\r\n;\n  ;auth x\nc=3\n"[..]], 100);
        let expected =
            [part(b"a=1"), part(b""), part(b"b=2"), part(b""), part(b""), part(b"  "), part(b"auth x")];
        assert_eq!(out[..7], expected);
        assert_eq!(out[7..], [line(b"c=3")]);
    }

    #[test]
    fn a_line_that_may_be_an_auth_line_keeps_its_separators() {
        let out = run_sep([&b"auth s3;cr;et\n auth\tx;y\nauth;a=1\naut;a=2\nauth\n"[..]], 100);
        let expected = [
            line(b"auth s3;cr;et"),
            line(b" auth\tx;y"),
            part(b"auth"),
            part(b"a=1"),
            part(b"aut"),
            part(b"a=2"),
            line(b"auth"),
        ];
        assert_eq!(out, expected);
        // Ended by the quiet time or a close rather than a newline, it is whole all the same.
        assert_eq!(run_sep([&b"auth s;e"[..], b"cret;"], 100), [line(b"auth s;ecret;")]);
    }

    #[test]
    fn a_line_that_may_be_json_keeps_its_separators() {
        let input: &[u8] = b"{\"to\":\"a\",\"data\":\"x;y\"}\r\n\t{x=1;y=2\n a=1;{\"b\":1}\n";
        let expected =
            [line(br#"{"to":"a","data":"x;y"}"#), line(b"\t{x=1;y=2"), part(b" a=1"), part(br#"{"b":1}"#)];
        assert_eq!(run_sep([input], 100), expected);
        assert_eq!(run_sep(input.chunks(1), 100), expected);
        // Ended by the quiet time or a close rather than a newline, it is whole all the same.
        assert_eq!(run_sep([&br#"{"data":"a;"#[..], br#"b;"}"#], 100), [line(br#"{"data":"a;b;"}"#)]);
    }

    #[test]
    fn a_blank_separator_holds_a_line_while_it_may_be_an_auth_line() {
        let out = feed(LineBuffer::new(b' '), [&b"  auth s e\n  \n a=1 b=2\n"[..]], 100);
        let expected = [line(b"  auth s e"), line(b"  "), part(b" a=1"), part(b"b=2")];
        assert_eq!(out, expected);
    }

    #[test]
    fn over_long_line_is_reported_once_then_good_lines_follow() {
        let too_long = LineTooLong { max: 4 };
        let out = run([&b"abcdefghij"[..], b"klmnop", b"\nok\n"], 4);
        assert_eq!(out, vec![Err(too_long.clone()), line(b"ok")]);
        let out = run([&b"abcdefghij\nok"[..]], 4);
        assert_eq!(out, vec![Err(too_long.clone()), line(b"ok")]);
        let out = run([&b"abcdefghij"[..]], 4);
        assert_eq!(out, vec![Err(too_long)]);
    }

    #[test]
    fn the_limit_is_per_command_and_a_long_one_skips_the_rest_of_its_line() {
        let too_long = LineTooLong { max: 4 };
        assert_eq!(run_sep([&b"a=12;b=34;c=56\n"[..]], 4), [part(b"a=12"), part(b"b=34"), part(b"c=56")]);
        let out = run_sep([&b"a=1;b=2345;c=3\nd=4;"[..]], 4);
        assert_eq!(out, [part(b"a=1"), Err(too_long), part(b"d=4")]);
    }

    #[test]
    fn exactly_max_line_fits_with_either_ending() {
        assert_eq!(run([&b"abcd\r"[..], b"\nabcd\nabcd\r"], 4), lines(&[b"abcd", b"abcd", b"abcd"]));
        assert_eq!(run([&b"abcd\r"[..], b"e\n"], 4), vec![Err(LineTooLong { max: 4 })]);
        assert_eq!(run([&b"abcd\rx"[..]], 4), vec![Err(LineTooLong { max: 4 })]);
        assert_eq!(run_sep([&b"abcd;abcd\r;x\n"[..]], 4), [part(b"abcd"), Err(LineTooLong { max: 4 })]);
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
    fn finishing_a_quiet_line_hands_it_over_and_the_next_byte_starts_a_new_one() {
        let mut buffer = LineBuffer::new(b';');
        let mut out = Vec::new();
        buffer.push(b"a=1\nroom1=two", 100, |p| out.push(got(p.unwrap())));
        buffer.finish(|p| out.push(got(p)));
        buffer.push(b"room1=three\n", 100, |p| out.push(got(p.unwrap())));
        let expected =
            [(b"a=1".to_vec(), true), (b"room1=two".to_vec(), true), (b"room1=three".to_vec(), true)];
        assert_eq!(out, expected);
    }

    #[test]
    fn finishing_a_too_long_line_ends_its_skipping() {
        let mut buffer = LineBuffer::default();
        let mut out = Vec::new();
        buffer.push(b"abcdefgh", 4, |p| out.push(p.map(got)));
        assert!(buffer.is_pending(), "still skipping up to the newline");
        buffer.finish(|_| panic!("a too-long line was reported already"));
        buffer.push(b"ok\n", 4, |p| out.push(p.map(got)));
        assert_eq!(out, vec![Err(LineTooLong { max: 4 }), line(b"ok")]);
    }

    fn control_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b'\n'),
                Just(b'\r'),
                Just(b';'),
                Just(b' '),
                Just(b'a'),
                Just(b'u'),
                Just(b't'),
                Just(b'h'),
                Just(b'='),
                Just(b'{'),
                any::<u8>()
            ],
            0..200,
        )
    }

    /// Cuts `input` at `cuts` (any order, any value) into consecutive pieces.
    fn pieces(input: &[u8], cuts: Vec<usize>) -> Vec<&[u8]> {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
        cuts.sort_unstable();
        let bounds: Vec<usize> = std::iter::once(0).chain(cuts).chain(std::iter::once(input.len())).collect();
        bounds.windows(2).map(|w| &input[w[0]..w[1]]).collect()
    }

    /// The separators a publisher may choose, a blank one included.
    fn separator() -> impl Strategy<Value = Option<u8>> {
        prop_oneof![
            Just(None),
            Just(Some(b';')),
            Just(Some(b' ')),
            Just(Some(b'\r')),
            any::<u8>().prop_map(Some)
        ]
    }

    fn buffer(separator: Option<u8>) -> LineBuffer {
        separator.map_or_else(LineBuffer::default, LineBuffer::new)
    }

    proptest! {
        #[test]
        fn whole_and_byte_by_byte_give_the_same_pieces(
            input in control_bytes(),
            separator in separator(),
            max_line in 0usize..20,
        ) {
            let whole = feed(buffer(separator), [&input[..]], max_line);
            let bytes = feed(buffer(separator), input.chunks(1), max_line);
            prop_assert_eq!(whole, bytes);
        }

        #[test]
        fn arbitrary_pieces_give_the_same_pieces(
            input in control_bytes(),
            cuts in proptest::collection::vec(0usize..200, 0..12),
            separator in separator(),
            max_line in 0usize..20,
        ) {
            let whole = feed(buffer(separator), [&input[..]], max_line);
            prop_assert_eq!(whole, feed(buffer(separator), pieces(&input, cuts), max_line));
        }

        #[test]
        fn pieces_hold_no_lf_and_respect_the_limit(
            input in control_bytes(),
            separator in separator(),
            max_line in 0usize..20,
        ) {
            for (bytes, _) in feed(buffer(separator), [&input[..]], max_line).into_iter().flatten() {
                prop_assert!(!bytes.contains(&b'\n'));
                prop_assert!(bytes.len() <= max_line);
            }
        }

        /// With room enough, the pieces of a line joined with the separator are the line that
        /// framing on `\n` alone gives; a line cut in pieces is never an auth line, nor a line
        /// that starts with `{`.
        #[test]
        fn each_line_is_its_pieces_joined_and_an_auth_line_is_never_cut(
            input in control_bytes(),
            separator in prop_oneof![Just(b';'), Just(b' '), Just(b'='), Just(b'a')],
        ) {
            for raw in input.split(|b| *b == b'\n') {
                let raw = [raw, b"\n"].concat();
                let [Ok((line, true))] = &run([&raw[..]], raw.len())[..] else {
                    panic!("one line from {raw:?}");
                };
                let pieces: Vec<(Vec<u8>, bool)> =
                    feed(LineBuffer::new(separator), [&raw[..]], raw.len()).into_iter().map(Result::unwrap).collect();
                let joined = pieces.iter().map(|(bytes, _)| &bytes[..]).collect::<Vec<_>>().join(&separator);
                prop_assert_eq!(&joined, line);
                let whole = pieces.len() == 1;
                prop_assert!(pieces.iter().all(|(_, w)| *w == whole));
                prop_assert!(whole || auth_secret(line).is_none());
                let opens_json = line.trim_ascii_start().first() == Some(&b'{');
                prop_assert!(whole || !opens_json, "a line that may be JSON was cut");
            }
        }
    }
}
