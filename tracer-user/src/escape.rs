//! Escaping for strings an attacker controls (process names, cgroup paths) before they reach
//! a terminal: no control characters, no invalid UTF-8.

/// Printable text stays as is; anything else becomes `\n`, `\t` or `\xNN`, and a backslash is
/// doubled so the escape is unambiguous.
pub fn for_terminal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => {
                    for b in c.to_string().bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Lossy UTF-8 for structured output (JSON escapes the rest itself).
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(for_terminal(b"nginx: worker"), "nginx: worker");
        assert_eq!(for_terminal("caf\u{e9}".as_bytes()), "caf\u{e9}");
    }

    #[test]
    fn control_and_invalid_bytes_are_escaped() {
        assert_eq!(for_terminal(b"a\"b\nc{}"), "a\"b\\nc{}");
        assert_eq!(for_terminal(b"\x1b[2J"), "\\x1b[2J");
        assert_eq!(for_terminal(b"\xff\\"), "\\xff\\\\");
        assert_eq!(for_terminal("\u{85}".as_bytes()), "\\xc2\\x85");
    }
}
