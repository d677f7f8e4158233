//! Case folding the way lenient JSON readers match object keys.
//!
//! Go's `encoding/json` (and so the official Go SDK) matches a key to a struct field ignoring case,
//! with Unicode simple folding: `Arguments`, `ARGUMENTS` and `argumentſ` (U+017F) all fill the
//! `arguments` field, and `K` (U+212A) reads as `k`. The sidecar reads keys exactly, so a key that
//! folds to one it reads, without being it, is a key the sidecar and the server would disagree on.

/// `s` folded: every character upper-cased then lower-cased (`ſ` → `S` → `s`, `K` → `k`).
pub fn fold(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    s.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether `key` folds to `target` without being exactly `target`.
pub fn is_variant_of(key: &str, target: &str) -> bool {
    if key == target {
        return false;
    }
    if key.is_ascii() {
        return key.eq_ignore_ascii_case(target);
    }
    fold(key) == fold(target)
}

/// The first of `targets` that `key` is a variant of.
pub fn variant_among<'t>(key: &str, targets: &[&'t str]) -> Option<&'t str> {
    targets.iter().copied().find(|t| is_variant_of(key, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_what_go_would_match() {
        for key in ["Arguments", "ARGUMENTS", "argumentſ", "ArgumentS"] {
            assert!(is_variant_of(key, "arguments"), "{key}");
        }
        assert!(is_variant_of("\u{212a}ind", "kind"), "Kelvin sign");
        assert!(is_variant_of("ID", "id"));
        assert!(is_variant_of("protocolversion", "protocolVersion"));
        assert!(!is_variant_of("arguments", "arguments"), "the key itself");
        assert!(!is_variant_of("argument", "arguments"));
        assert!(!is_variant_of("argumentsx", "arguments"));
        assert_eq!(variant_among("Method", &["id", "method"]), Some("method"));
        assert_eq!(variant_among("method", &["id", "method"]), None);
    }
}
