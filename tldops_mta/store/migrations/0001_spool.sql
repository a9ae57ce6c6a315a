-- The spool: every message we answered 250 for, with its envelope and the facts of the
-- session that brought it. Raw octets live apart so that state changes rewrite small rows.
CREATE TABLE spool (
    id              INTEGER PRIMARY KEY,           -- arrival order
    queue_id        TEXT    NOT NULL UNIQUE,       -- shown in the 250 reply and the CLI
    received_at     REAL    NOT NULL,              -- unix time
    session_id      TEXT    NOT NULL,
    client_addr     TEXT    NOT NULL,
    client_port     INTEGER,
    helo            TEXT,
    mail_from       TEXT    NOT NULL,              -- '' for the null sender
    rcpt_to         TEXT    NOT NULL,              -- JSON array
    smtputf8        INTEGER NOT NULL DEFAULT 0,
    size            INTEGER NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'received'
                    CHECK (status IN ('received', 'processing', 'done', 'rejected', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL DEFAULT 0,
    updated_at      REAL    NOT NULL,
    services        TEXT,                          -- JSON array of recipient services
    reason          TEXT
);

CREATE INDEX spool_pending ON spool (next_attempt_at, id) WHERE status = 'received';
CREATE INDEX spool_status ON spool (status, id);

CREATE TABLE spool_messages (
    id  INTEGER PRIMARY KEY REFERENCES spool (id),
    raw BLOB    NOT NULL
);

-- Every state change, with its reason: what `tldops spool show` prints as the history.
CREATE TABLE spool_events (
    spool_id INTEGER NOT NULL REFERENCES spool (id),
    at       REAL    NOT NULL,
    status   TEXT    NOT NULL,
    reason   TEXT
);
CREATE INDEX spool_events_by_message ON spool_events (spool_id, at);
