//! One full validating scan of a JSON body before anything else reads it.
//!
//! The sidecar must read a message exactly as the server will, or a call could pass the gate as
//! one thing and run as another. So a body is refused unless it is strict JSON (RFC 8259) in
//! UTF-8 with no byte-order mark, no lone surrogate escapes, nesting at most `max_depth`, and no
//! object holding two keys that some server could read as the same key: keys are compared after
//! unescaping, after removing U+0000 and after case-folding.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;

/// Why a body is not JSON the sidecar can read with certainty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("the body is not valid UTF-8")]
    NotUtf8,
    #[error("the body starts with a byte-order mark")]
    ByteOrderMark,
    #[error("invalid JSON at byte {offset}: {what}")]
    Syntax { offset: usize, what: &'static str },
    #[error("JSON nesting deeper than {0} levels")]
    TooDeep(usize),
    #[error("duplicate key {key:?} in one object (keys are compared ignoring case and U+0000)")]
    DuplicateKey { key: String },
}

/// Validates `body`; `Ok` means every reader will see the same single JSON value.
pub fn validate(body: &[u8], max_depth: usize) -> Result<(), ScanError> {
    if body.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(ScanError::ByteOrderMark);
    }
    std::str::from_utf8(body).map_err(|_| ScanError::NotUtf8)?;
    let mut s = Scanner {
        b: body,
        i: 0,
        max_depth,
        keys: Vec::new(),
        hasher: RandomState::new(),
    };
    s.ws();
    s.value(0)?;
    s.ws();
    if s.i != body.len() {
        return Err(s.err("unexpected data after the JSON value"));
    }
    Ok(())
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    max_depth: usize,
    /// Folded keys of the objects being scanned, innermost last (one stack, reused), as 64-bit
    /// hashes under a per-scan random key: working memory is 8 bytes per key of the objects
    /// open at once, whatever the keys' length. (Two different keys sharing a hash would refuse
    /// a body as a duplicate; with 64 bits and a key no client knows, that does not happen.)
    keys: Vec<u64>,
    hasher: RandomState,
}

