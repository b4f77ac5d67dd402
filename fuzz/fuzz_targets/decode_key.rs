//! A path segment or query value decoded into a key: never a panic, and what
//! comes out is what the route promises (non-empty UTF-8 within the limit,
//! the input itself when it has nothing to decode, and the key again when
//! it is percent-encoded back).
#![no_main]

use libfuzzer_sys::fuzz_target;
use read_api::routes::decode_key;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(encoded) = std::str::from_utf8(rest) else {
        return;
    };
    let plus_is_space = flags & 1 == 1;
    let max = usize::from(flags >> 1) + 1;
    match decode_key(encoded, plus_is_space, max) {
        Ok(key) => {
            assert!(
                !key.is_empty() && key.len() <= max,
                "{encoded:?} -> {key:?}"
            );
            let escapes = encoded.contains('%') || (plus_is_space && encoded.contains('+'));
            if !escapes {
                assert_eq!(key, encoded);
            }
            let again: String = key.bytes().map(|b| format!("%{b:02X}")).collect();
            assert_eq!(decode_key(&again, plus_is_space, max).unwrap(), key);
        }
        Err(e) => {
            assert_eq!(e.code(), "bad_key");
            assert!(!e.to_string().contains(['\n', '\r']), "{e}");
        }
    }
});
