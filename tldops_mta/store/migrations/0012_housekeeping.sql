-- The nightly housekeeping: one row per day it ran, claimed in the transaction
-- that does the work, so a day is done once whatever restarts happen.
CREATE TABLE housekeeping_runs (
    day         TEXT    PRIMARY KEY,                 -- YYYY-MM-DD (UTC)
    at          REAL    NOT NULL,
    spool_raw   INTEGER NOT NULL,                    -- raw messages purged
    outbox_raw  INTEGER NOT NULL
);

-- A new database has nothing old to purge: its first run is tomorrow, not at its first start
-- (which would start the worker of an idle daemon at once).
INSERT INTO housekeeping_runs (day, at, spool_raw, outbox_raw)
    VALUES (date('now'), CAST(strftime('%s', 'now') AS REAL), 0, 0);
