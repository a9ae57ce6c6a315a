-- The request workflow: what each request asks, the append-only audit log of every
-- transition, the roster, and each change made to it.

ALTER TABLE requests ADD COLUMN action TEXT;         -- subscribe, update, remove
ALTER TABLE requests ADD COLUMN change TEXT;         -- JSON: the form's SSCs (normalised), removals, warnings, diff
ALTER TABLE requests ADD COLUMN reminded_at REAL;    -- last reminder to the Validators
ALTER TABLE tokens ADD COLUMN payload TEXT;          -- what a confirmation token would carry out (JSON)

-- One row per transition, and one for the birth of each request (from_state NULL). Never
-- updated, never deleted: the triggers refuse it, so a bug cannot rewrite history either.
CREATE TABLE request_events (
    id          INTEGER PRIMARY KEY,
    request_id  INTEGER NOT NULL REFERENCES requests (id),
    at          REAL    NOT NULL,
    event       TEXT    NOT NULL,                  -- submit, confirm, approve, deny, escalate, expire, withdraw, reverse
    from_state  TEXT,
    to_state    TEXT    NOT NULL,
    actor       TEXT    NOT NULL,                  -- admin, validator, scheduler, policy, requester
    who         TEXT,                              -- the address (or 'cli:USER') that acted
    auth        TEXT,                              -- how that was authenticated: dkim, token, cli, -
    evidence    TEXT,                              -- JSON
    reason      TEXT
);
CREATE INDEX request_events_by_request ON request_events (request_id, id);

CREATE TRIGGER request_events_no_update BEFORE UPDATE ON request_events
BEGIN SELECT RAISE(ABORT, 'request_events is append-only'); END;
CREATE TRIGGER request_events_no_delete BEFORE DELETE ON request_events
BEGIN SELECT RAISE(ABORT, 'request_events is append-only'); END;

-- Requests made before this migration get their birth event, so every request has one.
INSERT INTO request_events (request_id, at, event, from_state, to_state, actor, who, auth, reason)
    SELECT id, created_at, 'submit', NULL, state, 'admin', requester, auth, 'before the audit log existed'
    FROM requests ORDER BY id;

-- The roster: the current SSCs of each ccTLD (A-label). One person may serve several ccTLDs.
CREATE TABLE roster (
    tld         TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('primary', 'secondary', 'third')),
    first_name  TEXT    NOT NULL,
    last_name   TEXT    NOT NULL,
    phone       TEXT    NOT NULL,                  -- E.164
    email       TEXT    NOT NULL,                  -- normalised by email-validator
    since       REAL    NOT NULL,
    request_id  INTEGER REFERENCES requests (id),  -- the request that put them there
    PRIMARY KEY (tld, role),
    UNIQUE (tld, email)
);

-- Every change to the roster, whole before and after, with the request that made it.
CREATE TABLE roster_changes (
    id          INTEGER PRIMARY KEY,
    request_id  INTEGER NOT NULL REFERENCES requests (id),
    tld         TEXT    NOT NULL,
    at          REAL    NOT NULL,
    before      TEXT    NOT NULL,                  -- JSON list of entries
    after       TEXT    NOT NULL
);
CREATE INDEX roster_changes_by_tld ON roster_changes (tld, id);
