//! The stock catalog: the NASDAQ-100's securities with stable ids, and the
//! validation of a requested id. Pure data and lookups; no I/O.
//!
//! The index holds 101 securities (Alphabet lists two share classes), so ids
//! run from 1 to 101, ordered by symbol.

use stockkube_proto::stockdata::Stock;

/// Why a lookup found no stock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// Becomes INVALID_ARGUMENT at the gRPC edge.
    #[error("stock id must be 1 or more, got {0}")]
    InvalidId(i32),
    /// Becomes NOT_FOUND at the gRPC edge.
    #[error("no stock with id {0}")]
    NotFound(i32),
}

impl From<LookupError> for tonic::Status {
    fn from(err: LookupError) -> Self {
        match err {
            LookupError::InvalidId(_) => tonic::Status::invalid_argument(err.to_string()),
            LookupError::NotFound(_) => tonic::Status::not_found(err.to_string()),
        }
    }
}

/// Symbol and company name, in id order: entry `i` has id `i + 1`.
const NASDAQ_100: &[(&str, &str)] = &[
    ("AAPL", "Apple Inc."),
    ("ABNB", "Airbnb, Inc."),
    ("ADBE", "Adobe Inc."),
    ("ADI", "Analog Devices, Inc."),
    ("ADP", "Automatic Data Processing, Inc."),
    ("ADSK", "Autodesk, Inc."),
    ("AEP", "American Electric Power Company, Inc."),
    ("AMAT", "Applied Materials, Inc."),
    ("AMD", "Advanced Micro Devices, Inc."),
    ("AMGN", "Amgen Inc."),
    ("AMZN", "Amazon.com, Inc."),
    ("ANSS", "ANSYS, Inc."),
    ("APP", "AppLovin Corporation"),
    ("ARM", "Arm Holdings plc"),
    ("ASML", "ASML Holding N.V."),
    ("AVGO", "Broadcom Inc."),
    ("AXON", "Axon Enterprise, Inc."),
    ("AZN", "AstraZeneca PLC"),
    ("BIIB", "Biogen Inc."),
    ("BKNG", "Booking Holdings Inc."),
    ("BKR", "Baker Hughes Company"),
    ("CCEP", "Coca-Cola Europacific Partners PLC"),
    ("CDNS", "Cadence Design Systems, Inc."),
    ("CDW", "CDW Corporation"),
    ("CEG", "Constellation Energy Corporation"),
    ("CHTR", "Charter Communications, Inc."),
    ("CMCSA", "Comcast Corporation"),
    ("COST", "Costco Wholesale Corporation"),
    ("CPRT", "Copart, Inc."),
    ("CRWD", "CrowdStrike Holdings, Inc."),
    ("CSCO", "Cisco Systems, Inc."),
    ("CSGP", "CoStar Group, Inc."),
    ("CSX", "CSX Corporation"),
    ("CTAS", "Cintas Corporation"),
    ("CTSH", "Cognizant Technology Solutions Corporation"),
    ("DASH", "DoorDash, Inc."),
    ("DDOG", "Datadog, Inc."),
    ("DXCM", "DexCom, Inc."),
    ("EA", "Electronic Arts Inc."),
    ("EXC", "Exelon Corporation"),
    ("FANG", "Diamondback Energy, Inc."),
    ("FAST", "Fastenal Company"),
    ("FTNT", "Fortinet, Inc."),
    ("GEHC", "GE HealthCare Technologies Inc."),
    ("GFS", "GlobalFoundries Inc."),
    ("GILD", "Gilead Sciences, Inc."),
    ("GOOG", "Alphabet Inc. Class C"),
    ("GOOGL", "Alphabet Inc. Class A"),
    ("HON", "Honeywell International Inc."),
    ("IDXX", "IDEXX Laboratories, Inc."),
    ("INTC", "Intel Corporation"),
    ("INTU", "Intuit Inc."),
    ("ISRG", "Intuitive Surgical, Inc."),
    ("KDP", "Keurig Dr Pepper Inc."),
    ("KHC", "The Kraft Heinz Company"),
    ("KLAC", "KLA Corporation"),
    ("LIN", "Linde plc"),
    ("LRCX", "Lam Research Corporation"),
    ("LULU", "Lululemon Athletica Inc."),
    ("MAR", "Marriott International, Inc."),
    ("MCHP", "Microchip Technology Incorporated"),
    ("MDB", "MongoDB, Inc."),
    ("MDLZ", "Mondelez International, Inc."),
    ("MELI", "MercadoLibre, Inc."),
    ("META", "Meta Platforms, Inc."),
    ("MNST", "Monster Beverage Corporation"),
    ("MRVL", "Marvell Technology, Inc."),
    ("MSFT", "Microsoft Corporation"),
    ("MSTR", "MicroStrategy Incorporated"),
    ("MU", "Micron Technology, Inc."),
    ("NFLX", "Netflix, Inc."),
    ("NVDA", "NVIDIA Corporation"),
    ("NXPI", "NXP Semiconductors N.V."),
    ("ODFL", "Old Dominion Freight Line, Inc."),
    ("ON", "ON Semiconductor Corporation"),
    ("ORLY", "O'Reilly Automotive, Inc."),
    ("PANW", "Palo Alto Networks, Inc."),
    ("PAYX", "Paychex, Inc."),
    ("PCAR", "PACCAR Inc"),
    ("PDD", "PDD Holdings Inc."),
    ("PEP", "PepsiCo, Inc."),
    ("PLTR", "Palantir Technologies Inc."),
    ("PYPL", "PayPal Holdings, Inc."),
    ("QCOM", "QUALCOMM Incorporated"),
    ("REGN", "Regeneron Pharmaceuticals, Inc."),
    ("ROP", "Roper Technologies, Inc."),
    ("ROST", "Ross Stores, Inc."),
    ("SBUX", "Starbucks Corporation"),
    ("SNPS", "Synopsys, Inc."),
    ("TEAM", "Atlassian Corporation"),
    ("TMUS", "T-Mobile US, Inc."),
    ("TSLA", "Tesla, Inc."),
    ("TTD", "The Trade Desk, Inc."),
    ("TTWO", "Take-Two Interactive Software, Inc."),
    ("TXN", "Texas Instruments Incorporated"),
    ("VRSK", "Verisk Analytics, Inc."),
    ("VRTX", "Vertex Pharmaceuticals Incorporated"),
    ("WBD", "Warner Bros. Discovery, Inc."),
    ("WDAY", "Workday, Inc."),
    ("XEL", "Xcel Energy Inc."),
    ("ZS", "Zscaler, Inc."),
];

