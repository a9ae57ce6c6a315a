-- The built-in TLD-OPS list: one row per post distributed, written in the
-- transaction that queues its copy to every SSC. The original Message-ID is unique, so the
-- same post (a retry, a replayed copy) is never distributed twice; the label is kept so that
-- a reply naming the post in In-Reply-To or References inherits it (the stricter wins).
CREATE TABLE list_posts (
    id                  INTEGER PRIMARY KEY,
    original_message_id TEXT    NOT NULL UNIQUE,      -- the author's Message-ID
    message_id          TEXT    NOT NULL UNIQUE,      -- the distributed copy's (ours)
    spool_id            INTEGER NOT NULL REFERENCES spool (id),
    author              TEXT    NOT NULL,             -- the From address (lower case)
    tlp                 TEXT    NOT NULL,             -- e.g. 'TLP:AMBER'
    from_rewritten      INTEGER NOT NULL,             -- 1: From was "Name via TLD-OPS" (DMARC)
    created_at          REAL    NOT NULL,
    outbox_message_id   INTEGER REFERENCES outbox_messages (id),
    recipients          INTEGER NOT NULL
);
