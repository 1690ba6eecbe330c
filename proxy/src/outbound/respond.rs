//! The respond stage: what the client gets for a request's outcome. An
//! endpoint's response goes back observed by its attempt's recorder until
//! its end; a failure becomes the proxy's own answer ([`ProxyError`]). Both
//! carry `x-mesh-endpoint` and `x-mesh-attempts`, and both end the request's
//! call on its route.
//!
//! [`ProxyError`]: crate::errors::ProxyError

use super::{Attempt, Outcome};
use crate::names::{MESH_ATTEMPTS, MESH_ENDPOINT};
use crate::{
    balance::EndpointState,
    body::{ProxyBody, Received, grpc_status},
    detect::Protocol,
    http::strip_hop_by_hop,
    metrics::paths::Call,
};
use http::HeaderValue;

/// The client's response for `outcome`, the answer to `call`.
pub fn respond(
    protocol: Protocol,
    grpc: bool,
    outcome: Outcome<Received>,
    call: Call,
) -> http::Response<ProxyBody> {
    match outcome {
        Outcome::NotSent(err) => {
            let response = err.response(grpc);
            call.answered(
                response.status().as_u16(),
                grpc_status(response.headers()),
                true,
            );
            response
        }
        Outcome::Answered(response, mut attempt) => {
            attempt.recorder.answers(served(call, &attempt));
            forward(protocol, response, attempt)
        }
        Outcome::Failed(err, mut attempt) => {
            attempt.recorder.answers(served(call, &attempt));
            let response = err.recorded(attempt.recorder, grpc);
            annotate(response, &attempt.endpoint, attempt.number)
        }
    }
}

/// `call`, served by `attempt`'s endpoint.
fn served(mut call: Call, attempt: &Attempt) -> Call {
    let endpoint = &attempt.endpoint;
    call.served_by(
        &endpoint.addr_label,
        Some(&endpoint.endpoint.instance),
        attempt.number,
        &attempt.recorder.route().tls,
    );
    call
}

/// An endpoint's response on its way back to the client, observed by its
/// attempt's recorder until its end.
fn forward(
    protocol: Protocol,
    response: http::Response<Received>,
    attempt: Attempt,
) -> http::Response<ProxyBody> {
    let Attempt {
        mut recorder,
        endpoint,
        number,
    } = attempt;
    let (mut parts, body) = response.into_parts();
    if protocol == Protocol::Http1 {
        strip_hop_by_hop(&mut parts.headers);
    }
    recorder.head(parts.status, &parts.headers);
    annotate(
        http::Response::from_parts(parts, ProxyBody::upstream(body, recorder)),
        &endpoint,
        number,
    )
}

/// Adds the headers that tell the client which endpoint answered and after
/// how many attempts.
fn annotate(
    mut response: http::Response<ProxyBody>,
    endpoint: &EndpointState,
    attempts: u32,
) -> http::Response<ProxyBody> {
    let headers = response.headers_mut();
    headers.insert(MESH_ENDPOINT, endpoint.header.clone());
    let attempts = match attempts {
        1 => HeaderValue::from_static("1"),
        2 => HeaderValue::from_static("2"),
        3 => HeaderValue::from_static("3"),
        n => HeaderValue::from(n),
    };
    headers.insert(MESH_ATTEMPTS, attempts);
    response
}
