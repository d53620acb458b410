//! What the server tells clients about itself (`GetSqlInfo`) and its types (`GetXdbcTypeInfo`).
//!
//! JDBC-based BI tools (Tableau, DBeaver) call `DatabaseMetaData` methods that map to these ids
//! and fail on missing ones, so every id the Flight SQL spec defines is answered.

use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlOuterJoinsSupportLevel,
    SqlSupportedCaseSensitivity, SqlSupportedGroupBy, SqlSupportedResultSetType,
    SqlSupportedSubqueries, SqlSupportedTransaction, SqlSupportedUnions, SupportedSqlGrammar,
    XdbcDataType,
};

/// Keywords beyond SQL:2003 that DataFusion's parser treats specially (JDBC's
/// `getSQLKeywords`).
const KEYWORDS: &[&str] = &[
    "ANALYZE",
    "ARRAY",
    "COPY",
    "DESCRIBE",
    "EXPLAIN",
    "EXTERNAL",
    "FORMAT",
    "ILIKE",
    "LIMIT",
    "LOCATION",
    "OFFSET",
    "OPTIONS",
    "PARTITIONED",
    "QUALIFY",
    "SHOW",
    "STORED",
    "STRUCT",
    "UNNEST",
    "WINDOW",
];
const NUMERIC_FUNCTIONS: &[&str] = &[
    "abs", "acos", "asin", "atan", "atan2", "cbrt", "ceil", "cos", "cosh", "degrees", "exp",
    "floor", "ln", "log", "log10", "log2", "pi", "power", "radians", "random", "round", "signum",
    "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
];
const STRING_FUNCTIONS: &[&str] = &[
    "ascii",
    "btrim",
    "char_length",
    "chr",
    "concat",
    "concat_ws",
    "initcap",
    "left",
    "length",
    "lower",
    "lpad",
    "ltrim",
    "md5",
    "octet_length",
    "regexp_replace",
    "repeat",
    "replace",
    "reverse",
    "right",
    "rpad",
    "rtrim",
    "split_part",
    "starts_with",
    "strpos",
    "substr",
    "to_hex",
    "translate",
    "trim",
    "upper",
];
const SYSTEM_FUNCTIONS: &[&str] = &["arrow_typeof", "coalesce", "nullif", "version"];
const DATETIME_FUNCTIONS: &[&str] = &[
    "current_date",
    "current_time",
    "date_bin",
    "date_part",
    "date_trunc",
    "datepart",
    "datetrunc",
    "from_unixtime",
    "now",
    "to_char",
    "to_date",
    "to_timestamp",
    "to_unixtime",
];

/// Everything `GetSqlInfo` answers.
pub(crate) fn sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    // Server
    b.append(SqlInfo::FlightSqlServerName, "FlowEngine");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerSubstraitMinVersion, "");
    b.append(SqlInfo::FlightSqlServerSubstraitMaxVersion, "");
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    // DDL and identifiers
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, true);
    b.append(SqlInfo::SqlDdlTable, true);
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    // ASC sorts NULLs last and DESC first: NULL compares high.
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(SqlInfo::SqlKeywords, KEYWORDS);
    b.append(SqlInfo::SqlNumericFunctions, NUMERIC_FUNCTIONS);
    b.append(SqlInfo::SqlStringFunctions, STRING_FUNCTIONS);
    b.append(SqlInfo::SqlSystemFunctions, SYSTEM_FUNCTIONS);
    b.append(SqlInfo::SqlDatetimeFunctions, DATETIME_FUNCTIONS);
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(
        SqlInfo::SqlSupportsConvert,
        std::collections::BTreeMap::<i32, Vec<i32>>::new(),
    );
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(
        SqlInfo::SqlSupportedGroupBy,
        (1 << SqlSupportedGroupBy::SqlGroupByUnrelated as i32)
            | (1 << SqlSupportedGroupBy::SqlGroupByBeyondSelect as i32),
    );
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(
        SqlInfo::SqlSupportedGrammar,
        (1 << SupportedSqlGrammar::SqlMinimumGrammar as i32)
            | (1 << SupportedSqlGrammar::SqlCoreGrammar as i32),
    );
    b.append(
        SqlInfo::SqlAnsi92SupportedLevel,
        // SupportedAnsi92SqlGrammarLevel (not re-exported by arrow-flight): entry = 0,
        // intermediate = 1.
        (1 << 0) | (1 << 1),
    );
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    b.append(
        SqlInfo::SqlOuterJoinsSupportLevel,
        SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32,
    );
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSchemasSupportedActions, 0i32);
    b.append(SqlInfo::SqlCatalogsSupportedActions, 0i32);
    b.append(SqlInfo::SqlSupportedPositionedCommands, 0i32);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(
        SqlInfo::SqlSupportedSubqueries,
        (1 << SqlSupportedSubqueries::SqlSubqueriesInComparisons as i32)
            | (1 << SqlSupportedSubqueries::SqlSubqueriesInExists as i32)
            | (1 << SqlSupportedSubqueries::SqlSubqueriesInIns as i32),
    );
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(
        SqlInfo::SqlSupportedUnions,
        (1 << SqlSupportedUnions::SqlUnion as i32) | (1 << SqlSupportedUnions::SqlUnionAll as i32),
    );
    // Limits: 0 means "no limit or unknown" in JDBC.
    for id in [
        SqlInfo::SqlMaxBinaryLiteralLength,
        SqlInfo::SqlMaxCharLiteralLength,
        SqlInfo::SqlMaxColumnNameLength,
        SqlInfo::SqlMaxColumnsInGroupBy,
        SqlInfo::SqlMaxColumnsInIndex,
        SqlInfo::SqlMaxColumnsInOrderBy,
        SqlInfo::SqlMaxColumnsInSelect,
        SqlInfo::SqlMaxColumnsInTable,
        SqlInfo::SqlMaxConnections,
        SqlInfo::SqlMaxCursorNameLength,
        SqlInfo::SqlMaxIndexLength,
        SqlInfo::SqlDbSchemaNameLength,
        SqlInfo::SqlMaxProcedureNameLength,
        SqlInfo::SqlMaxCatalogNameLength,
        SqlInfo::SqlMaxRowSize,
        SqlInfo::SqlMaxStatementLength,
        SqlInfo::SqlMaxStatements,
        SqlInfo::SqlMaxTableNameLength,
        SqlInfo::SqlMaxTablesInSelect,
        SqlInfo::SqlMaxUsernameLength,
    ] {
        b.append(id, 0i64);
    }
    b.append(SqlInfo::SqlMaxRowSizeIncludesBlobs, false);
    // Transactions: not supported.
    b.append(SqlInfo::SqlDefaultTransactionIsolation, 0i64);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlSupportedTransactionsIsolationLevels, 0i32);
    b.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, false);
    b.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, true);
    b.append(
        SqlInfo::SqlSupportedResultSetTypes,
        1 << SqlSupportedResultSetType::SqlResultSetTypeForwardOnly as i32,
    );
    for id in [
        SqlInfo::SqlSupportedConcurrenciesForResultSetUnspecified,
        SqlInfo::SqlSupportedConcurrenciesForResultSetForwardOnly,
        SqlInfo::SqlSupportedConcurrenciesForResultSetScrollSensitive,
        SqlInfo::SqlSupportedConcurrenciesForResultSetScrollInsensitive,
    ] {
        b.append(id, 0i32);
    }
    b.append(SqlInfo::SqlBatchUpdatesSupported, false);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build().expect("static SqlInfo values are well-typed")
}

