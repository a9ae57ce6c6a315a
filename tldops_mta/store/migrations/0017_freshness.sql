-- Freshness: each SSC re-confirms their entry once per freshness.interval_days. One row per
-- SSC (ccTLD and address, lower case), kept apart from the roster so that a change of the
-- roster (which rewrites its rows) keeps it. The columns are the claims: an ask, a reminder,
-- staleness and the notice each change them in the transaction that queues their mail.
CREATE TABLE freshness (
    tld                TEXT    NOT NULL,
    email              TEXT    NOT NULL,          -- lower case
    due_at             REAL    NOT NULL,          -- when the next ask falls due
    confirmed_at       REAL,                      -- last "yes" or own correction
    asked_at           REAL,                      -- the ask of the round; the round is open while >= due_at
    reminders          INTEGER NOT NULL DEFAULT 0,
    unconfirmed_since  REAL,                      -- no answer by freshness.stale_after, or a bounce
    notified_at        REAL,                      -- the IANA contact and the Validators were told
    notice_after       REAL,                      -- an IANA lookup for the notice failed: not before
    PRIMARY KEY (tld, email)
);

-- Every freshness mail, written with it: the hourly cap counts them, and they are the history.
CREATE TABLE freshness_mails (
    id     INTEGER PRIMARY KEY,
    tld    TEXT    NOT NULL,
    email  TEXT    NOT NULL,                      -- '' for a notice (one per ccTLD)
    kind   TEXT    NOT NULL CHECK (kind IN ('ask', 'reminder', 'notice')),
    at     REAL    NOT NULL
);
CREATE INDEX freshness_mails_by_time ON freshness_mails (at);

-- The bounce reports read so far for freshness (bounces.id), and the smarthost's refusals
-- (outbox deliveries failed for good) already counted: a permanent failure of an ask or of
-- the broadcast makes its SSC unconfirmed once.
CREATE TABLE freshness_cursor (
    name   TEXT    PRIMARY KEY,                   -- 'bounce': the last bounces.id read
    value  REAL    NOT NULL
);
INSERT INTO freshness_cursor (name, value) VALUES ('bounce', (SELECT coalesce(max(id), 0) FROM bounces));
CREATE TABLE freshness_refusals (
    delivery_id  INTEGER PRIMARY KEY              -- outbox_deliveries.id
);
INSERT INTO freshness_refusals (delivery_id) SELECT id FROM outbox_deliveries WHERE status = 'failed';
CREATE INDEX outbox_failed_at ON outbox_deliveries (updated_at) WHERE status = 'failed';
