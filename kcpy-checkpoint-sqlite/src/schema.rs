//! The tables a store keeps its checkpoints in, and the SQL that reads and
//! writes them.

use sqlx::SqlitePool;

/// The schema version this crate writes (`PRAGMA user_version`) for its own
/// table.
const SCHEMA_VERSION: i64 = 1;

const CREATE_TABLE: &str = "CREATE TABLE kcpy_checkpoints (
    consumer_name TEXT NOT NULL,
    stream_name TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer_name, stream_name, shard_id)
) WITHOUT ROWID";

const COLUMNS: [&str; 5] = [
    "consumer_name",
    "stream_name",
    "shard_id",
    "checkpoint",
    "updated_at_ms",
];

/// The columns of the Python kcpy package's table, in its order.
const PYTHON_COLUMNS: [&str; 4] = ["consumer_name", "stream_name", "shard_id", "seq_no"];

/// Which table a store uses.
#[derive(Debug, Clone)]
pub(crate) enum Layout {
    /// `kcpy_checkpoints`, this crate's own (versioned, with a primary key
    /// and the time of each write).
    Own,
    /// The table of the Python kcpy package (0.1.x): `consumer_name`,
    /// `stream_name`, `shard_id`, `seq_no`, all text, under the name it was
    /// given (`kcpy` by default), with a unique index added on the key.
    PythonKcpy {
        /// The table's name: letters, digits and `_`, not starting with a digit.
        table: String,
    },
}

/// The statements of one layout.
#[derive(Debug)]
pub(crate) struct Statements {
    /// Whether `save` and `reset` take the time of the write as a fifth value.
    pub(crate) timed: bool,
    /// (key, checkpoint[, now]): writes the checkpoint unless the stored one
    /// is malformed or orders above it.
    pub(crate) save: String,
    /// (key, checkpoint[, now]): writes the checkpoint whatever is stored.
    pub(crate) reset: String,
    /// (key): removes the row.
    pub(crate) delete: String,
    /// (key): the stored value, NULL for none (as Python kcpy's reset leaves it).
    pub(crate) load: String,
}

impl Layout {
    /// Checks the names the layout puts into SQL.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self {
            Layout::Own => Ok(()),
            Layout::PythonKcpy { table } => {
                let mut chars = table.chars();
                let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
                if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    Ok(())
                } else {
                    Err(format!(
                        "table name {table:?} must be letters, digits and _, not starting with a digit"
                    ))
                }
            }
        }
    }

    pub(crate) fn statements(&self) -> Statements {
        let (table, value, time) = match self {
            Layout::Own => ("kcpy_checkpoints", "checkpoint", Some("updated_at_ms")),
            Layout::PythonKcpy { table } => (table.as_str(), "seq_no", None),
        };
        let key = "consumer_name = ?1 AND stream_name = ?2 AND shard_id = ?3";
        let (columns, values, set) = match time {
            Some(time) => (
                format!("(consumer_name, stream_name, shard_id, {value}, {time})"),
                "(?1, ?2, ?3, ?4, ?5)",
                format!("{value} = excluded.{value}, {time} = excluded.{time}"),
            ),
            None => (
                format!("(consumer_name, stream_name, shard_id, {value})"),
                "(?1, ?2, ?3, ?4)",
                format!("{value} = excluded.{value}"),
            ),
        };
        let upsert = format!(
            "INSERT INTO {table} {columns} VALUES {values}
ON CONFLICT (consumer_name, stream_name, shard_id) DO UPDATE SET {set}"
        );
        // One statement, so the ordering check and the write are atomic. A
        // row is only replaced when the stored text is a well-formed
        // checkpoint (a malformed one is reported, never overwritten) and the
        // new one does not order below it; NULL is no checkpoint.
        let (stored, new) = (format!("{table}.{value}"), format!("excluded.{value}"));
        let save = format!(
            "{upsert}
    WHERE {stored} IS NULL OR ({} AND {} >= {})",
            well_formed(&stored),
            order_key(&new),
            order_key(&stored)
        );
        Statements {
            timed: time.is_some(),
            save,
            reset: upsert,
            delete: format!("DELETE FROM {table} WHERE {key}"),
            // As text whatever SQLite stored: a float the Python package
            // wrote into an untyped or REAL column is then shown as it is.
            load: format!("SELECT CAST({value} AS TEXT) FROM {table} WHERE {key}"),
        }
    }

    /// Creates the table if it is missing, or checks the one there.
    pub(crate) async fn migrate(&self, pool: &SqlitePool) -> Result<(), MigrateError> {
        match self {
            Layout::Own => migrate_own(pool).await,
            Layout::PythonKcpy { table } => migrate_python(pool, table).await,
        }
    }
}

