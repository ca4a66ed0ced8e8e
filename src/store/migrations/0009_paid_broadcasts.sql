-- A paid broadcast (`/broadcast --paid`) is sent with Telegram's allow_paid_broadcast, at the
-- bot's paid rate; its recipients are queued by whichever worker holds its lease, just ahead of
-- that rate (telegram::outbox::feeder), no longer by the admin's update.
ALTER TABLE broadcasts ADD COLUMN paid boolean NOT NULL DEFAULT false;
