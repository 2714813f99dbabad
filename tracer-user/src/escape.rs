//! Escaping for strings an attacker controls (process names, cgroup paths, pod names) before
//! they reach a terminal: no control characters, no invalid UTF-8, and nothing invisible that
//! could reorder or hide what is shown (bidi controls, zero-width and other format characters).

/// Printable text stays as is. `\n` and `\t` keep their usual escapes, other control
/// characters and invalid bytes become `\xNN` (each byte), invisible characters `\u{NNNN}`,
/// and a backslash is doubled so the escape is unambiguous.
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
                c if is_invisible(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Characters a terminal draws as nothing, or that change how the rest of the line is drawn:
/// Unicode's format characters (general category Cf: bidi embeddings, overrides, isolates and
/// marks, zero-width spaces and joiners, the byte order mark, tags), line and paragraph
/// separators, and the fillers and selectors that render blank.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{034f}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061c}'
            | '\u{06dd}'
            | '\u{070f}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08e2}'
            | '\u{115f}'..='\u{1160}'
            | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
    )
}

/// Lossy UTF-8 (U+FFFD for each invalid sequence): how tenant-named bytes become text for
/// structured output and labels (JSON and the exposition escape the rest themselves).
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
        assert_eq!(for_terminal("\u{fffd}".as_bytes()), "\u{fffd}");
    }

    #[test]
    fn control_and_invalid_bytes_are_escaped() {
        assert_eq!(for_terminal(b"a\"b\nc{}"), "a\"b\\nc{}");
        assert_eq!(for_terminal(b"\x1b[2J"), "\\x1b[2J");
        assert_eq!(for_terminal(b"\xff\\"), "\\xff\\\\");
        assert_eq!(for_terminal("\u{85}".as_bytes()), "\\xc2\\x85");
    }

    #[test]
    fn bidi_and_zero_width_characters_are_escaped() {
        assert_eq!(
            for_terminal("evil\u{202e}txt.exe".as_bytes()),
            "evil\\u{202e}txt.exe"
        );
        for c in [
            '\u{202a}',
            '\u{202b}',
            '\u{202c}',
            '\u{202d}',
            '\u{202e}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{200e}',
            '\u{200f}',
            '\u{061c}',
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{2060}',
            '\u{feff}',
            '\u{2028}',
            '\u{2029}',
            '\u{e0041}',
        ] {
            let shown = for_terminal(c.to_string().as_bytes());
            assert_eq!(shown, format!("\\u{{{:x}}}", c as u32));
        }
    }
}

/// Random and hostile bytes: nothing a terminal would act on or hide gets through.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn nothing_invisible_reaches_the_terminal(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let shown = for_terminal(&bytes);
            prop_assert!(!shown.chars().any(|c| c.is_control() || is_invisible(c)), "{:?}", shown);
        }

        #[test]
        fn hostile_text_never_hides(text in any::<String>()) {
            let shown = for_terminal(text.as_bytes());
            prop_assert!(!shown.chars().any(|c| c.is_control() || is_invisible(c)), "{:?}", shown);
        }

        #[test]
        fn printable_ascii_is_unchanged(text in "[ -\\[\\]-~]{0,64}") {
            prop_assert_eq!(for_terminal(text.as_bytes()), text);
        }
    }
}