impl<'a> Scanner<'a> {
    fn err(&self, what: &'static str) -> ScanError {
        ScanError::Syntax {
            offset: self.i,
            what,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), ScanError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), ScanError> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string(None),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expected a value")),
            None => Err(self.err("unexpected end of input")),
        }
    }

    fn literal(&mut self, lit: &'static [u8]) -> Result<(), ScanError> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("invalid number"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("invalid number"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    /// Scans an object key and returns its folded form. Most keys are plain lowercase ASCII with
    /// no escape: those are borrowed from the body as they are.
    fn key(&mut self) -> Result<Cow<'a, str>, ScanError> {
        let start = self.i + 1;
        let mut j = start;
        while let Some(&c) = self.b.get(j) {
            if c == b'"' {
                let raw = &self.b[start..j];
                if raw
                    .iter()
                    .all(|c| c.is_ascii() && !c.is_ascii_uppercase() && *c >= 0x20)
                {
                    self.i = j + 1;
                    // ASCII checked above, so this cannot fail.
                    return Ok(Cow::Borrowed(std::str::from_utf8(raw).unwrap_or_default()));
                }
                break;
            }
            if c == b'\\' || c < 0x20 || !c.is_ascii() || c.is_ascii_uppercase() {
                break;
            }
            j += 1;
        }
        let mut folded = String::new();
        self.string(Some(&mut folded))?;
        Ok(Cow::Owned(folded))
    }

    /// Scans a string; with `key`, also writes its folded form there for duplicate checks.
    fn string(&mut self, mut key: Option<&mut String>) -> Result<(), ScanError> {
        self.i += 1; // opening quote
        loop {
            let start = self.i;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            if let Some(k) = key.as_deref_mut() {
                // Input is valid UTF-8 and we stopped at ASCII bytes, so this slice is whole chars.
                let chunk = std::str::from_utf8(&self.b[start..self.i]).unwrap_or_default();
                fold_into(k, chunk);
            }
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.i += 1;
                    let ch = self.escape()?;
                    if let (Some(k), Some(ch)) = (key.as_deref_mut(), ch) {
                        let mut buf = [0u8; 4];
                        fold_into(k, ch.encode_utf8(&mut buf));
                    }
                }
                Some(_) => return Err(self.err("control character in a string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    /// After a backslash: returns the escaped character.
    fn escape(&mut self) -> Result<Option<char>, ScanError> {
        let c = self.peek().ok_or_else(|| self.err("unterminated string"))?;
        self.i += 1;
        let ch = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if !self.b[self.i..].starts_with(b"\\u") {
                        return Err(self.err("lone surrogate in a \\u escape"));
                    }
                    self.i += 2;
                    let lo = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(self.err("lone surrogate in a \\u escape"));
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else if (0xDC00..0xE000).contains(&hi) {
                    return Err(self.err("lone surrogate in a \\u escape"));
                } else {
                    hi
                };
                return Ok(char::from_u32(code));
            }
            _ => return Err(self.err("invalid escape")),
        };
        Ok(Some(ch))
    }

    fn hex4(&mut self) -> Result<u32, ScanError> {
        let h = self
            .b
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        // Exactly four hex digits: `from_str_radix` alone would also take a sign (`\u+0e9`).
        let v = h.iter().try_fold(0u32, |v, &c| {
            (c as char)
                .to_digit(16)
                .map(|d| v * 16 + d)
                .ok_or_else(|| self.err("invalid \\u escape"))
        })?;
        self.i += 4;
        Ok(v)
    }

    fn array(&mut self, depth: usize) -> Result<(), ScanError> {
        if depth > self.max_depth {
            return Err(ScanError::TooDeep(self.max_depth));
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), ScanError> {
        if depth > self.max_depth {
            return Err(ScanError::TooDeep(self.max_depth));
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        // Keys of this object sit on the shared stack from `base`; a large object also gets a set.
        let base = self.keys.len();
        let mut set: Option<HashSet<u64>> = None;
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let key = self.key()?;
            let h = self.hasher.hash_one(&key);
            let dup = match &mut set {
                Some(set) => !set.insert(h),
                None => {
                    let dup = self.keys[base..].contains(&h);
                    self.keys.push(h);
                    if self.keys.len() - base > 16 {
                        set = Some(self.keys[base..].iter().copied().collect());
                        self.keys.truncate(base);
                    }
                    dup
                }
            };
            if dup {
                return Err(ScanError::DuplicateKey {
                    key: key.into_owned(),
                });
            }
            self.ws();
            self.expect(b':', "expected ':'")?;
            self.ws();
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    self.keys.truncate(base);
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }
}

/// Appends `s` case-folded (upper- then lower-cased, so `ſ` folds to `s` as in Go), without
/// U+0000.
fn fold_into(out: &mut String, s: &str) {
    if s.is_ascii() {
        out.extend(
            s.bytes()
                .filter(|&b| b != 0)
                .map(|b| b.to_ascii_lowercase() as char),
        );
    } else {
        out.extend(
            s.chars()
                .filter(|&c| c != '\0')
                .flat_map(char::to_uppercase)
                .flat_map(char::to_lowercase),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> bool {
        validate(s.as_bytes(), 64).is_ok()
    }

    #[test]
    fn accepts_what_strict_json_parsers_accept() {
        for s in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":[1,2.5e-3,-0,true,false,null,"\u00e9\ud83d\ude00\n"]}}}"#,
            "  [ ]  ",
            "\"x\"",
            "0",
            r#"{"a":{"a":{"a":1}}}"#,
        ] {
            assert!(ok(s), "{s}");
            serde_json::from_str::<serde_json::Value>(s).expect("serde agrees");
        }
    }

    #[test]
    fn refuses_what_some_parser_would_read_differently() {
        let cases: &[(&[u8], &str)] = &[
            (b"{\"a\":1,}", "trailing comma"),
            (b"{'a':1}", "single quotes"),
            (b"{\"a\":01}", "leading zero"),
            (b"{\"a\":NaN}", "NaN"),
            (b"{\"a\":1} x", "trailing data"),
            (b"{\"a\":\"\x01\"}", "raw control char"),
            (b"{\"a\":\"\\u+0e9\"}", "a sign in a \\u escape"),
            (b"{\"a\":\"\\u-0e9\"}", "a minus sign in a \\u escape"),
            (b"{\"a\":\"\\x41\"}", "bad escape"),
            (b"{\"a\":\"\\ud800\"}", "lone high surrogate"),
            (b"{\"a\":\"\\udc00x\"}", "lone low surrogate"),
            (b"{\"a\":\"\xff\"}", "invalid UTF-8"),
            (b"\xEF\xBB\xBF{}", "byte-order mark"),
            (b"", "empty"),
            (b"{\"a\":1", "unterminated"),
            (b"{\"a\" 1}", "missing colon"),
            (b"[1 2]", "missing comma"),
            (b"-", "bare minus"),
            (b"1.", "bare dot"),
            (b"1e", "bare exponent"),
        ];
        for (body, what) in cases {
            assert!(validate(body, 64).is_err(), "{what} should be refused");
        }
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth_and_after_folding() {
        for s in [
            r#"{"a":1,"a":2}"#,
            r#"{"params":{"name":"x","name":"y"}}"#,
            r#"[{"ok":1},{"deep":{"x":1,"X":2}}]"#,
            r#"{"method":"a","Method":"b"}"#,
            r#"{"name":"a","na\u0000me":"b"}"#,
            r#"{"name":"a","\u006eame":"b"}"#,
            r#"{"ÉTÉ":1,"été":2}"#,
            r#"{"arguments":1,"argumentſ":2}"#,
            r#"{"kind":1,"\u212aind":2}"#,
        ] {
            assert!(
                matches!(
                    validate(s.as_bytes(), 64),
                    Err(ScanError::DuplicateKey { .. })
                ),
                "{s}"
            );
        }
        // Many keys switch to a set; a duplicate there is still found.
        let mut many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":1")).collect();
        assert!(ok(&format!("{{{}}}", many.join(","))));
        many.push("\"K7\":2".into());
        assert!(validate(format!("{{{}}}", many.join(",")).as_bytes(), 64).is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert!(ok(&deep(64)));
        assert_eq!(
            validate(deep(65).as_bytes(), 64),
            Err(ScanError::TooDeep(64))
        );
        let obj = "{\"a\":".repeat(65) + "1" + &"}".repeat(65);
        assert_eq!(validate(obj.as_bytes(), 64), Err(ScanError::TooDeep(64)));
    }
}
