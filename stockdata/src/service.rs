//! The `StockData.Stocks` gRPC service: answers from the [`catalog`], stamps
//! every response with this replica's `server-id`, and applies the demo
//! [`Faults`] when they are configured.

use crate::{catalog, config::Faults};
use stockkube_proto::{
    headers::SERVER_ID,
    stockdata::{GetRequest, GetResponse, stocks_server::Stocks},
};
use tonic::{Request, Response, Status, metadata::MetadataValue};

/// One replica's implementation of `Stocks`.
#[derive(Debug, Clone)]
pub struct StocksService {
    server_id: MetadataValue<tonic::metadata::Ascii>,
    faults: Faults,
}

impl StocksService {
    /// `server_id` must be a valid header value; [`crate::config::Config`]
    /// checks that before a service is built.
    pub fn new(server_id: &str, faults: Faults) -> Result<Self, InvalidServerId> {
        let server_id = server_id
            .parse()
            .map_err(|_| InvalidServerId(server_id.to_owned()))?;
        Ok(Self { server_id, faults })
    }

    fn stamp<T>(&self, mut response: Response<T>) -> Response<T> {
        response
            .metadata_mut()
            .insert(SERVER_ID, self.server_id.clone());
        response
    }

    fn stamp_status(&self, mut status: Status) -> Status {
        status
            .metadata_mut()
            .insert(SERVER_ID, self.server_id.clone());
        status
    }
}

/// The server id cannot be sent as an HTTP header value.
#[derive(Debug, thiserror::Error)]
#[error("server id {0:?} is not a valid header value")]
pub struct InvalidServerId(String);

#[tonic::async_trait]
impl Stocks for StocksService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let id = request.get_ref().id;
        tracing::debug!(id, "get received");
        if !self.faults.delay.is_zero() {
            tokio::time::sleep(self.faults.delay).await;
        }
        if self.faults.fail_rate > 0.0 && fastrand::f64() < self.faults.fail_rate {
            tracing::debug!(id, "injected failure");
            return Err(self.stamp_status(Status::unavailable(
                "injected failure (stockdata --fail-rate)",
            )));
        }
        match catalog::lookup(id) {
            Ok(stock) => {
                tracing::debug!(id, symbol = %stock.symbol, "get answered");
                Ok(self.stamp(Response::new(GetResponse { stock: Some(stock) })))
            }
            Err(err) => {
                tracing::debug!(id, %err, "get refused");
                Err(self.stamp_status(err.into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn service(faults: Faults) -> StocksService {
        StocksService::new("replica-1", faults).unwrap()
    }

    #[tokio::test]
    async fn answers_with_the_stock_and_the_server_id() {
        let response = service(Faults::default())
            .get(Request::new(GetRequest { id: 1 }))
            .await
            .unwrap();
        assert_eq!(response.metadata().get(SERVER_ID).unwrap(), "replica-1");
        assert_eq!(response.get_ref().stock.as_ref().unwrap().symbol, "AAPL");
    }

    #[tokio::test]
    async fn errors_carry_the_server_id_too() {
        let status = service(Faults::default())
            .get(Request::new(GetRequest { id: 0 }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.metadata().get(SERVER_ID).unwrap(), "replica-1");
    }

    #[tokio::test]
    async fn fail_rate_one_fails_every_call() {
        let faults = Faults {
            fail_rate: 1.0,
            ..Faults::default()
        };
        for _ in 0..20 {
            let status = service(faults)
                .get(Request::new(GetRequest { id: 1 }))
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unavailable);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn delay_holds_the_answer() {
        let faults = Faults {
            delay: Duration::from_millis(300),
            ..Faults::default()
        };
        let started = tokio::time::Instant::now();
        service(faults)
            .get(Request::new(GetRequest { id: 2 }))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn refuses_an_id_that_cannot_be_a_header() {
        assert!(StocksService::new("bad\nid", Faults::default()).is_err());
    }
}
