-- Moderation of first-time posters on the built-in list (list.moderate_first_posts): a
-- member's first post waits here for a Validator. The spool row of a held post is done, so
-- the retention purge may remove its octets there: the post's own copy is kept here until it
-- is decided (emptied then), and a release puts it back in the spool to be distributed as
-- any post is. The state is changed only from 'held' (first decision wins).
CREATE TABLE list_held (
    id                  INTEGER PRIMARY KEY,
    spool_id            INTEGER NOT NULL UNIQUE REFERENCES spool (id),
    original_message_id TEXT    NOT NULL UNIQUE,      -- the author's Message-ID
    author              TEXT    NOT NULL,             -- the From address (lower case)
    subject             TEXT    NOT NULL,             -- as decoded, for `tldops list held`
    tlp                 TEXT    NOT NULL,             -- the label the copy would carry
    raw                 BLOB    NOT NULL,             -- the post as received; x'' once decided
    held_at             REAL    NOT NULL,
    state               TEXT    NOT NULL DEFAULT 'held'
                        CHECK (state IN ('held', 'released', 'rejected')),
    decided_by          TEXT,                         -- e.g. 'cli:alice'
    decided_at          REAL,
    reason              TEXT                          -- why it was rejected (told to the author)
);
CREATE INDEX list_held_by_author ON list_held (author, state);
