//! The RFC 7541 Appendix C examples, the decoder's refusals, and the
//! encoder checked by the decoder over random sequences of blocks.

use super::*;
use proptest::prelude::*;

fn hex(text: &str) -> Bytes {
    let digits: String = text.split_whitespace().collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .into()
}

fn decode(decoder: &mut Decoder, block: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    decoder.decode(&hex(block), usize::MAX, &mut out).unwrap();
    out.into_iter()
        .map(|f| {
            (
                String::from_utf8(f.name.to_vec()).unwrap(),
                String::from_utf8(f.value.to_vec()).unwrap(),
            )
        })
        .collect()
}

fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn table(decoder: &Decoder) -> (Vec<(String, String)>, usize) {
    let table = decoder.table();
    let entries = (1..=table.len())
        .map(|i| {
            let e = table.get(i).unwrap();
            (
                String::from_utf8(e.name.to_vec()).unwrap(),
                String::from_utf8(e.value.to_vec()).unwrap(),
            )
        })
        .collect();
    (entries, table.size())
}

#[test]
fn integers_are_written_as_the_rfc_shows() {
    // C.1.1 to C.1.3.
    let mut dst = BytesMut::new();
    put_integer(&mut dst, 0xe0, 5, 10);
    put_integer(&mut dst, 0xe0, 5, 1337);
    put_integer(&mut dst, 0, 8, 42);
    assert_eq!(&dst[..], &[0xea, 0xff, 0x9a, 0x0a, 0x2a]);
    let mut src = dst.freeze();
    assert_eq!(integer(&mut src, 5), Ok(10));
    assert_eq!(integer(&mut src, 5), Ok(1337));
    assert_eq!(integer(&mut src, 8), Ok(42));
    assert!(src.is_empty());
}

