//! Tool-name globs: `*` matches any run of characters, `?` exactly one; everything else is literal.

/// A compiled glob. The literal prefix and suffix let most non-matching names be refused
/// without running the matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    prefix: String,
    suffix: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        let prefix: String = pattern
            .chars()
            .take_while(|c| !matches!(c, '*' | '?'))
            .collect();
        let rest = &pattern[prefix.len()..];
        let suffix = if rest.is_empty() {
            String::new()
        } else {
            let tail: Vec<char> = rest
                .chars()
                .rev()
                .take_while(|c| !matches!(c, '*' | '?'))
                .collect();
            tail.into_iter().rev().collect()
        };
        Glob {
            pattern: pattern.to_owned(),
            prefix,
            suffix,
        }
    }

    /// Whether the text holds a wildcard, i.e. whether it is a glob rather than a tool name.
    pub fn is_glob(text: &str) -> bool {
        text.contains(['*', '?'])
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, name: &str) -> bool {
        if !name.starts_with(&self.prefix) || !name.ends_with(&self.suffix) {
            return false;
        }
        if self.prefix.len() == self.pattern.len() {
            return name.len() == self.pattern.len();
        }
        wildcard_match(self.pattern.as_bytes(), name.as_bytes())
    }
}

/// Iterative matcher with single-star backtracking: linear in practice, never exponential.
/// `?` consumes one UTF-8 character, not one byte.
fn wildcard_match(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pat.len() && pat[p] == b'?' {
            p += 1;
            t += utf8_len(text[t]);
        } else if p < pat.len() && pat[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            let next = st + utf8_len(text[st]);
            star = Some((sp, next));
            p = sp + 1;
            t = next;
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&b| b == b'*')
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_and_question_mark() {
        let g = Glob::new("delete_*");
        assert!(g.matches("delete_file"));
        assert!(g.matches("delete_"));
        assert!(!g.matches("undelete_file"));
        assert!(Glob::new("*_file").matches("write_file"));
        assert!(!Glob::new("*_file").matches("write_files"));
        assert!(Glob::new("a*b*c").matches("axxbyyc"));
        assert!(!Glob::new("a*b*c").matches("axxbyy"));
        assert!(Glob::new("run_?").matches("run_é"));
        assert!(!Glob::new("run_?").matches("run_ab"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("exact").matches("exact"));
        assert!(!Glob::new("exact").matches("exactly"));
    }

    #[test]
    fn backtracking_does_not_blow_up() {
        let g = Glob::new("*a*a*a*a*a*a*a*b");
        assert!(!g.matches(&"a".repeat(5000)));
    }
}
