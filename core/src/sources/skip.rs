//! Finding where a JSON value ends without parsing it, for the walk over a batch that finds its
//! records ([`lazy`](super::lazy)).
//!
//! A record's strings (a Kinesis record's base64 data is most of it) are skipped with a
//! vectorized search for the next quote or backslash, four to five times as fast as a parser's
//! skipping. Nothing is validated: each record is parsed, and so checked, when its window is
//! taken, and a value this misreads leaves the walk off the payload's `,`/`]` structure, which
//! then parses the batch whole.

/// The offset after any JSON whitespace (which has no form feed) at `at`.
pub(crate) fn ws(b: &[u8], mut at: usize) -> usize {
    while b
        .get(at)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
    }
    at
}

/// The offset after the string whose opening quote is at `at`.
fn string(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        let j = i + memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[j] == b'"' {
            return Some(j + 1);
        }
        // an escape: the byte after the backslash is never the string's end
        i = j + 2;
    }
}

/// The offset after the value that starts at `at`.
pub(crate) fn value(b: &[u8], at: usize) -> Option<usize> {
    match *b.get(at)? {
        b'"' => string(b, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match *b.get(i)? {
                    b'"' => {
                        i = string(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        // a number, true, false or null
        _ => {
            let len = b
                .get(at..)?
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(b.len() - at);
            (len > 0).then_some(at + len)
        }
    }
}

/// Walks the object that starts at `at`, handing `field` each key (as written, `None` for one
/// with an escape, which this does not read) and where its value starts; `field` says where
/// the value ends. The offset after the object.
pub(crate) fn object(
    b: &[u8],
    at: usize,
    mut field: impl FnMut(Option<&[u8]>, usize) -> Option<usize>,
) -> Option<usize> {
    if *b.get(at)? != b'{' {
        return None;
    }
    let mut i = ws(b, at + 1);
    if *b.get(i)? == b'}' {
        return Some(i + 1);
    }
    loop {
        if *b.get(i)? != b'"' {
            return None;
        }
        let key_end = string(b, i)?;
        let key = b.get(i + 1..key_end - 1)?;
        let key = (!key.contains(&b'\\')).then_some(key);
        i = ws(b, key_end);
        if *b.get(i)? != b':' {
            return None;
        }
        i = ws(b, field(key, ws(b, i + 1))?);
        match *b.get(i)? {
            b',' => i = ws(b, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_ends_where_a_parser_says_it_does() {
        for json in [
            r#""plain""#,
            r#""esc\"aped \\ \\\" \u0041""#,
            r#"{"a":[1,2,{"b":"}]"}],"c":"\\"}"#,
            r#"[]"#,
            r#"{}"#,
            r#"-12.5e3"#,
            r#"true"#,
            r#"null"#,
            r#"[ {"x" : [ "[" , "{" ] } , 3 ]"#,
        ] {
            let text = format!("{json} ,");
            let (_, end) = super::super::value_at::<serde::de::IgnoredAny>(&text, 0).unwrap();
            assert_eq!(value(text.as_bytes(), 0), Some(end), "{json}");
        }
    }

    /// A value of up to `depth` levels from a small generator (xorshift): strings with quotes,
    /// backslashes, brackets and non-ASCII text, numbers, literals, arrays and objects.
    fn generated(seed: &mut u64, depth: u32) -> serde_json::Value {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let pieces = [
            "a",
            "\"",
            "\\",
            "{",
            "]",
            "é",
            "\u{1F600}",
            ",",
            " ",
            "\n",
            "x\\\"",
        ];
        match next() % if depth == 0 { 4 } else { 6 } {
            0 => serde_json::Value::Null,
            1 => serde_json::json!(next() % 1000 == 0),
            2 => serde_json::json!((next() % 100_000) as f64 / 7.0 - 5_000.0),
            3 => {
                let n = next() % 6;
                let text: String = (0..n).map(|_| pieces[(next() % 11) as usize]).collect();
                serde_json::Value::String(text)
            }
            4 => {
                let n = next() % 4;
                serde_json::Value::Array((0..n).map(|_| generated(seed, depth - 1)).collect())
            }
            _ => {
                let n = next() % 4;
                let map = (0..n)
                    .map(|i| {
                        (
                            format!("k{i}{}", pieces[(i % 11) as usize]),
                            generated(seed, depth - 1),
                        )
                    })
                    .collect();
                serde_json::Value::Object(map)
            }
        }
    }

    #[test]
    fn generated_values_end_where_a_parser_says_they_do() {
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2_000 {
            let value = generated(&mut seed, 4);
            for text in [
                serde_json::to_string(&value).unwrap(),
                serde_json::to_string_pretty(&value).unwrap(),
            ] {
                let text = format!("{text}\n,");
                let (_, end) = super::super::value_at::<serde::de::IgnoredAny>(&text, 0).unwrap();
                assert_eq!(value_end(&text), Some(end), "{text}");
            }
        }
    }

    fn value_end(text: &str) -> Option<usize> {
        value(text.as_bytes(), 0)
    }

    #[test]
    fn what_ends_early_is_none() {
        for json in [r#""open"#, r#"{"a":[1,2"#, r#"]"#, r#""a\"#, ""] {
            assert_eq!(value(json.as_bytes(), 0), None, "{json}");
        }
    }

    #[test]
    fn an_objects_fields_are_handed_over_with_their_values() {
        let json = br#"{ "a" : 1 , "b\"c":{"d":"x"}, "e":"y" }"#;
        let mut seen = Vec::new();
        let end = object(json, 0, |key, at| {
            let end = value(json, at)?;
            seen.push((
                key.map(|k| String::from_utf8_lossy(k).into_owned()),
                String::from_utf8_lossy(&json[at..end]).into_owned(),
            ));
            Some(end)
        });
        assert_eq!(end, Some(json.len()));
        let expected = [
            (Some("a"), "1"),
            (None, r#"{"d":"x"}"#),
            (Some("e"), r#""y""#),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(k, v)| (k.map(str::to_owned), (*v).to_owned()))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(object(b"{}", 0, |_, _| None), Some(2));
        assert_eq!(object(b"[1]", 0, |_, at| Some(at)), None);
        assert_eq!(
            object(br#"{"a" 1}"#, 0, |_, at| value(br#"{"a" 1}"#, at)),
            None
        );
    }
}
