-- What IANA said about each ccTLD's administrative contact, and when. One row per answer
-- received (history is kept: the Validator may need to see what we relied on, and when), the
-- newest usable row per TLD is the cache. Failures without an answer (refused, timed out) leave
-- no row: they are not facts about the TLD.
CREATE TABLE iana_contacts (
    id          INTEGER PRIMARY KEY,              -- arrival order
    tld         TEXT    NOT NULL CHECK (tld = lower(tld) AND tld <> ''),  -- the A-label
    source      TEXT    NOT NULL CHECK (source IN ('rdap', 'whois')),
    fetched_at  REAL    NOT NULL,                 -- unix time
    admin_email TEXT,                             -- lower-case; set exactly when status = 'ok'
    status      TEXT    NOT NULL CHECK (status IN ('ok', 'not-delegated', 'unreadable')),
    reason      TEXT,                             -- why an answer was unreadable, or what it said
    raw         BLOB    NOT NULL,                 -- the answer as received (capped in size)
    CHECK ((status = 'ok') = (admin_email IS NOT NULL))
);

-- The cache lookup: the latest answer (by id) for a TLD that says something, not an
-- unreadable one. Index entries for one tld are in rowid order, so no sort is needed.
CREATE INDEX iana_contacts_usable ON iana_contacts (tld)
    WHERE status IN ('ok', 'not-delegated');
