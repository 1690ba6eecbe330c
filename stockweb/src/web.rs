//! The HTTP surface: routes, the page template, JSON, and the one place that
//! turns a failure into a response.
//!
//! | route          | answers                                               |
//! |----------------|-------------------------------------------------------|
//! | `GET /`        | the "NASDAQ 100" page: tally per server, then the table |
//! | `GET /api/stocks` | the same data as JSON (`rows`, `servers`, `errors`) |
//! | `GET /healthz` | `ok`, for liveness and readiness probes               |
//! | `GET /assets/*`| the stylesheet                                         |

use crate::stocks::{StockData, Summary};
use askama::Template;
use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{Html, IntoResponse, Response},
    routing::get,
};
use std::path::Path;
use tower_http::services::ServeDir;

/// What every handler shares; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub stockdata: StockData,
}

/// The router, with static files served from `assets_dir`.
pub fn app(state: AppState, assets_dir: &Path) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/stocks", get(api_stocks))
        .route("/healthz", get(healthz))
        .nest_service("/assets", ServeDir::new(assets_dir))
        .with_state(state)
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    summary: Summary,
    tally: Vec<(String, usize, usize)>,
}

async fn index(State(state): State<AppState>) -> Result<Html<String>, AppError> {
    let summary = state.stockdata.fetch_page().await;
    render(IndexPage {
        tally: summary.tally(),
        summary,
    })
}

async fn api_stocks(State(state): State<AppState>) -> Json<Summary> {
    Json(state.stockdata.fetch_page().await)
}

async fn healthz() -> &'static str {
    "ok"
}

fn render(template: impl Template) -> Result<Html<String>, AppError> {
    Ok(Html(template.render()?))
}

/// A failure a handler cannot turn into a page. Users see a plain message;
/// the detail goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("rendering the page failed")]
    Render(#[from] askama::Error),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        tracing::error!(err = ?self, "request failed");
        (StatusCode::INTERNAL_SERVER_ERROR, "Internal error\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stocks::Row;

    fn row(id: i32, symbol: &str, server: &str) -> Row {
        Row {
            id,
            symbol: Some(symbol.into()),
            name: Some(format!("{symbol} & Co <Ltd>")),
            server: Some(server.into()),
            error: None,
        }
    }

    #[test]
    fn page_shows_tally_rows_and_errors_escaped() {
        let summary = Summary::new(vec![
            row(1, "AAPL", "replica-a"),
            row(2, "MSFT", "replica-b"),
            Row {
                id: 3,
                symbol: None,
                name: None,
                server: None,
                error: Some("UNAVAILABLE: <down>".into()),
            },
        ]);
        let html = IndexPage {
            tally: summary.tally(),
            summary,
        }
        .render()
        .unwrap();
        assert!(html.contains("<h1>NASDAQ 100</h1>"), "{html}");
        assert!(html.contains("<td>AAPL</td>"), "{html}");
        assert!(html.contains("replica-b"), "{html}");
        // Peer-supplied text is escaped, never markup.
        assert!(html.contains("AAPL &#38; Co &#60;Ltd&#62;"), "{html}");
        assert!(html.contains("UNAVAILABLE: &#60;down&#62;"), "{html}");
        assert!(html.contains("1 failed"), "{html}");
    }
}
