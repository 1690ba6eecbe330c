//! Wire contracts shared by every crate of the workspace.
//!
//! - [`stockdata`]: the StockData API (`package StockData; service Stocks`),
//!   generated from `proto/stocks.proto` by `build.rs`, with its encoded
//!   descriptor set for server reflection.
//! - [`mesh`]: the mesh's control APIs (`Destination`, `Registry`).
//! - [`headers`]: names of the metadata headers the apps and the mesh agree on.
//!
//! Nothing here does I/O; the crates above decide how the contracts are served.

/// The StockData gRPC API: messages, the `Stocks` client and server.
pub mod stockdata {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("stock_data");

    /// Encoded `FileDescriptorSet` of `stocks.proto`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/stockdata_descriptor.bin"));

    /// Fully qualified gRPC service name, as reflection and health report it.
    pub const SERVICE_NAME: &str = "StockData.Stocks";
}

/// The mesh's control APIs: `Destination` (discovery) and `Registry` (the
/// local backend's write side), package `stockkube.mesh.v1`.
pub mod mesh {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("stockkube.mesh.v1");

    /// Encoded `FileDescriptorSet` of `mesh.proto`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/mesh_descriptor.bin"));
}

/// Metadata header names.
pub mod headers {
    /// Response header naming the replica that answered a StockData call.
    /// Stable for the life of one process.
    pub const SERVER_ID: &str = "server-id";

    /// Response header the outbound proxy adds: the endpoint (address) that
    /// served the request, so any client can see the balancing.
    pub const MESH_ENDPOINT: &str = "x-mesh-endpoint";

    /// Response header the outbound proxy adds: how many attempts the
    /// request took (1 when it was not retried).
    pub const MESH_ATTEMPTS: &str = "x-mesh-attempts";
}

#[cfg(test)]
mod tests {
    use super::stockdata;
    use prost::Message as _;

    #[test]
    fn descriptor_set_describes_the_original_package_and_service() {
        let fds = prost_types::FileDescriptorSet::decode(stockdata::FILE_DESCRIPTOR_SET)
            .expect("build.rs writes a valid descriptor set");
        let file = fds
            .file
            .iter()
            .find(|f| f.name() == "stocks.proto")
            .expect("stocks.proto is in the set");
        assert_eq!(file.package(), "StockData");
        let service = &file.service[0];
        assert_eq!(service.name(), "Stocks");
        assert_eq!(service.method[0].name(), "Get");
        assert_eq!(service.method[0].input_type(), ".StockData.GetRequest");
        assert_eq!(service.method[0].output_type(), ".StockData.GetResponse");
    }

    #[test]
    fn messages_keep_the_original_field_numbers() {
        // GetRequest { id = 7 } as any proto3 encoder writes it: field 1, varint.
        let decoded = stockdata::GetRequest::decode(&[0x08, 0x07][..]).expect("valid GetRequest");
        assert_eq!(decoded.id, 7);

        let stock = stockdata::Stock {
            id: 1,
            symbol: "A".into(),
            name: "B".into(),
        };
        // id = 1 (0x08), symbol = 2 (0x12, length-delimited), name = 3 (0x1a).
        assert_eq!(
            stock.encode_to_vec(),
            vec![0x08, 0x01, 0x12, 0x01, b'A', 0x1a, 0x01, b'B']
        );
    }
}
