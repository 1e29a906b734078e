//! aws-lambda-stream's field compression: a value whose estimated size is over the threshold
//! (10 KB by default, `COMPRESSION_THRESHOLD`) is published as the string `COMPRESSED` followed
//! by the base64 of its JSON, gzipped. Sources restore such values before pipelines see them.
//!
//! ```
//! use lambda_stream::compression::{compress_value, decompress_value};
//! use serde_json::json;
//!
//! let mut event = json!({"id": "1", "type": "t", "thing": {"notes": "n".repeat(20_000)}});
//! compress_value(&mut event, 10 * 1024);
//! assert!(event["thing"].as_str().unwrap().starts_with("COMPRESSED"));
//! decompress_value(&mut event).unwrap();
//! assert_eq!(event["thing"]["notes"].as_str().unwrap().len(), 20_000);
//! ```

use std::io::{Read, Write};
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde_json::Value;

/// What marks a compressed value.
pub const COMPRESSION_PREFIX: &str = "COMPRESSED";

/// aws-lambda-stream's default threshold, in its size estimate.
pub const DEFAULT_THRESHOLD: usize = 10 * 1024;

/// True when `bytes` (an event's JSON) may hold a compressed value: the cheap test that keeps
/// the usual decode path free of a second pass.
pub fn may_hold_compressed(bytes: &[u8]) -> bool {
    // every record's payload is scanned: memchr's vectorized search costs a fraction of a
    // byte-by-byte window compare (12 % of the production path's instructions before), and
    // its searcher is built once, not per payload
    static MARKER: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"COMPRESSED"));
    MARKER.find(bytes).is_some()
}

/// Restores every compressed value in `value`, at any depth (a compressed value may itself be
/// a compressed string). An error names what did not unzip or parse.
pub fn decompress_value(value: &mut Value) -> Result<(), String> {
    match value {
        Value::String(s) if s.starts_with(COMPRESSION_PREFIX) => {
            let mut restored = unzip(&s[COMPRESSION_PREFIX.len()..])?;
            decompress_value(&mut restored)?;
            *value = restored;
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(decompress_value),
        Value::Object(map) => map.values_mut().try_for_each(decompress_value),
        _ => Ok(()),
    }
}

fn unzip(b64: &str) -> Result<Value, String> {
    let zipped = STANDARD
        .decode(b64)
        .map_err(|e| format!("compressed value is not base64: {e}"))?;
    let mut json = Vec::new();
    GzDecoder::new(zipped.as_slice())
        .read_to_end(&mut json)
        .map_err(|e| format!("compressed value does not gunzip: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| format!("compressed value is not JSON: {e}"))
}

/// What aws-lambda-stream never compresses as a whole in a fault event: the unit of work and
/// the record it quotes (their own big fields still are).
pub const FAULT_COMPRESSION_IGNORE: &[&str] = &["uow", "batch", "record", "kinesis", "data"];

/// Compresses, top down as aws-lambda-stream's replacer does, every field whose estimated size
/// is over `threshold`: the top-level object and array elements never, a value already
/// compressed never again. True when anything was compressed.
pub fn compress_value(value: &mut Value, threshold: usize) -> bool {
    compress_fields(value, threshold, &[])
}

/// [`compress_value`], never compressing the fields named in `ignore` (at any depth) as a
/// whole, though what they hold may be.
pub fn compress_fields(value: &mut Value, threshold: usize, ignore: &[&str]) -> bool {
    let mut changed = false;
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                // an ignored field is not compressed itself, but what it holds may be
                if ignore.contains(&key.as_str()) {
                    changed |= compress_fields(v, threshold, ignore);
                    continue;
                }
                let already = v
                    .as_str()
                    .is_some_and(|s| s.starts_with(COMPRESSION_PREFIX));
                if !already && sizeof(v) > threshold {
                    if let Some(zipped) = zip(v) {
                        *v = Value::String(zipped);
                        changed = true;
                    }
                } else {
                    changed |= compress_fields(v, threshold, ignore);
                }
            }
        }
        // array elements are not compressed themselves, but their fields are
        Value::Array(items) => {
            for i in items {
                changed |= compress_fields(i, threshold, ignore);
            }
        }
        _ => {}
    }
    changed
}

