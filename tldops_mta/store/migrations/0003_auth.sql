-- Authentication state: requests and their evidence, one-time tokens, Message-IDs already
-- seen (replay), refusal replies sent (backscatter limit), and the durable outbox.

CREATE TABLE requests (
    id          INTEGER PRIMARY KEY,
    spool_id    INTEGER NOT NULL REFERENCES spool (id),
    tld         TEXT    NOT NULL,                  -- A-label
    requester   TEXT    NOT NULL,                  -- the From address
    admin_email TEXT    NOT NULL,                  -- IANA's, at decision time
    auth        TEXT    NOT NULL CHECK (auth IN ('dkim', 'token')),
    state       TEXT    NOT NULL,
    evidence    TEXT    NOT NULL,                  -- JSON: DKIM results, IANA answer, reasons
    created_at  REAL    NOT NULL,
    updated_at  REAL    NOT NULL,
    UNIQUE (spool_id, tld)                         -- processing a message twice changes nothing
);
CREATE INDEX requests_by_state ON requests (state, id);

CREATE TABLE tokens (
    hash        TEXT    PRIMARY KEY,               -- sha256 of the token; the token itself is never stored
    purpose     TEXT    NOT NULL,
    request_id  INTEGER NOT NULL REFERENCES requests (id),
    address     TEXT    NOT NULL,                  -- who was sent the token
    created_at  REAL    NOT NULL,
    expires_at  REAL    NOT NULL,
    used_at     REAL,
    used_by     INTEGER                            -- spool id of the confirming message
);

CREATE TABLE seen_messages (
    message_id  TEXT    PRIMARY KEY,
    spool_id    INTEGER NOT NULL,
    seen_at     REAL    NOT NULL
);

CREATE TABLE refusal_replies (
    address     TEXT    PRIMARY KEY,
    last_sent   REAL    NOT NULL
);

CREATE TABLE outbox_messages (
    id          INTEGER PRIMARY KEY,
    created_at  REAL    NOT NULL,
    purpose     TEXT    NOT NULL,
    ref         TEXT,                              -- spool queue id or request id it answers
    mail_from   TEXT    NOT NULL,                  -- envelope sender; '' is the null sender
    raw         BLOB    NOT NULL
);

CREATE TABLE outbox_deliveries (
    id              INTEGER PRIMARY KEY,
    message_id      INTEGER NOT NULL REFERENCES outbox_messages (id),
    rcpt            TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL DEFAULT 0,
    last_error      TEXT,
    updated_at      REAL    NOT NULL
);
CREATE INDEX outbox_due ON outbox_deliveries (next_attempt_at, id) WHERE status = 'queued';
