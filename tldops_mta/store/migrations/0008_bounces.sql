-- Bounces: each report that came back to bounces+TAG@, tied to the delivery (and
-- so the SSC) its tag names, and the addresses reported to the Validators as failing.
CREATE TABLE bounces (
    id           INTEGER PRIMARY KEY,
    received_at  REAL    NOT NULL,
    spool_id     INTEGER NOT NULL REFERENCES spool (id),
    tag          TEXT,
    delivery_id  INTEGER REFERENCES outbox_deliveries (id),
    address      TEXT,                                           -- lower-case; NULL if none found
    permanent    INTEGER NOT NULL,
    UNIQUE (spool_id, address)                                   -- a report counts once
);
CREATE INDEX bounces_by_address ON bounces (address, received_at);

CREATE TABLE bounce_reports (
    address      TEXT    PRIMARY KEY,
    reported_at  REAL    NOT NULL,
    failures     INTEGER NOT NULL
);
