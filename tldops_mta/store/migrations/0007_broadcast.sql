-- Roster broadcasts: each period claimed once, in the transaction that queues its
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

-- Tokens that answer no request (an SSC's "who" query confirmed by token): request_id may
-- now be NULL. SQLite cannot drop a NOT NULL in place, so the table is rebuilt.
CREATE TABLE tokens_new (
    hash        TEXT    PRIMARY KEY,
    purpose     TEXT    NOT NULL,
    request_id  INTEGER REFERENCES requests (id),  -- NULL for a token about no request
    address     TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    expires_at  REAL    NOT NULL,
    used_at     REAL,
    used_by     INTEGER,
    payload     TEXT
);
INSERT INTO tokens_new (hash, purpose, request_id, address, created_at, expires_at, used_at, used_by, payload)
    SELECT hash, purpose, request_id, address, created_at, expires_at, used_at, used_by, payload FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_new RENAME TO tokens;

-- An SSC may correct their own name and phone (update@, confirmed by token): a roster change
-- that no request made. request_id may be NULL then, and ``by`` says who made it.
CREATE TABLE roster_changes_new (
    id          INTEGER PRIMARY KEY,
    request_id  INTEGER REFERENCES requests (id),  -- NULL for an SSC's own correction
    tld         TEXT    NOT NULL,
    at          REAL    NOT NULL,
    before      TEXT    NOT NULL,
    after       TEXT    NOT NULL,
    by          TEXT                               -- e.g. 'ssc:jane.doe@nic.org.mt (token)'
);
INSERT INTO roster_changes_new (id, request_id, tld, at, before, after)
    SELECT id, request_id, tld, at, before, after FROM roster_changes;
DROP TABLE roster_changes;
ALTER TABLE roster_changes_new RENAME TO roster_changes;
CREATE INDEX roster_changes_by_tld ON roster_changes (tld, id);
