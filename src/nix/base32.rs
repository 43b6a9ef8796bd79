//! Nix's base32 ("nix32"): alphabet `0123456789abcdfghijklmnpqrsvwxyz`, bytes read
//! from the end, as used in store path hashes and `sha256:` hashes.
//!
//! This is not RFC 4648 base32: the alphabet omits `e o u t`, and the encoding
//! walks the input from its last bit group, so the first character carries the
//! most significant bits of the last byte. The string of `n` bytes always has
//! `ceil(n * 8 / 5)` characters; the unused high bits of the first character are
//! zero. [`decode`] accepts exactly the strings [`encode`] produces: a length that
//! no byte count encodes to, a character outside the alphabet, or a non-zero
//! unused bit is an error.
//!
//! Not here: hash-type prefixes (`sha256:`), see [`super::hash`].

use super::Error;

/// The 32 digits, in value order.
const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Bits carried by one character.
const BITS_PER_CHAR: usize = 5;

/// Encoded length of `n` bytes.
pub fn encoded_len(n: usize) -> usize {
    // ceil(n * 8 / 5), split so that `n * 8` cannot overflow for large `n`.
    (n / 5)
        .saturating_mul(8)
        .saturating_add(((n % 5) * 8).div_ceil(BITS_PER_CHAR))
}

/// Encode bytes as nix32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * BITS_PER_CHAR;
        let (i, j) = (bit / 8, bit % 8);
        let lo = u16::from(bytes.get(i).copied().unwrap_or(0));
        let hi = u16::from(bytes.get(i + 1).copied().unwrap_or(0));
        let digit = ((lo | (hi << 8)) >> j) & 0x1f;
        out.push(char::from(ALPHABET[usize::from(digit)]));
    }
    out
}

/// The value of one nix32 character.
fn digit_value(c: u8) -> Option<u8> {
    ALPHABET
        .iter()
        .position(|&a| a == c)
        .and_then(|p| u8::try_from(p).ok())
}

/// Decode nix32; the output has `s.len() * 5 / 8` bytes. Rejects characters outside
/// the alphabet and non-zero padding bits.
///
/// Also rejects lengths that no byte count encodes to (for example 3 characters:
/// one byte encodes to 2), so `encode(decode(s)?) == s` always holds.
pub fn decode(s: &str) -> Result<Vec<u8>, Error> {
    let chars = s.as_bytes();
    let out_len = chars.len() / 8 * 5 + chars.len() % 8 * 5 / 8;
    if encoded_len(out_len) != chars.len() {
        return Err(Error::Base32(format!(
            "length {} is not the length of any encoded byte string",
            chars.len()
        )));
    }
    let mut out = vec![0u8; out_len];
    for (n, &c) in chars.iter().rev().enumerate() {
        let digit = digit_value(c).ok_or_else(|| {
            Error::Base32(format!(
                "character {:?} at position {} is not in the nix32 alphabet",
                char::from(c),
                chars.len() - 1 - n
            ))
        })?;
        let bit = n * BITS_PER_CHAR;
        let (i, j) = (bit / 8, bit % 8);
        let shifted = u16::from(digit) << j;
        for (k, part) in [(i, shifted & 0xff), (i + 1, shifted >> 8)] {
            if part == 0 {
                continue;
            }
            match out.get_mut(k) {
                // `part` fits in a byte: the low half is masked, the high half
                // is at most 0x1f << 7 >> 8.
                Some(byte) => *byte |= u8::try_from(part).unwrap_or(0),
                None => {
                    return Err(Error::Base32(format!(
                        "{s:?} has non-zero padding bits in its first character"
                    )))
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Vectors computed with Nix 2.8 (`nix hash to-base32 --type <t> <hex>`).
    const VECTORS: &[(&str, &str)] = &[
        // sha256("")
        (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ),
        // the same with the last bytes swapped: only the first characters change
        (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7855b852",
            "0lmqamw1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ),
        // sha256("abc")
        (
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
        ),
        // a 20-byte (sha1-sized, store-path-sized) value
        (
            "0123456789abcdef0123456789abcdef01234567",
            "cx2j60ggrnmqjrs54c0yzkdbi5kla8q1",
        ),
        // a 16-byte (md5-sized) value
        (
            "0123456789abcdef0123456789abcdef",
            "7grnmqjrs54c0yzkdbi5kla8q1",
        ),
        // sha512("")
        (
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
            "0zdl9zrg8r3i9c1g90lgg9ip5ijzv3yhz91i0zzn3r8ap9ws784gkp9dk9j3aglhgf1amqb0pj21mh7h1nxcl18akqvvf7ggqsy30yg",
        ),
    ];

    #[test]
    fn known_vectors_encode_and_decode() {
        for (hex_in, nix32) in VECTORS {
            let bytes = hex::decode(hex_in).unwrap();
            assert_eq!(&encode(&bytes), nix32, "encode {hex_in}");
            assert_eq!(decode(nix32).unwrap(), bytes, "decode {nix32}");
        }
    }

    #[test]
    fn encoded_len_matches_formula() {
        for n in 0..200usize {
            assert_eq!(encoded_len(n), (n * 8).div_ceil(5), "n = {n}");
        }
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        // Huge inputs saturate instead of overflowing.
        assert_eq!(encoded_len(usize::MAX), usize::MAX);
    }

    #[test]
    fn empty_round_trips() {
        assert_eq!(encode(&[]), "");
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn small_values() {
        assert_eq!(encode(&[0]), "00");
        assert_eq!(encode(&[0x1f]), "0z");
        assert_eq!(encode(&[0x20]), "10");
        assert_eq!(encode(&[0xff]), "7z");
        assert_eq!(decode("7z").unwrap(), vec![0xff]);
    }

    #[test]
    fn rejects_characters_outside_the_alphabet() {
        for bad in ["e", "o", "u", "t", "E", "A", "-", " ", "é"] {
            let s = format!("0{bad}");
            assert!(
                matches!(decode(&s), Err(Error::Base32(_))),
                "{s:?} must fail"
            );
        }
    }

    #[test]
    fn rejects_non_zero_padding_bits() {
        // One byte uses 8 of the 10 bits of two characters: the first character
        // may only be 0..=7.
        assert!(decode("8z").is_err());
        assert!(decode("z0").is_err());
        // A 52-character sha256 has 4 spare bits: the first char must be 0 or 1.
        let mut s = String::from("2");
        s.push_str(&"0".repeat(51));
        assert!(decode(&s).is_err());
    }

    #[test]
    fn rejects_lengths_no_byte_count_encodes_to() {
        for len in [1usize, 3, 6, 9, 11, 14] {
            assert!(decode(&"0".repeat(len)).is_err(), "length {len}");
        }
        for len in [0usize, 2, 4, 5, 7, 8, 10, 12, 13, 15, 16] {
            assert!(decode(&"0".repeat(len)).is_ok(), "length {len}");
        }
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&s).unwrap(), bytes);
        }

        #[test]
        fn decode_never_panics_and_is_canonical(s in "[0-9a-z]{0,60}") {
            if let Ok(bytes) = decode(&s) {
                prop_assert_eq!(encode(&bytes), s);
            }
        }

        #[test]
        fn decode_arbitrary_strings_never_panics(s in "\\PC{0,40}") {
            let _ = decode(&s);
        }
    }
}
