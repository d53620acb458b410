//! `INSERT INTO` a Redis stream table: each row is appended with `XADD` (the payload in the
//! table's field, or with format `fields` one field per column), pipelined; an append counts
//! once Redis answered it.

use async_trait::async_trait;
use datafusion::arrow::array::Array;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::error::Result;

use super::RedisStream;
use crate::queue::broker::Outgoing;

/// A connection with the appends not sent yet.
pub(crate) struct Publisher {
    redis: RedisStream,
    con: redis::aio::MultiplexedConnection,
    pipe: redis::Pipeline,
    queued: u64,
}

impl Publisher {
    pub(super) fn new(redis: RedisStream, con: redis::aio::MultiplexedConnection) -> Self {
        Self {
            redis,
            con,
            pipe: redis::pipe(),
            queued: 0,
        }
    }
}

#[async_trait]
impl crate::queue::broker::Publisher for Publisher {
    async fn send(&mut self, message: Outgoing<'_>) -> Result<()> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.redis.key);
        if let Some(n) = self.redis.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*");
        match &self.redis.field {
            Some(field) => {
                cmd.arg(field).arg(message.payload);
            }
            None => {
                let batch = message.batch;
                for (i, f) in batch.schema().fields().iter().enumerate() {
                    let column = batch.column(i);
                    if column.is_null(message.row) {
                        continue;
                    }
                    cmd.arg(f.name())
                        .arg(array_value_to_string(column.as_ref(), message.row)?);
                }
            }
        }
        self.pipe.add_command(cmd);
        self.queued += 1;
        Ok(())
    }

    async fn flush(&mut self) -> Result<u64> {
        if self.queued == 0 {
            return Ok(0);
        }
        let _: Vec<redis::Value> = self
            .pipe
            .query_async(&mut self.con)
            .await
            .map_err(|e| self.redis.site.err("appending entries", e))?;
        self.pipe.clear();
        Ok(std::mem::take(&mut self.queued))
    }
}
