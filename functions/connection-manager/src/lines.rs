//! Splits an upstream byte stream into messages, one per line.

/// Splits chunks into newline-delimited messages. Blank lines are keepalives and skipped; a line
/// longer than the limit, or not UTF-8, is garbage: discarded whole and counted.
#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    max_line: usize,
    discarding: bool,
    discarded: u64,
}

impl Splitter {
    /// A splitter for lines of at most `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Splitter {
            buf: Vec::new(),
            max_line,
            discarding: false,
            discarded: 0,
        }
    }

    /// Lines discarded as garbage so far.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Forgets a partial line (the connection it came from is gone).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// Feeds a chunk; returns the complete messages it finishes.
    ///
    /// ```
    /// let mut s = connection_manager::lines::Splitter::new(16);
    /// assert_eq!(s.push(b"a\n\nb"), vec!["a".to_string()]);
    /// assert_eq!(s.push(b"c\r\n"), vec!["bc".to_string()]);
    /// ```
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(at);
            rest = &tail[1..];
            if self.discarding {
                self.discarding = false;
                continue;
            }
            self.buf.extend_from_slice(line);
            let whole = std::mem::take(&mut self.buf);
            let text = whole.strip_suffix(b"\r").unwrap_or(&whole);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if text.len() > self.max_line {
                self.discarded += 1;
                continue;
            }
            match String::from_utf8(text.to_vec()) {
                Ok(message) => out.push(message),
                Err(_) => self.discarded += 1,
            }
        }
        if !self.discarding {
            self.buf.extend_from_slice(rest);
            if self.buf.len() > self.max_line {
                self.buf.clear();
                self.discarding = true;
                self.discarded += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Splitter;

    #[test]
    fn keepalives_partial_lines_and_garbage() {
        let mut s = Splitter::new(8);
        assert_eq!(s.push(b"\n\r\n  \none\ntw"), ["one"]);
        assert_eq!(s.push(b"o\n"), ["two"]);
        // a line over the limit, arriving in pieces, is dropped whole
        assert!(s.push(b"0123456789").is_empty());
        assert!(s.push(b"abc").is_empty());
        assert_eq!(s.push(b"def\nok\n"), ["ok"]);
        assert_eq!(s.push(b"\xff\xfe\nfine\n"), ["fine"]);
        assert_eq!(s.discarded(), 2);
    }
}