/// Whether the text in `column` is a checkpoint: `SHARD_END`, a start, a
/// sequence number, or one with a sub-sequence number.
fn well_formed(column: &str) -> String {
    let start = format!("{column} GLOB 'AT_TIMESTAMP:*'");
    let whole = format!("(NOT {start} AND instr({column}, ':') = 0)");
    let part = format!("(NOT {start} AND instr({column}, ':') > 0)");
    // At most u64::MAX: among 20 digits, text order is numeric order.
    let tail = tail(column);
    format!(
        "({column} = 'SHARD_END'
           OR ({whole} AND {})
           OR ({part} AND {} AND {} AND (length({tail}) < 20 OR {tail} <= '18446744073709551615'))
           OR ({start} AND {} AND (length({column}) < 33 OR substr({column}, 14) <= '18446744073709551615')))",
        digits(column, 129),
        digits(&head(column), 129),
        digits(&tail, 20),
        digits(&format!("substr({column}, 14)"), 20),
    )
}

/// Canonical digits: 1 to `most`, no leading zero.
fn digits(text: &str, most: u32) -> String {
    format!("(length({text}) BETWEEN 1 AND {most} AND {text} NOT GLOB '*[^0-9]*' AND ({text} = '0' OR {text} NOT GLOB '0*'))")
}

/// A sub-sequence checkpoint's sequence number (the whole text otherwise).
fn head(column: &str) -> String {
    format!(
        "(CASE WHEN {column} GLOB 'AT_TIMESTAMP:*' OR instr({column}, ':') = 0 THEN {column} \
         ELSE substr({column}, 1, instr({column}, ':') - 1) END)"
    )
}

/// A sub-sequence checkpoint's sub-sequence number ('' otherwise).
fn tail(column: &str) -> String {
    format!(
        "(CASE WHEN {column} GLOB 'AT_TIMESTAMP:*' OR instr({column}, ':') = 0 THEN '' \
         ELSE substr({column}, instr({column}, ':') + 1) END)"
    )
}

/// A row value in checkpoint order: AT_TIMESTAMP starts first (their common
/// prefix makes length-then-text their order in time), SHARD_END last, else
/// by sequence number (length, then digits); inside one aggregate by
/// sub-sequence number, the whole record after every part of it.
fn order_key(column: &str) -> String {
    let (head, tail) = (head(column), tail(column));
    format!(
        "({column} = 'SHARD_END', {column} NOT GLOB 'AT_TIMESTAMP:*', length({head}), {head}, \
         {tail} = '', length({tail}), {tail})"
    )
}

/// The database holds a table this crate cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SchemaError(pub(crate) String);

pub(crate) enum MigrateError {
    Sql(sqlx::Error),
    Shape(String),
}

impl From<sqlx::Error> for MigrateError {
    fn from(e: sqlx::Error) -> Self {
        MigrateError::Sql(e)
    }
}

async fn columns(tx: &mut sqlx::SqliteConnection, table: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
        .bind(table)
        .fetch_all(tx)
        .await
}

async fn migrate_own(pool: &SqlitePool) -> Result<(), MigrateError> {
    let mut tx = pool.begin().await?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *tx).await?;
    let columns = columns(&mut tx, "kcpy_checkpoints").await?;
    match version {
        0 if columns.is_empty() => {
            sqlx::query(CREATE_TABLE).execute(&mut *tx).await?;
            sqlx::query(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .execute(&mut *tx)
                .await?;
        }
        SCHEMA_VERSION if columns == COLUMNS => {}
        SCHEMA_VERSION | 0 => {
            return Err(MigrateError::Shape(format!(
                "table kcpy_checkpoints has columns {columns:?}, expected {COLUMNS:?}"
            )))
        }
        newer => {
            return Err(MigrateError::Shape(format!(
                "schema version {newer} is newer than this kcpy-checkpoint-sqlite understands ({SCHEMA_VERSION})"
            )))
        }
    }
    tx.commit().await?;
    Ok(())
}

// Python kcpy created the table without a key and wrote it with a read, then
// an INSERT or UPDATE; the unique index this adds makes the write one atomic
// upsert, and leaves the table readable by that package.
async fn migrate_python(pool: &SqlitePool, table: &str) -> Result<(), MigrateError> {
    let mut tx = pool.begin().await?;
    let columns = columns(&mut tx, table).await?;
    if columns.is_empty() {
        sqlx::query(&format!(
            "CREATE TABLE {table} (consumer_name text, stream_name text, shard_id text, seq_no text)"
        ))
        .execute(&mut *tx)
        .await?;
    } else if columns != PYTHON_COLUMNS {
        return Err(MigrateError::Shape(format!(
            "table {table} has columns {columns:?}, expected Python kcpy's {PYTHON_COLUMNS:?}"
        )));
    }
    let duplicated: Option<(String, String, String)> = sqlx::query_as(&format!(
        "SELECT consumer_name, stream_name, shard_id FROM {table}
         GROUP BY consumer_name, stream_name, shard_id HAVING count(*) > 1 LIMIT 1"
    ))
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((consumer, stream, shard)) = duplicated {
        return Err(MigrateError::Shape(format!(
            "table {table} holds more than one row for consumer {consumer:?}, stream {stream:?}, shard {shard:?}; \
             keep the one to resume from and delete the others"
        )));
    }
    sqlx::query(&format!(
        "CREATE UNIQUE INDEX IF NOT EXISTS {table}_kcpy_key ON {table} (consumer_name, stream_name, shard_id)"
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
