//! An org's INR statement for a period, as a stream of CSV or JSON chunks.

use bahi_domain::credential::Scope;
use bahi_domain::ids::OrgId;
use bahi_reports::{StatementFormat, statement_period};
use futures::Stream;
use serde::Deserialize;

use super::audit::wait_for_projection;
use super::{AppError, AppResult, Reader, Services, current_request_id};

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub format: Option<String>,
    /// The operator names the org; an org's credential may name only its own.
    #[schemars(regex(pattern = "^org_[0-9A-Za-z]{1,64}$"))]
    pub org_id: Option<String>,
}

/// A statement on its way: its format, a file name for downloads, and its chunks.
pub struct Statement<S> {
    pub format: StatementFormat,
    pub file_name: String,
    pub chunks: S,
}

pub async fn statement(
    services: &Services,
    reader: &Reader,
    request: StatementQuery,
) -> AppResult<Statement<impl Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + use<>>> {
    let org_id: OrgId = reader.org(services, Scope::StatementsRead, request.org_id.as_deref())?;
    let (Some(from), Some(to)) = (request.from.as_deref(), request.to.as_deref()) else {
        return Err(AppError::invalid_request("from and to are required (YYYY-MM-DD, both included)"));
    };
    let (from_date, to_date, period) =
        statement_period(from, to).map_err(|error| AppError::invalid_request(error.to_string()))?;
    let format = StatementFormat::parse(request.format.as_deref().unwrap_or("json"))
        .map_err(|error| AppError::invalid_request(error.to_string()))?;
    wait_for_projection(services).await;
    let chunks = crate::finance::statement_stream(
        &services.store,
        org_id.as_str(),
        from_date,
        to_date,
        period,
        format,
        current_request_id(),
    )
    .await?;
    let extension = if format == StatementFormat::Csv { "csv" } else { "json" };
    let file_name = format!("statement-{org_id}-{from_date}-{to_date}.{extension}");
    Ok(Statement { format, file_name, chunks })
}
