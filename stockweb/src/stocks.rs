//! Fetching the page's data: 100 concurrent `Get` calls over the one shared
//! StockData channel, each row tagged with the `server-id` that answered, and
//! the tally of rows per server. The web layer only renders what this returns.

use serde::Serialize;
use std::collections::BTreeMap;
use stockkube_proto::{
    headers::SERVER_ID,
    stockdata::{GetRequest, stocks_client::StocksClient},
};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Ids the page asks for, one call each: the sample's 100 rows.
pub const PAGE_IDS: std::ops::RangeInclusive<i32> = 1..=100;

/// One call's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub id: i32,
    pub symbol: Option<String>,
    pub name: Option<String>,
    /// The `server-id` the answer carried, when there was an answer.
    pub server: Option<String>,
    /// The gRPC status, as `CODE: message`, when the call failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one page load found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Successful rows sorted by symbol, then failed rows by id.
    pub rows: Vec<Row>,
    /// How many rows each server answered successfully.
    pub servers: BTreeMap<String, usize>,
    /// How many calls failed.
    pub errors: usize,
}

impl Summary {
    /// Sorts the rows and counts them.
    pub fn new(mut rows: Vec<Row>) -> Self {
        rows.sort_by(|a, b| {
            // Failed rows have no symbol; `None` sorts first, so compare the
            // error flag before the symbol to put them last.
            (a.error.is_some(), &a.symbol, a.id).cmp(&(b.error.is_some(), &b.symbol, b.id))
        });
        let mut servers = BTreeMap::new();
        let mut errors = 0;
        for row in &rows {
            match (&row.error, &row.server) {
                (Some(_), _) => errors += 1,
                (None, Some(server)) => *servers.entry(server.clone()).or_default() += 1,
                (None, None) => {}
            }
        }
        Summary {
            rows,
            servers,
            errors,
        }
    }

    /// `(server, rows, percent)` for the tally above the table.
    pub fn tally(&self) -> Vec<(String, usize, usize)> {
        let total = self.rows.len().max(1);
        self.servers
            .iter()
            .map(|(server, count)| (server.clone(), *count, count * 100 / total))
            .collect()
    }
}

/// The StockData client of this process: one channel, cloned per call.
#[derive(Debug, Clone)]
pub struct StockData {
    client: StocksClient<Channel>,
}

impl StockData {
    pub fn new(channel: Channel) -> Self {
        Self {
            client: StocksClient::new(channel),
        }
    }

    /// Calls `Get` for every id at once over the shared channel. Failures
    /// become error rows; this never fails as a whole.
    pub async fn fetch_page(&self) -> Summary {
        let mut calls = JoinSet::new();
        for id in PAGE_IDS {
            let mut client = self.client.clone();
            calls.spawn(async move { row_for(id, client.get(GetRequest { id }).await) });
        }
        let mut rows = Vec::with_capacity(PAGE_IDS.count());
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok(row) => rows.push(row),
                // A call task cannot panic on peer data; if one did, the
                // page still renders and the log says why.
                Err(err) => tracing::error!(%err, "stock call task failed"),
            }
        }
        Summary::new(rows)
    }
}

fn row_for(
    id: i32,
    result: Result<tonic::Response<stockkube_proto::stockdata::GetResponse>, tonic::Status>,
) -> Row {
    match result {
        Ok(response) => {
            let server = server_id(response.metadata());
            match response.into_inner().stock {
                Some(stock) => Row {
                    id,
                    symbol: Some(stock.symbol),
                    name: Some(stock.name),
                    server,
                    error: None,
                },
                None => Row {
                    id,
                    symbol: None,
                    name: None,
                    server,
                    error: Some("INTERNAL: the answer had no stock".to_owned()),
                },
            }
        }
        Err(status) => {
            tracing::debug!(id, code = ?status.code(), message = status.message(), "get failed");
            Row {
                id,
                symbol: None,
                name: None,
                server: server_id(status.metadata()),
                error: Some(format!(
                    "{}: {}",
                    code_name(status.code()),
                    status.message()
                )),
            }
        }
    }
}

fn server_id(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get(SERVER_ID)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// The canonical name gRPC tools print for a status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(id: i32, symbol: &str, server: &str) -> Row {
        Row {
            id,
            symbol: Some(symbol.into()),
            name: Some(format!("{symbol} Inc.")),
            server: Some(server.into()),
            error: None,
        }
    }

    fn failed(id: i32) -> Row {
        Row {
            id,
            symbol: None,
            name: None,
            server: None,
            error: Some("UNAVAILABLE: down".into()),
        }
    }

    #[test]
    fn rows_sort_by_symbol_with_failures_last() {
        let summary = Summary::new(vec![
            failed(9),
            ok(2, "MSFT", "a"),
            failed(3),
            ok(1, "AAPL", "b"),
        ]);
        let order: Vec<_> = summary.rows.iter().map(|r| r.id).collect();
        assert_eq!(order, [1, 2, 3, 9]);
    }

    #[test]
    fn tally_counts_successes_per_server_and_errors_apart() {
        let summary = Summary::new(vec![
            ok(1, "AAPL", "a"),
            ok(2, "MSFT", "a"),
            ok(3, "NVDA", "b"),
            failed(4),
        ]);
        assert_eq!(summary.servers.get("a"), Some(&2));
        assert_eq!(summary.servers.get("b"), Some(&1));
        assert_eq!(summary.errors, 1);
        assert_eq!(
            summary.tally(),
            [("a".to_owned(), 2, 50), ("b".to_owned(), 1, 25)]
        );
    }

    #[test]
    fn a_failed_call_keeps_its_status_and_server() {
        let mut status = tonic::Status::unavailable("injected failure");
        status
            .metadata_mut()
            .insert(SERVER_ID, "replica-b".parse().unwrap());
        let row = row_for(7, Err(status));
        assert_eq!(row.error.as_deref(), Some("UNAVAILABLE: injected failure"));
        assert_eq!(row.server.as_deref(), Some("replica-b"));
        assert_eq!(row.symbol, None);
    }

    #[test]
    fn json_rows_carry_error_only_when_failed() {
        let json = serde_json::to_value(Summary::new(vec![ok(1, "AAPL", "a"), failed(2)])).unwrap();
        assert!(json["rows"][0].get("error").is_none(), "{json}");
        assert_eq!(json["rows"][1]["error"], "UNAVAILABLE: down");
        assert_eq!(json["servers"]["a"], 1);
        assert_eq!(json["errors"], 1);
    }
}
