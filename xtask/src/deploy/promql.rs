//! A PromQL lexer just deep enough to find the metric names an expression selects.

use std::collections::BTreeSet;

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// keywords, label names (in `{}` or after `by`/`on`/...) or durations.
pub(super) fn metric_names(expr: &str) -> BTreeSet<String> {
    // Binary operators, and aggregations, which may be followed by `by (...)` before `(`.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its match, over quoted strings.
    let skip_group = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => i = skip_string(&chars, i),
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i) + 1;
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (`30m`, `1e6`, `0x1f`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if call && LABEL_LISTS.contains(&ident.as_str()) {
                i = skip_group(next, '(', ')');
            } else if !call && !KEYWORDS.contains(&ident.to_ascii_lowercase().as_str()) {
                names.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index of the closing quote of the string opening at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn metric_names_skip_functions_labels_and_durations() {
        assert_eq!(
            names(r#"sum by (node, le) (rate(a_bucket{node=~"x|y", le!="+Inf"}[5m] offset 1h))"#),
            ["a_bucket"]
        );
        assert_eq!(
            names("a - a offset 30m >= 5 and on (instance) group_left(pid) b:rec > bool 1e6"),
            ["a", "b:rec"]
        );
        assert_eq!(
            names(r#"min_over_time(deriv(x[10m])[30m:1m]) or absent(up{job="a}b"}) unless c"#),
            ["c", "up", "x"]
        );
        assert_eq!(
            names(r#"label_replace(m, "dst", "$1", "src", "(.*)") / ignoring(a) n"#),
            ["m", "n"]
        );
    }
}