fn zip(value: &Value) -> Option<String> {
    let json = serde_json::to_vec(value).ok()?;
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(&json).ok()?;
    let zipped = encoder.finish().ok()?;
    Some(format!("{COMPRESSION_PREFIX}{}", STANDARD.encode(zipped)))
}

/// True when no field of the event whose JSON is `json_len` bytes long can be over `threshold`
/// in [`sizeof`]'s estimate, so the event is published as serialized: a field's estimate is at
/// most its JSON's length plus 13 bytes (a string's), and a field is shorter than the event.
pub fn under_threshold(json_len: usize, threshold: usize) -> bool {
    json_len.saturating_add(16) <= threshold
}

/// The size estimate aws-lambda-stream compares with the threshold: that of object-sizeof 2.x,
/// its dependency. An object or array counts the UTF-8 bytes of its JSON; a string
/// `12 + 4 * ceil(n / 4)` for `n` UTF-16 units (V8's layout); a number 8, a boolean 4, null 0.
pub fn sizeof(value: &Value) -> usize {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 4,
        Value::Number(_) => 8,
        Value::String(s) => 12 + 4 * s.encode_utf16().count().div_ceil(4),
        Value::Array(_) | Value::Object(_) => json_len(value),
    }
}

/// The length of `value`'s compact JSON, without writing it anywhere.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // writing to a counter cannot fail, and a Value always serializes
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_fields_stay_and_big_ones_round_trip() {
        let original = json!({"id": "1", "type": "t", "small": {"a": 1},
            "items": [{"big": "x".repeat(11_000)}], "tags": {"source": "s"}});
        let mut v = original.clone();
        compress_value(&mut v, DEFAULT_THRESHOLD);
        assert_eq!(v["small"], json!({"a": 1}));
        // the field holding 11,000 characters is over 10 KB: compressed whole, top down
        assert!(v["items"].as_str().unwrap().starts_with(COMPRESSION_PREFIX));
        // under an ignored field, array elements are not compressed, their big fields are
        let mut ignored = original.clone();
        compress_fields(&mut ignored, DEFAULT_THRESHOLD, &["items"]);
        assert!(
            ignored["items"][0]["big"]
                .as_str()
                .unwrap()
                .starts_with(COMPRESSION_PREFIX)
        );
        assert!(may_hold_compressed(v.to_string().as_bytes()));
        decompress_value(&mut v).unwrap();
        assert_eq!(v, original);
    }

    #[test]
    fn the_marker_is_found_anywhere_and_only_whole() {
        assert!(!may_hold_compressed(b""));
        assert!(!may_hold_compressed(br#"{"type":"t","x":"NOTCOMPRESSED"}"#));
        assert!(!may_hold_compressed(br#"{"a":"COMPRESSE"}"#));
        assert!(may_hold_compressed(br#""COMPRESSED"#));
        let mut long = vec![b' '; 4096];
        long.extend_from_slice(br#""COMPRESSED:H4sI""#);
        assert!(may_hold_compressed(&long));
    }

    #[test]
    fn the_estimate_is_object_sizeof_2() {
        // what object-sizeof 2.6.5 answers under Node 20
        assert_eq!(sizeof(&json!("abcde")), 20);
        assert_eq!(sizeof(&json!("")), 12);
        assert_eq!(sizeof(&json!(1.5)), 8);
        assert_eq!(sizeof(&json!(true)), 4);
        assert_eq!(sizeof(&json!(null)), 0);
        assert_eq!(sizeof(&json!({"a": [1, "é"]})), 14);
        // nothing in an event of 10,000 bytes of JSON can be over 10 KB
        assert!(under_threshold(10_000, DEFAULT_THRESHOLD));
        assert!(!under_threshold(10_230, DEFAULT_THRESHOLD));
    }

    #[test]
    fn a_malformed_compressed_value_is_an_error_naming_why() {
        let mut v = json!({"thing": "COMPRESSED***"});
        assert!(decompress_value(&mut v).unwrap_err().contains("not base64"));
    }
}
