-- Mail to postmaster@ and abuse@: forwarded to the operators (postmaster.forward_to), or
-- kept in the spool. One row per such message, written with its spool outcome, so a
-- message is forwarded once whatever restarts happen. Unread: neither forwarded nor
-- marked read (`tldops spool read ID`); `tldops status` reports those.
CREATE TABLE postmaster_mail (
    spool_id    INTEGER PRIMARY KEY,              -- spool.id
    service     TEXT    NOT NULL,                 -- 'postmaster' or 'abuse'
    received_at REAL    NOT NULL,
    outbox_id   INTEGER,                          -- the forward; NULL when kept
    kept        TEXT,                             -- why it was not forwarded
    read_at     REAL,
    read_by     TEXT
);
CREATE INDEX postmaster_mail_unread ON postmaster_mail (received_at)
    WHERE outbox_id IS NULL AND read_at IS NULL;
