//! A served connection, the proxy's limits and streams included, on
//! arbitrary input: `mesh_proxy::http2::fuzz::served_connection`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_proxy::http2::fuzz::served_connection(data);
});
