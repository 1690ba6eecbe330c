//! Frames and HPACK on arbitrary input: `mesh_proxy::wire::fuzz::frames_and_headers`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_proxy::wire::fuzz::frames_and_headers(data);
});
