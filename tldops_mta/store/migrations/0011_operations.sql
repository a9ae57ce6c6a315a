-- Operations: outreach invitations, the monthly statistics mail, and the audit
-- record of erasures of personal data.

-- Each invitation mailed to the IANA admin contact of a non-subscribed ccTLD.
CREATE TABLE invitations (
    id                INTEGER PRIMARY KEY,
    tld               TEXT    NOT NULL,              -- A-label
    admin_email       TEXT    NOT NULL,              -- as IANA published it then
    sent_at           REAL    NOT NULL,
    outbox_message_id INTEGER REFERENCES outbox_messages (id)
);
CREATE INDEX invitations_by_tld ON invitations (tld, sent_at);

-- The monthly statistics mail: each month claimed once, in the transaction that queues it.
CREATE TABLE stats_reports (
    period            TEXT    PRIMARY KEY,           -- stats-2026-12
    claimed_at        REAL    NOT NULL,
    outbox_message_id INTEGER REFERENCES outbox_messages (id)
);

-- `tldops person erase`: what was removed, never whom (no address, no name).
CREATE TABLE erasures (
    id      INTEGER PRIMARY KEY,
    at      REAL    NOT NULL,
    by      TEXT    NOT NULL,                        -- the operator (local user)
    reason  TEXT    NOT NULL,
    counts  TEXT    NOT NULL                         -- JSON: rows changed per table
);
