-- A paid broadcast (`/broadcast --paid`) is sent with Telegram's allow_paid_broadcast, at the
-- bot's paid rate; its recipients are queued by whichever worker holds its lease, just ahead of
-- that rate (telegram::outbox::feeder), no longer by the admin's update.
-- A paused broadcast (`/broadcast_pause`) queues and sends nothing until `/broadcast_resume`.
ALTER TABLE broadcasts ADD COLUMN paid boolean NOT NULL DEFAULT false,
                       ADD COLUMN paused boolean NOT NULL DEFAULT false;
