-- The Mailman 3 backend: an outbox for Mailman. Every change of the roster marks
-- the addresses it touches in the same transaction (these triggers, whatever code path made
-- the change: an approval, a reversal, an SSC's own update, an erasure); the Mailman loop
-- then makes each marked address on the list what the roster says it is now (member with
-- its name, or not a member), which is idempotent: a retry never half-applies anything, and
-- two changes of one address before Mailman answers collapse into one.
-- The triggers fire only while a Mailman is configured (its one row in mailman_backend,
-- written by mailman.arm at start and reload): without one, no address is kept here (an
-- erased person leaves no trace); `tldops mailman sync` reconciles a list configured later.
CREATE TABLE mailman_backend (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    list  TEXT    NOT NULL,
    since REAL    NOT NULL
);

CREATE TABLE mailman_pending (
    address    TEXT    PRIMARY KEY,              -- lower-case
    due_at     REAL    NOT NULL,                 -- 0: at once
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);

CREATE TRIGGER roster_mailman_insert AFTER INSERT ON roster
    WHEN EXISTS (SELECT 1 FROM mailman_backend) BEGIN
    INSERT INTO mailman_pending (address, due_at) VALUES (lower(NEW.email), 0)
        ON CONFLICT (address) DO UPDATE SET due_at = 0, attempts = 0;
END;

CREATE TRIGGER roster_mailman_delete AFTER DELETE ON roster
    WHEN EXISTS (SELECT 1 FROM mailman_backend) BEGIN
    INSERT INTO mailman_pending (address, due_at) VALUES (lower(OLD.email), 0)
        ON CONFLICT (address) DO UPDATE SET due_at = 0, attempts = 0;
END;

CREATE TRIGGER roster_mailman_update AFTER UPDATE ON roster
    WHEN EXISTS (SELECT 1 FROM mailman_backend) BEGIN
    INSERT INTO mailman_pending (address, due_at) VALUES (lower(OLD.email), 0)
        ON CONFLICT (address) DO UPDATE SET due_at = 0, attempts = 0;
    INSERT INTO mailman_pending (address, due_at) VALUES (lower(NEW.email), 0)
        ON CONFLICT (address) DO UPDATE SET due_at = 0, attempts = 0;
END;

-- A broadcast posted to the list (once, by LMTP to Mailman) instead of mailed to each SSC;
-- its octets are dropped once Mailman took it (they name every SSC).
CREATE TABLE mailman_posts (
    id         INTEGER PRIMARY KEY,
    period     TEXT    NOT NULL UNIQUE,
    raw        BLOB    NOT NULL,
    mail_from  TEXT    NOT NULL,
    due_at     REAL    NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    posted_at  REAL
);
CREATE INDEX mailman_posts_due ON mailman_posts (due_at) WHERE posted_at IS NULL;
