//! Header names the request path reads or writes on every call, made once.
//!
//! A `&str` key is parsed and checked again at every lookup or insert (and
//! a name that is not a standard one is hashed from its text each time);
//! a constant `HeaderName` is parsed at compile time and cloned for free.

use http::HeaderName;
use stockkube_proto::headers;

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub const MESH_ENDPOINT: HeaderName = HeaderName::from_static(headers::MESH_ENDPOINT);
pub const MESH_ATTEMPTS: HeaderName = HeaderName::from_static(headers::MESH_ATTEMPTS);
