//! A server connection on arbitrary input: `mesh_proxy::wire::fuzz::server_connection`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_proxy::wire::fuzz::server_connection(data);
});
