//! `INSERT INTO` a Redis stream table: each row is appended with `XADD` (the payload in the
//! table's field, or with format `fields` one field per column), pipelined a thousand at a
//! time; the statement succeeds once Redis answered every append.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::sink::DataSink;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use futures::StreamExt;

use super::Endpoint;
use crate::queue::decode::Format;

/// Appends per round trip.
const PIPELINE: usize = 1000;

#[derive(Debug)]
pub(crate) struct StreamSink {
    endpoint: Endpoint,
    schema: SchemaRef,
    declared: SchemaRef,
    format: Format,
    maxlen: Option<usize>,
}

impl StreamSink {
    pub(crate) fn new(
        endpoint: Endpoint,
        schema: SchemaRef,
        declared: SchemaRef,
        format: Format,
        maxlen: Option<usize>,
    ) -> Self {
        Self {
            endpoint,
            schema,
            declared,
            format,
            maxlen,
        }
    }

    fn xadd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.endpoint.key);
        if let Some(n) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*");
        cmd
    }
}

impl DisplayAs for StreamSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisStreamSink(stream={})", self.endpoint.key)
    }
}

#[async_trait]
impl DataSink for StreamSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let mut con = self.endpoint.connect().await?;
        let mut sent = 0u64;
        let mut pipe = redis::pipe();
        let mut queued = 0usize;
        while let Some(batch) = data.next().await {
            let batch = batch?;
            let indices: Vec<usize> = (0..self.declared.fields().len()).collect();
            let batch = batch.project(&indices)?;
            match &self.endpoint.field {
                Some(field) => {
                    for payload in crate::queue::encode::payloads(self.format, &batch)? {
                        let mut cmd = self.xadd();
                        cmd.arg(field).arg(payload);
                        pipe.add_command(cmd);
                        queued += 1;
                        if queued >= PIPELINE {
                            sent += self.flush(&mut pipe, &mut queued, &mut con, sent).await?;
                        }
                    }
                }
                None => {
                    for row in 0..batch.num_rows() {
                        let mut cmd = self.xadd();
                        for (i, f) in self.declared.fields().iter().enumerate() {
                            let column = batch.column(i);
                            if column.is_null(row) {
                                continue;
                            }
                            cmd.arg(f.name())
                                .arg(array_value_to_string(column.as_ref(), row)?);
                        }
                        pipe.add_command(cmd);
                        queued += 1;
                        if queued >= PIPELINE {
                            sent += self.flush(&mut pipe, &mut queued, &mut con, sent).await?;
                        }
                    }
                }
            }
        }
        sent += self.flush(&mut pipe, &mut queued, &mut con, sent).await?;
        Ok(sent)
    }
}

impl StreamSink {
    async fn flush(
        &self,
        pipe: &mut redis::Pipeline,
        queued: &mut usize,
        con: &mut redis::aio::MultiplexedConnection,
        sent_before: u64,
    ) -> Result<u64> {
        if *queued == 0 {
            return Ok(0);
        }
        let _: Vec<redis::Value> = pipe.query_async(con).await.map_err(|e| {
            self.endpoint.err(
                "appending entries",
                format!(
                    "{e} ({sent_before} earlier rows were appended; a retry appends them again)"
                ),
            )
        })?;
        let n = *queued as u64;
        pipe.clear();
        *queued = 0;
        Ok(n)
    }
}