/// Number of stocks in the catalog; valid ids are `1..=LEN`.
pub const LEN: usize = NASDAQ_100.len();

/// Looks a stock up by id.
pub fn lookup(id: i32) -> Result<Stock, LookupError> {
    if id < 1 {
        return Err(LookupError::InvalidId(id));
    }
    let index = usize::try_from(id - 1).expect("id >= 1 was checked above");
    let (symbol, name) = NASDAQ_100.get(index).ok_or(LookupError::NotFound(id))?;
    Ok(Stock {
        id,
        symbol: (*symbol).to_owned(),
        name: (*name).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_id_of_the_sample_resolves() {
        const { assert!(LEN >= 101) };
        for id in 1..=101 {
            let stock = lookup(id).expect("sample ids resolve");
            assert_eq!(stock.id, id);
            assert!(!stock.symbol.is_empty() && !stock.name.is_empty());
        }
    }

    #[test]
    fn first_and_last_ids_are_stable() {
        assert_eq!(lookup(1).unwrap().symbol, "AAPL");
        assert_eq!(lookup(LEN as i32).unwrap().symbol, "ZS");
    }

    #[test]
    fn symbols_are_unique_and_sorted() {
        let symbols: Vec<_> = NASDAQ_100.iter().map(|(s, _)| *s).collect();
        let unique: HashSet<_> = symbols.iter().collect();
        assert_eq!(unique.len(), symbols.len(), "duplicate symbol");
        let mut sorted = symbols.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, symbols, "ids follow symbol order");
    }

    #[test]
    fn ids_below_one_are_invalid() {
        assert_eq!(lookup(0), Err(LookupError::InvalidId(0)));
        assert_eq!(lookup(-5), Err(LookupError::InvalidId(-5)));
        assert_eq!(lookup(i32::MIN), Err(LookupError::InvalidId(i32::MIN)));
    }

    #[test]
    fn ids_past_the_end_are_not_found() {
        assert_eq!(
            lookup(LEN as i32 + 1),
            Err(LookupError::NotFound(LEN as i32 + 1))
        );
        assert_eq!(lookup(i32::MAX), Err(LookupError::NotFound(i32::MAX)));
    }

    #[test]
    fn errors_map_to_grpc_codes_with_the_value_in_the_message() {
        let status = tonic::Status::from(LookupError::InvalidId(0));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("got 0"), "{}", status.message());
        let status = tonic::Status::from(LookupError::NotFound(100000));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains("100000"), "{}", status.message());
    }
}
