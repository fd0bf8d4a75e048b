//! Where a request head ends, found across reads without parsing it.

/// Finds the end of a request head (the first empty line after a non-empty one; empty
/// lines before the request line are skipped, as `httparse` skips them), across reads.
#[derive(Debug, Default)]
pub(super) struct HeadEnd {
    /// A non-empty line was seen.
    started: bool,
    /// Bytes since the last `\n`.
    line: usize,
    /// The last byte seen.
    last: u8,
}

impl HeadEnd {
    /// Feed the next bytes; where in them the head ends, if it does.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut from = 0;
        for i in memchr::memchr_iter(b'\n', bytes) {
            let len = self.line + (i - from);
            let before = if i > from { bytes[i - 1] } else { self.last };
            let empty = len == 0 || (len == 1 && before == b'\r');
            if !empty {
                self.started = true;
            } else if self.started {
                return Some(i + 1);
            }
            self.line = 0;
            from = i + 1;
        }
        self.line += bytes.len() - from;
        if let Some(&b) = bytes.last() {
            self.last = b;
        }
        None
    }
}