#[test]
fn the_rfc_requests_decode_in_sequence_with_and_without_huffman() {
    for blocks in [
        // C.3: literals raw.
        [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ],
        // C.4: the same, Huffman-coded.
        [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ],
    ] {
        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decode(&mut decoder, blocks[0]),
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(
            table(&decoder),
            (fields(&[(":authority", "www.example.com")]), 57)
        );
        assert_eq!(
            decode(&mut decoder, blocks[1]),
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        assert_eq!(table(&decoder).1, 110);
        assert_eq!(
            decode(&mut decoder, blocks[2]),
            fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(
            table(&decoder),
            (
                fields(&[
                    ("custom-key", "custom-value"),
                    ("cache-control", "no-cache"),
                    (":authority", "www.example.com"),
                ]),
                164
            )
        );
    }
}

#[test]
fn the_rfc_responses_evict_from_a_small_table() {
    // C.5, with SETTINGS_HEADER_TABLE_SIZE 256.
    let mut decoder = Decoder::new(256);
    let date = "Mon, 21 Oct 2013 20:13:21 GMT";
    let location = "https://www.example.com";
    assert_eq!(
        decode(
            &mut decoder,
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d"
        ),
        fields(&[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", date),
            ("location", location)
        ])
    );
    assert_eq!(table(&decoder).1, 222);
    assert_eq!(
        decode(&mut decoder, "4803 3330 37c1 c0bf"),
        fields(&[
            (":status", "307"),
            ("cache-control", "private"),
            ("date", date),
            ("location", location)
        ])
    );
    // ":status: 302" made room for ":status: 307".
    assert_eq!(
        table(&decoder),
        (
            fields(&[
                (":status", "307"),
                ("location", location),
                ("date", date),
                ("cache-control", "private"),
            ]),
            222
        )
    );
    let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    assert_eq!(
        decode(
            &mut decoder,
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
             3d31"
        ),
        fields(&[
            (":status", "200"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ("location", location),
            ("content-encoding", "gzip"),
            ("set-cookie", cookie),
        ])
    );
    assert_eq!(
        table(&decoder),
        (
            fields(&[
                ("set-cookie", cookie),
                ("content-encoding", "gzip"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ]),
            215
        )
    );
}

#[test]
fn a_never_indexed_field_stays_marked_and_out_of_the_table() {
    // C.2.3.
    let mut decoder = Decoder::new(4096);
    let mut out = Vec::new();
    decoder
        .decode(
            &hex("1008 7061 7373 776f 7264 0673 6563 7265 74"),
            usize::MAX,
            &mut out,
        )
        .unwrap();
    assert_eq!(
        out,
        vec![Field {
            name: Bytes::from_static(b"password"),
            value: Bytes::from_static(b"secret"),
            never_index: true,
        }]
    );
    assert!(decoder.table().is_empty());

    let mut encoder = Encoder::default();
    let mut block = BytesMut::new();
    encoder.encode(&out, &mut block);
    assert_eq!(block[0] & 0xf0, 0x10, "sent on as never indexed");
    let mut again = Vec::new();
    Decoder::new(4096)
        .decode(&block.freeze(), usize::MAX, &mut again)
        .unwrap();
    assert_eq!(again, out);
}

#[test]
fn blocks_that_cannot_be_decoded_are_refused() {
    let refused = |block: &str| {
        let mut out = Vec::new();
        Decoder::new(4096)
            .decode(&hex(block), usize::MAX, &mut out)
            .unwrap_err()
    };
    assert_eq!(refused("80"), HpackError::BadIndex(0));
    assert_eq!(
        refused("be"),
        HpackError::BadIndex(62),
        "an empty dynamic table"
    );
    assert_eq!(refused("41"), HpackError::Truncated, "a value missing");
    assert_eq!(
        refused("4005 6162"),
        HpackError::Truncated,
        "a name cut short"
    );
    assert_eq!(refused("ff"), HpackError::Truncated, "an integer cut short");
    assert_eq!(refused("ff ff ff ff ff 7f"), HpackError::IntegerOverflow);
    assert_eq!(
        refused("ff 80 80 80 80 80 80 80 80 80 80 00"),
        HpackError::IntegerOverflow,
        "continuation bytes that add nothing, past any shift"
    );
    assert_eq!(
        refused("4081 00 00"),
        HpackError::Huffman(huffman::HuffmanError::Padding)
    );
    assert_eq!(
        refused("3fe2 1f"),
        HpackError::SizeUpdateTooLarge {
            asked: 4096 + 1,
            allowed: 4096
        },
        "a size update past the setting"
    );
    assert_eq!(refused("82 3f e1 1f"), HpackError::SizeUpdateLate);
}

#[test]
fn size_updates_at_the_start_of_a_block_shrink_the_table() {
    let mut decoder = Decoder::new(4096);
    decode(
        &mut decoder,
        "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
    );
    assert_eq!(decoder.table().len(), 1);
    // Two updates, 0 then 4096: the table empties and may grow again.
    assert_eq!(
        decode(&mut decoder, "20 3fe1 1f 82"),
        fields(&[(":method", "GET")])
    );
    assert!(decoder.table().is_empty());
    assert_eq!(decoder.table().max_size(), 4096);
}

#[test]
fn a_list_over_the_limit_is_decoded_whole_and_its_excess_dropped() {
    let mut decoder = Decoder::new(4096);
    let mut out = Vec::new();
    // :method GET (42), then custom-key: custom-header (55), indexed.
    let block = hex("82 400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
    let decoded = decoder.decode(&block, 60, &mut out).unwrap();
    assert_eq!(
        decoded,
        Decoded {
            list_size: 97,
            over_limit: true
        }
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        decoder.table().len(),
        1,
        "the dropped field still entered the table"
    );
}

#[test]
fn a_table_size_is_announced_only_when_it_changes() {
    let mut encoder = Encoder::default();
    let get = [Field::new(":method", "GET")];
    let mut block = BytesMut::new();
    encoder.peer_allows(4096);
    encoder.encode(&get, &mut block);
    assert_eq!(&block[..], &[0x82], "the size it had: nothing to say");
    // Down to 0 and back up before the next block: both are said, the
    // smallest first (RFC 7541 §4.2).
    encoder.peer_allows(0);
    encoder.peer_allows(4096);
    block.clear();
    encoder.encode(&get, &mut block);
    assert_eq!(&block[..], &[0x20, 0x3f, 0xe1, 0x1f, 0x82]);
}

#[test]
fn a_repeated_block_is_sent_as_indexes() {
    let mut encoder = Encoder::default();
    let list = [
        Field::new(":method", "POST"),
        Field::new(":path", "/stockdata.StockData/Get"),
        Field::new("content-type", "application/grpc"),
        Field::new("te", "trailers"),
        Field::new("grpc-timeout", "4999m"),
    ];
    let mut first = BytesMut::new();
    encoder.encode(&list, &mut first);
    let mut second = BytesMut::new();
    encoder.encode(&list, &mut second);
    // One byte for each field: the first block put them all in the table.
    assert_eq!(second.len(), 5);
    // grpc-timeout, whose value changes from call to call, is indexed only
    // the first time: later values are literals naming that entry.
    let mut third = BytesMut::new();
    let other_timeout = [Field::new("grpc-timeout", "3000m")];
    encoder.encode(&other_timeout, &mut third);
    // Index 62 does not fit the 4-bit prefix: two bytes, then the value.
    assert_eq!(third.len(), 2 + 1 + huffman::encoded_len(b"3000m"));
    let mut decoder = Decoder::new(4096);
    for block in [first, second] {
        let mut out = Vec::new();
        decoder
            .decode(&block.freeze(), usize::MAX, &mut out)
            .unwrap();
        assert_eq!(out, list);
    }
    let mut out = Vec::new();
    decoder
        .decode(&third.freeze(), usize::MAX, &mut out)
        .unwrap();
    assert_eq!(out, other_timeout);
}

fn arb_field() -> impl Strategy<Value = Field> {
    let name = prop_oneof![
        Just(":path".to_owned()),
        Just("content-type".to_owned()),
        Just("grpc-timeout".to_owned()),
        Just("x-custom".to_owned()),
        "[a-z-]{1,12}",
    ];
    let value = prop_oneof![
        Just(String::new()),
        Just("application/grpc".to_owned()),
        "[ -~]{0,40}",
        "[a-z]{200,300}",
    ];
    (name, value, proptest::bool::weighted(0.1)).prop_map(|(n, v, never_index)| Field {
        name: n.into(),
        value: v.into(),
        never_index,
    })
}

proptest! {
    #[test]
    fn the_decoder_reads_what_the_encoder_writes(
        blocks in proptest::collection::vec(
            (proptest::collection::vec(arb_field(), 0..12), proptest::option::of(0usize..5000)),
            1..12,
        ),
        cap in prop_oneof![Just(0usize), Just(100), Just(4096), Just(65536)],
    ) {
        let mut encoder = Encoder::new(cap);
        let mut decoder = Decoder::new(4096);
        for (list, peer_table_size) in blocks {
            if let Some(size) = peer_table_size {
                // Our SETTINGS_HEADER_TABLE_SIZE changes: the encoder learns
                // of it and signals what it uses in its next block.
                let size = size.min(4096);
                decoder.allowed = size;
                encoder.peer_allows(size);
            }
            let mut block = BytesMut::new();
            encoder.encode(&list, &mut block);
            let mut out = Vec::new();
            decoder.decode(&block.freeze(), usize::MAX, &mut out).unwrap();
            prop_assert_eq!(&out, &list);
            prop_assert_eq!(decoder.table().size(), encoder.table.size());
            prop_assert_eq!(decoder.table().len(), encoder.table.len());
        }
    }

    #[test]
    fn any_block_decodes_or_is_refused(block in proptest::collection::vec(any::<u8>(), 0..128)) {
        let mut out = Vec::new();
        let _ = Decoder::new(4096).decode(&block.into(), 16384, &mut out);
    }
}
