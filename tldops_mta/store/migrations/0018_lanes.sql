-- Priority lanes (store/lanes.py): the spool appender decides each message's lane as it
-- inserts it, and the worker claims lane by lane (spool.due). 0 token, 1 known, 2 ordinary;
-- messages spooled before this migration are ordinary.
ALTER TABLE spool ADD COLUMN lane INTEGER NOT NULL DEFAULT 2 CHECK (lane IN (0, 1, 2));
-- The address that earned the known lane (lane 1 only): its budget counts these rows.
ALTER TABLE spool ADD COLUMN lane_key TEXT;

-- The claim: lane by lane, each by next_attempt_at and id ...
CREATE INDEX spool_lanes ON spool (lane, next_attempt_at, id, received_at) WHERE status = 'received';
-- ... after whatever has waited longer than worker.max_wait, oldest first. The last column
-- of each is what the other query's condition reads: rows skipped are skipped in the index.
CREATE INDEX spool_overdue ON spool (received_at, id, next_attempt_at) WHERE status = 'received';
-- The budget: messages an address earned the known lane for, within the window.
CREATE INDEX spool_lane_budget ON spool (lane_key, received_at) WHERE lane_key IS NOT NULL;

-- Known addresses that live in the configuration, not in SQLite (the Validators): the
-- worker rewrites them at its start and on SIGHUP, for the appender to read.
CREATE TABLE lane_senders (
    address TEXT PRIMARY KEY,                      -- lower case
    kind    TEXT NOT NULL                          -- 'validator'
) WITHOUT ROWID;

-- The lookups of a known address: an IANA administrative contact, an SSC on the roster.
CREATE INDEX iana_contacts_admin ON iana_contacts (admin_email) WHERE status = 'ok';
CREATE INDEX roster_by_email ON roster (lower(email));
