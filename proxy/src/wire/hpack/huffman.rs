//! HPACK's Huffman code (RFC 7541 §5.2 and Appendix B): encoding, the
//! encoded length (to choose between Huffman and raw), and decoding with the
//! padding rules a decoder must enforce.
//!
//! The code is canonical, so the bit length of each symbol's code (the
//! "len in bits" column of Appendix B) determines every code: codes are
//! assigned in order of length, then symbol. Only the lengths are written
//! down here; the codes and the decoding limits are computed from them at
//! compile time, and the tests check them against codes the RFC lists.

use bytes::{BufMut, BytesMut};

/// End of string: a code no encoder may emit; its prefix pads the last byte.
const EOS: usize = 256;

/// The length in bits of the code of each symbol, bytes 0..=255 then EOS.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

const SHORTEST: usize = 5;
const LONGEST: usize = 30;

/// Each symbol's code, right-aligned.
const CODES: [u32; 257] = {
    let mut codes = [0u32; 257];
    let mut code = 0u32;
    let mut len = SHORTEST;
    while len <= LONGEST {
        let mut symbol = 0;
        while symbol < 257 {
            if LENGTHS[symbol] as usize == len {
                codes[symbol] = code;
                code += 1;
            }
            symbol += 1;
        }
        code <<= 1;
        len += 1;
    }
    codes
};

/// What decoding needs, per code length: the first code of that length, the
/// place of its symbol among the symbols sorted by (length, symbol), and the
/// first 32-bit left-aligned window that needs a longer code.
struct DecodeTable {
    first: [u32; LONGEST + 1],
    offset: [u16; LONGEST + 1],
    limit: [u64; LONGEST + 1],
    sorted: [u16; 257],
}

const DECODE: DecodeTable = {
    let mut table = DecodeTable {
        first: [0; LONGEST + 1],
        offset: [0; LONGEST + 1],
        limit: [0; LONGEST + 1],
        sorted: [0; 257],
    };
    let mut placed = 0;
    let mut len = SHORTEST;
    while len <= LONGEST {
        table.offset[len] = placed as u16;
        let mut count = 0u32;
        let mut symbol = 0;
        while symbol < 257 {
            if LENGTHS[symbol] as usize == len {
                if count == 0 {
                    table.first[len] = CODES[symbol];
                }
                table.sorted[placed] = symbol as u16;
                placed += 1;
                count += 1;
            }
            symbol += 1;
        }
        table.limit[len] = ((table.first[len] + count) as u64) << (32 - len);
        len += 1;
    }
    table
};

/// Why a Huffman-coded string cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    #[error("a Huffman-coded string holds the EOS symbol")]
    Eos,
    #[error("a Huffman-coded string ends in a cut code or in padding that is not an EOS prefix")]
    Padding,
}

/// The length in bytes of `src` Huffman-coded.
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src.iter().map(|&b| LENGTHS[b as usize] as usize).sum();
    bits.div_ceil(8)
}

/// Appends `src` Huffman-coded to `dst`, the last byte padded with ones.
pub fn encode(src: &[u8], dst: &mut BytesMut) {
    dst.reserve(encoded_len(src));
    // Bits not yet written sit at the bottom of `pending`; bits above them
    // are already out and are dropped as `pending` shifts.
    let mut pending: u64 = 0;
    let mut count = 0u32;
    for &byte in src {
        let len = LENGTHS[byte as usize] as u32;
        pending = (pending << len) | CODES[byte as usize] as u64;
        count += len;
        while count >= 8 {
            count -= 8;
            dst.put_u8((pending >> count) as u8);
        }
    }
    if count > 0 {
        dst.put_u8(((pending << (8 - count)) as u8) | (0xff >> count));
    }
}