fn xdbc(
    name: &str,
    data_type: XdbcDataType,
    column_size: Option<i32>,
    literal: Option<&str>,
    case_sensitive: bool,
    searchable: Searchable,
    radix: Option<i32>,
) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.into(),
        data_type,
        column_size,
        literal_prefix: literal.map(Into::into),
        literal_suffix: literal.map(Into::into),
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive,
        searchable,
        unsigned_attribute: radix.map(|_| false),
        fixed_prec_scale: false,
        auto_increment: radix.map(|_| false),
        local_type_name: Some(name.into()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: data_type,
        datetime_subcode: None,
        num_prec_radix: radix,
        interval_precision: None,
    }
}

/// The SQL types DataFusion accepts, as JDBC/ODBC type info.
pub(crate) fn xdbc_type_info() -> XdbcTypeInfoData {
    use Searchable::{Basic, Full};
    use XdbcDataType as T;
    let mut b = XdbcTypeInfoDataBuilder::new();
    for info in [
        xdbc("BOOLEAN", T::XdbcBit, Some(1), None, false, Basic, None),
        xdbc(
            "TINYINT",
            T::XdbcTinyint,
            Some(3),
            None,
            false,
            Basic,
            Some(10),
        ),
        xdbc(
            "SMALLINT",
            T::XdbcSmallint,
            Some(5),
            None,
            false,
            Basic,
            Some(10),
        ),
        xdbc(
            "INTEGER",
            T::XdbcInteger,
            Some(10),
            None,
            false,
            Basic,
            Some(10),
        ),
        xdbc(
            "BIGINT",
            T::XdbcBigint,
            Some(19),
            None,
            false,
            Basic,
            Some(10),
        ),
        xdbc("REAL", T::XdbcReal, Some(24), None, false, Basic, Some(2)),
        xdbc(
            "DOUBLE",
            T::XdbcDouble,
            Some(53),
            None,
            false,
            Basic,
            Some(2),
        ),
        xdbc(
            "DECIMAL",
            T::XdbcDecimal,
            Some(38),
            None,
            false,
            Basic,
            Some(10),
        ),
        xdbc("VARCHAR", T::XdbcVarchar, None, Some("'"), true, Full, None),
        xdbc("BYTEA", T::XdbcVarbinary, None, None, false, Basic, None),
        xdbc("DATE", T::XdbcDate, Some(10), Some("'"), false, Basic, None),
        xdbc("TIME", T::XdbcTime, Some(15), Some("'"), false, Basic, None),
        xdbc(
            "TIMESTAMP",
            T::XdbcTimestamp,
            Some(26),
            Some("'"),
            false,
            Basic,
            None,
        ),
        xdbc(
            "INTERVAL",
            T::XdbcInterval,
            None,
            Some("'"),
            false,
            Basic,
            None,
        ),
    ] {
        let mut info = info;
        if info.type_name == "DECIMAL" {
            info.create_params = Some(vec!["precision".into(), "scale".into()]);
            info.minimum_scale = Some(0);
            info.maximum_scale = Some(38);
            info.fixed_prec_scale = true;
        }
        b.append(info);
    }
    b.build().expect("static type info is well-typed")
}
