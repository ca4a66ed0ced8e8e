//! What keeps the senders' consumer group healthy: entries idle too long are claimed (their
//! sender failed or died) and dead-lettered after too many deliveries, senders that left are
//! forgotten, and the backlog is measured.

use std::time::Duration;

use redis::streams::{StreamId, StreamInfoConsumersReply, StreamPendingCountReply};

use super::queue::GROUP;
use super::sender::{BATCH, Sender};
use crate::kv::Conn;

impl Sender {
    /// Removes from the group the senders that have left: nothing pending, silent for longer
    /// than `claim_after` (each worker's sender joins under a new name, so every restart would
    /// leave one behind). Removing a live one that is merely waiting costs nothing: its next
    /// read makes it a member again.
    pub(super) async fn forget_departed(&self, conn: &mut Conn, me: &str) -> anyhow::Result<()> {
        let [stream, _] = self.bot.keys.outbox();
        let members: StreamInfoConsumersReply =
            redis::cmd("XINFO").arg("CONSUMERS").arg(&stream).arg(GROUP).query_async(conn).await?;
        let silent = self.config.claim_after.as_millis();
        for gone in
            members.consumers.iter().filter(|c| c.name != me && c.pending == 0 && c.idle as u128 > silent)
        {
            let _: i64 = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&stream)
                .arg(GROUP)
                .arg(&gone.name)
                .query_async(conn)
                .await?;
        }
        Ok(())
    }

    /// Takes over entries idle past `claim_after` (failed, or their sender died), then forgets
    /// the senders it took them from if they have left.
    pub(super) async fn claim(&self, conn: &mut Conn, me: &str) -> anyhow::Result<()> {
        let [stream, dead] = self.bot.keys.outbox();
        let idle = self.config.claim_after.as_millis() as u64;
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .arg("IDLE")
            .arg(idle)
            .arg("-")
            .arg("+")
            .arg(BATCH)
            .query_async(conn)
            .await?;
        let took_over = !pending.ids.is_empty();
        for waiting in pending.ids {
            let claimed: redis::streams::StreamClaimReply = redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(me)
                .arg(idle)
                .arg(&waiting.id)
                .query_async(conn)
                .await?;
            for entry in claimed.ids {
                if waiting.times_delivered < self.config.max_deliveries {
                    self.metrics
                        .outbox_redeliveries
                        .with_label_values(&[self.bot.config.name.as_str()])
                        .inc();
                    self.deliver(conn, &entry).await?;
                    continue;
                }
                let name = self.bot.config.name.as_str();
                tracing::error!(bot = name, id = %entry.id, deliveries = waiting.times_delivered, "outbox message dead-lettered");
                let mut dead_letter = redis::pipe();
                dead_letter.atomic().cmd("XADD").arg(&dead).arg("*").arg(fields(&entry)).ignore();
                let () = self.done(dead_letter, &entry.id).query_async(conn).await?;
                self.journal(&entry).await;
                self.metrics.outbox_dead.with_label_values(&[name]).inc();
                sentry::with_scope(
                    |scope| scope.set_tag("bot", name),
                    || crate::telemetry::report_error("outbox message dead-lettered"),
                );
            }
        }
        if took_over {
            self.forget_departed(conn, me).await?;
        }
        Ok(())
    }

    /// The backlog and the age of its oldest message, as metrics.
    pub(super) async fn measure(&self, conn: &mut Conn) -> anyhow::Result<()> {
        let [stream, _] = self.bot.keys.outbox();
        let name = self.bot.config.name.as_str();
        let (backlog, oldest): (u64, Vec<(String, Vec<String>)>) = redis::pipe()
            .cmd("XLEN")
            .arg(&stream)
            .cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        self.metrics.outbox_backlog.with_label_values(&[name]).set(backlog as i64);
        let age =
            oldest.first().and_then(|(id, _)| id.split('-').next()?.parse::<u64>().ok()).map_or(0.0, |ms| {
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                (now.as_millis() as u64).saturating_sub(ms) as f64 / 1000.0
            });
        self.metrics.outbox_oldest_age_seconds.with_label_values(&[name]).set(age);
        Ok(())
    }

    /// How long a read waits for new entries before the sender looks for idle ones.
    pub(super) fn block(&self) -> Duration {
        self.config.claim_after.clamp(Duration::from_millis(1), Duration::from_secs(2))
    }

    /// `pipe` with the entry's acknowledgement and deletion added, atomically.
    pub(super) fn done(&self, mut pipe: redis::Pipeline, id: &str) -> redis::Pipeline {
        let [stream, _] = self.bot.keys.outbox();
        pipe.atomic()
            .cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(id)
            .ignore()
            .cmd("XDEL")
            .arg(&stream)
            .arg(id)
            .ignore();
        pipe
    }
}

/// An outbox entry's fields and values, to be written elsewhere whole (the dead stream, a
/// paused broadcast's parked stream).
pub(super) fn fields(entry: &StreamId) -> Vec<(&str, String)> {
    entry.map.keys().map(|field| (field.as_str(), entry.get::<String>(field).unwrap_or_default())).collect()
}
