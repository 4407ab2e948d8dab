//! Redis glob patterns, as `SCAN … MATCH` takes them: `*` any run of bytes, `?` one byte,
//! `[abc]`, `[^abc]`, `[a-z]` a class, `\x` the byte `x` itself. Matching works on bytes.

/// Whether `key` matches `pattern`.
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    // Greedy match that backtracks only to the last `*`: enough for globs, and linear in
    // practice (worst case pattern length × key length, both bounded by the request limits).
    let (mut p, mut i) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while i < key.len() {
        if p < pattern.len() {
            if pattern[p] == b'*' {
                last_star = Some((p, i));
                p += 1;
                continue;
            }
            if let Some(next) = match_one(pattern, p, key[i]) {
                p = next;
                i += 1;
                continue;
            }
        }
        match last_star {
            Some((sp, si)) => {
                p = sp + 1;
                i = si + 1;
                last_star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether the one pattern element at `p` (not a `*`) matches byte `c`; if so, where the next
/// element starts.
fn match_one(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c).then_some(p + 2),
        b'[' => {
            let mut q = p + 1;
            let negate = pattern.get(q) == Some(&b'^');
            if negate {
                q += 1;
            }
            let mut hit = false;
            while q < pattern.len() && pattern[q] != b']' {
                if pattern[q] == b'\\' && q + 1 < pattern.len() {
                    hit |= pattern[q + 1] == c;
                    q += 2;
                } else if q + 2 < pattern.len() && pattern[q + 1] == b'-' && pattern[q + 2] != b']'
                {
                    let (lo, hi) = (
                        pattern[q].min(pattern[q + 2]),
                        pattern[q].max(pattern[q + 2]),
                    );
                    hit |= (lo..=hi).contains(&c);
                    q += 3;
                } else {
                    hit |= pattern[q] == c;
                    q += 1;
                }
            }
            // An unterminated class runs to the end of the pattern, as in Redis.
            (hit != negate).then_some((q + 1).min(pattern.len()))
        }
        literal => (literal == c).then_some(p + 1),
    }
}

/// The bytes every match of `pattern` starts with, so a scan can begin there instead of at
/// the start of the key space.
pub fn literal_prefix(pattern: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::new();
    let mut p = 0;
    while p < pattern.len() {
        match pattern[p] {
            b'*' | b'?' | b'[' => break,
            b'\\' if p + 1 < pattern.len() => {
                prefix.push(pattern[p + 1]);
                p += 2;
            }
            c => {
                prefix.push(c);
                p += 1;
            }
        }
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_glob_semantics() {
        let yes: &[(&str, &str)] = &[
            ("*", ""),
            ("*", "anything"),
            ("h?llo", "hello"),
            ("h*llo", "heeeello"),
            ("h*llo", "hllo"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("a\\*b", "a*b"),
            ("*a*b*", "xxaxxbxx"),
            ("user:*:name", "user:42:name"),
            ("[\\]]", "]"),
        ];
        for (p, k) in yes {
            assert!(matches(p.as_bytes(), k.as_bytes()), "{p} should match {k}");
        }
        let no: &[(&str, &str)] = &[
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("a\\*b", "axb"),
            ("abc", "abcd"),
            ("*a", "ab"),
            ("", "a"),
            ("[abc", "d"),
        ];
        for (p, k) in no {
            assert!(
                !matches(p.as_bytes(), k.as_bytes()),
                "{p} should not match {k}"
            );
        }
    }

    #[test]
    fn prefix_stops_at_the_first_wildcard() {
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"a\\*b?"), b"a*b");
        assert_eq!(literal_prefix(b"[ab]c"), b"");
        assert_eq!(literal_prefix(b"exact"), b"exact");
    }
}
