-- Roster broadcasts (issue 6): each period claimed once, in the transaction that queues its
-- mail, so a period is sent exactly once whatever restarts happen.
CREATE TABLE broadcasts (
    id                INTEGER PRIMARY KEY,
    period            TEXT    NOT NULL UNIQUE,       -- monthly-2026-12, weekly-2026-W49, manual-...
    kind              TEXT    NOT NULL CHECK (kind IN ('monthly', 'weekly', 'manual')),
    claimed_at        REAL    NOT NULL,
    outbox_message_id INTEGER REFERENCES outbox_messages (id),
    recipients        INTEGER NOT NULL,
    tlp               TEXT    NOT NULL
);

-- VERP: a delivery may have its own envelope sender (bounces+TAG@), so a bounce names the
-- recipient it is about; NULL means the message's.
ALTER TABLE outbox_deliveries ADD COLUMN mail_from TEXT;