/// Appends the decoding of the Huffman-coded `src` to `dst`.
pub fn decode(src: &[u8], dst: &mut BytesMut) -> Result<(), HuffmanError> {
    // At least 5 bits per symbol: at most 8 symbols per 5 bytes.
    dst.reserve(src.len() * 8 / 5 + 1);
    // The bits not yet decoded, left-aligned in `bits`.
    let mut bits: u64 = 0;
    let mut count = 0u32;
    let mut input = src.iter();
    loop {
        while count <= 56 {
            match input.next() {
                Some(&byte) => {
                    bits |= (byte as u64) << (56 - count);
                    count += 8;
                }
                None => break,
            }
        }
        if count == 0 {
            return Ok(());
        }
        // The next 32 bits, ones past the end: padding is a prefix of EOS,
        // all ones, so a string that ends well decodes to EOS there.
        let mut window = (bits >> 32) as u32;
        if count < 32 {
            window |= u32::MAX >> count;
        }
        if count <= 7 && window == u32::MAX {
            return Ok(());
        }
        let mut len = SHORTEST;
        while (window as u64) >= DECODE.limit[len] {
            len += 1;
        }
        if len as u32 > count {
            return Err(HuffmanError::Padding);
        }
        let index = DECODE.offset[len] as u32 + ((window >> (32 - len)) - DECODE.first[len]);
        let symbol = DECODE.sorted[index as usize] as usize;
        if symbol == EOS {
            return Err(HuffmanError::Eos);
        }
        dst.put_u8(symbol as u8);
        bits <<= len;
        count -= len as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: String = text.split_whitespace().collect();
        (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decoded(src: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut out = BytesMut::new();
        decode(src, &mut out).map(|()| out.to_vec())
    }

    #[test]
    fn the_codes_are_those_the_rfc_lists() {
        // (symbol, code, length) rows of RFC 7541 Appendix B.
        for (symbol, code, len) in [
            (0, 0x1ff8, 13),
            (b'0' as usize, 0x0, 5),
            (b'/' as usize, 0x18, 6),
            (b' ' as usize, 0x14, 6),
            (b'X' as usize, 0xfc, 8),
            (b'\\' as usize, 0x7fff0, 19),
            (b'~' as usize, 0x1ffd, 13),
            (10, 0x3ffffffc, 30),
            (200, 0x3ffffe2, 26),
            (255, 0x3ffffee, 26),
            (EOS, 0x3fffffff, 30),
        ] {
            assert_eq!((CODES[symbol], LENGTHS[symbol]), (code, len), "{symbol}");
        }
        // A complete prefix code: the Kraft sum is exactly one.
        let kraft: u64 = LENGTHS
            .iter()
            .map(|&l| 1u64 << (LONGEST - l as usize))
            .sum();
        assert_eq!(kraft, 1 << LONGEST);
    }

    #[test]
    fn the_rfc_examples_encode_and_decode() {
        // RFC 7541 C.4 and C.6.
        for (text, coded) in [
            ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
            ("no-cache", "a8eb 1064 9cbf"),
            ("custom-key", "25a8 49e9 5ba9 7d7f"),
            ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
            ("302", "6402"),
            ("private", "aec3 771a 4b"),
            (
                "Mon, 21 Oct 2013 20:13:21 GMT",
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
            ),
            (
                "https://www.example.com",
                "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
            ),
        ] {
            let mut out = BytesMut::new();
            encode(text.as_bytes(), &mut out);
            assert_eq!(out.to_vec(), hex(coded), "{text}");
            assert_eq!(encoded_len(text.as_bytes()), out.len());
            assert_eq!(decoded(&hex(coded)).unwrap(), text.as_bytes());
        }
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        // '0' is 00000: three ones of padding complete the byte.
        assert_eq!(decoded(&[0b0000_0111]).unwrap(), b"0");
        // Padding that is not all ones.
        assert_eq!(decoded(&[0b0000_0101]), Err(HuffmanError::Padding));
        // Padding of 8 bits or more: a whole byte of ones.
        assert_eq!(decoded(&[0b0000_0111, 0xff]), Err(HuffmanError::Padding));
        // EOS itself, then padding.
        assert_eq!(decoded(&[0xff, 0xff, 0xff, 0xff]), Err(HuffmanError::Eos));
        // A code cut off by the end (the first byte of a 13-bit code).
        assert_eq!(decoded(&[0xfe]), Err(HuffmanError::Padding));
        assert_eq!(decoded(&[]).unwrap(), b"");
    }

    proptest! {
        #[test]
        fn every_byte_string_round_trips(src in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut coded = BytesMut::new();
            encode(&src, &mut coded);
            prop_assert_eq!(coded.len(), encoded_len(&src));
            prop_assert_eq!(decoded(&coded).unwrap(), src);
        }

        #[test]
        fn any_input_decodes_or_is_refused(src in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decoded(&src);
        }
    }
}
