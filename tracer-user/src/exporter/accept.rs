//! Content negotiation of `/metrics`: the `Accept` header's media ranges and their weights
//! (RFC 9110, section 12.5.1), as bytes a scraper chooses (not necessarily text).

/// OpenMetrics when the header weighs it above zero and at least as high as the text format
/// (`text/plain`, `text/*`, `*/*`); the text format otherwise, also when nothing is acceptable
/// (an answer in the default format is more use to a scraper than a 406).
pub fn wants_openmetrics<'a>(accept: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let mut openmetrics = None;
    let mut text = None;
    for range in accept
        .into_iter()
        .flat_map(|value| split_unquoted(value, b','))
    {
        let Some((media_type, weight)) = media_range(range) else {
            continue;
        };
        let best = if media_type.eq_ignore_ascii_case(b"application/openmetrics-text") {
            &mut openmetrics
        } else if [&b"text/plain"[..], b"text/*", b"*/*"]
            .iter()
            .any(|t| media_type.eq_ignore_ascii_case(t))
        {
            &mut text
        } else {
            continue;
        };
        *best = (*best).max(Some(weight));
    }
    openmetrics.is_some_and(|q| q > 0 && Some(q) >= text)
}

/// A media range's type and weight in thousandths (1000 without `q`); None when it is not
/// one (an empty element, a weight that is not a qvalue).
fn media_range(range: &[u8]) -> Option<(&[u8], u16)> {
    let mut parts = split_unquoted(range, b';').map(<[u8]>::trim_ascii);
    let media_type = parts.next().filter(|t| !t.is_empty())?;
    let mut weight = 1000;
    for parameter in parts {
        let Some((name, value)) = parameter.split_at_checked(2) else {
            continue;
        };
        if name.eq_ignore_ascii_case(b"q=") {
            weight = qvalue(value)?;
        }
    }
    Some((media_type, weight))
}

/// `0`, `0.5`, `1.000`: at most three decimals, at most 1.
fn qvalue(text: &[u8]) -> Option<u16> {
    let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &b""[..]),
    };
    let whole = match whole {
        b"0" => 0,
        b"1" => 1000,
        _ => return None,
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let thousandths = fraction
        .iter()
        .chain(std::iter::repeat(&b'0'))
        .take(3)
        .fold(0u16, |n, digit| n * 10 + u16::from(digit - b'0'));
    (whole == 0 || thousandths == 0).then_some(whole + thousandths)
}

/// Splits at `separator` outside double-quoted strings (a parameter value may hold one).
fn split_unquoted(bytes: &[u8], separator: u8) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    let mut escaped = false;
    bytes.split(move |&b| {
        match (escaped, quoted, b) {
            (true, _, _) => escaped = false,
            (false, true, b'\\') => escaped = true,
            (false, _, b'"') => quoted = !quoted,
            (false, false, b) if b == separator => return true,
            _ => {}
        }
        false
    })
}

/// Random and hostile `Accept` headers: never a panic, and the choice follows the weights.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const OPENMETRICS: &str = "application/openmetrics-text";
    const TEXT: [&str; 3] = ["text/plain", "text/*", "*/*"];
    const OTHER: [&str; 3] = ["application/json", "text/html", "application/*"];

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..128)
    }

    /// A media range of a known kind, in any letter case, with a weight or none, other
    /// parameters (a quoted one may hold commas and semicolons) and spaces around them.
    fn range() -> impl Strategy<Value = (String, Option<u16>)> {
        let media = prop::sample::select(
            std::iter::once(OPENMETRICS)
                .chain(TEXT)
                .chain(OTHER)
                .collect::<Vec<_>>(),
        );
        let weight = prop::option::of(0..=1000u16);
        let parameter = prop::sample::select(vec![
            "",
            ";version=1.0.0",
            "; version=0.0.4",
            ";escaping=\"a,b;q=1\"",
            ";charset=utf-8",
        ]);
        (media, weight, parameter, any::<bool>(), " {0,2}").prop_map(
            |(media, weight, parameter, upper, space)| {
                let media = if upper {
                    media.to_uppercase()
                } else {
                    media.to_owned()
                };
                let q = weight.map_or(String::new(), |q| {
                    let decimals = format!("{:03}", q % 1000);
                    format!(
                        "{space};{space}q={}.{}",
                        q / 1000,
                        decimals.trim_end_matches('0')
                    )
                });
                let text = format!("{media}{parameter}{q}");
                (text, weight)
            },
        )
    }

    /// What the weights ask for, computed from the generated ranges rather than parsed.
    fn expected(ranges: &[(String, Option<u16>)]) -> bool {
        let best = |kinds: &[&str]| {
            ranges
                .iter()
                .filter(|(text, _)| {
                    let media = text.split(';').next().unwrap_or_default().trim();
                    kinds.iter().any(|k| media.eq_ignore_ascii_case(k))
                })
                .map(|(_, q)| q.unwrap_or(1000))
                .max()
        };
        best(&[OPENMETRICS]).is_some_and(|q| q > 0 && Some(q) >= best(&TEXT))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn any_bytes_never_panic(values in prop::collection::vec(bytes(), 0..4)) {
            let _ = wants_openmetrics(values.iter().map(Vec::as_slice));
        }

        #[test]
        fn the_weights_decide(
            values in prop::collection::vec(prop::collection::vec(range(), 0..5), 0..3),
        ) {
            let headers: Vec<String> = values
                .iter()
                .map(|ranges| {
                    ranges.iter().map(|(text, _)| text.as_str()).collect::<Vec<_>>().join(", ")
                })
                .collect();
            let all: Vec<_> = values.concat();
            prop_assert_eq!(
                wants_openmetrics(headers.iter().map(String::as_bytes)),
                expected(&all),
                "{:?}",
                headers
            );
        }

        #[test]
        fn not_named_means_text(values in prop::collection::vec("[^o]{0,64}", 0..4)) {
            prop_assert!(!wants_openmetrics(values.iter().map(String::as_bytes)));
        }
    }

    #[test]
    fn q_zero_refuses_openmetrics() {
        for refused in [
            &b"application/openmetrics-text;q=0,text/plain;version=0.0.4"[..],
            b"application/openmetrics-text; version=1.0.0; q=0.000, text/plain;q=0.5",
            b"Application/OpenMetrics-Text;Q=0",
            b"text/plain;q=0.9,application/openmetrics-text;q=0.5",
        ] {
            assert!(
                !wants_openmetrics([refused]),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
        assert!(wants_openmetrics([
            b"text/plain;q=0.5,application/openmetrics-text;q=0.501".as_slice()
        ]));
    }

    #[test]
    fn scrapers_accept_headers() {
        let prometheus = b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics([prometheus.as_slice()]));
        assert!(!wants_openmetrics([b"text/plain;version=0.0.4".as_slice()]));
        assert!(!wants_openmetrics([]));
        assert!(wants_openmetrics([
            b"\xff".as_slice(),
            b"Application/OpenMetrics-Text; \xfe".as_slice()
        ]));
        // Not a qvalue: the range is ignored.
        assert!(!wants_openmetrics([
            b"application/openmetrics-text;q=2".as_slice()
        ]));
        assert!(!wants_openmetrics([
            b"application/openmetrics-text;q=0.1234".as_slice()
        ]));
    }
}
