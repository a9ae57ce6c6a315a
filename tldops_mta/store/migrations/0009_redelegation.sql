-- The redelegation watch: per ccTLD on the roster, the IANA administrative contact
-- its roster was last confirmed by, when IANA was last asked, and whether a change of that
-- contact waits for the new one to confirm the SSCs. Nothing is removed automatically.
CREATE TABLE cctlds (
    tld                   TEXT    PRIMARY KEY,
    admin_email           TEXT,                   -- as IANA listed it when the roster was confirmed
    checked_at            REAL    NOT NULL DEFAULT 0,
    needs_reconfirmation  INTEGER NOT NULL DEFAULT 0
);
INSERT INTO cctlds (tld, admin_email)
    SELECT t.tld, (SELECT admin_email FROM requests r WHERE r.tld = t.tld AND r.state = 'approved'
                   ORDER BY r.id DESC LIMIT 1)
    FROM (SELECT DISTINCT tld FROM roster) t;

CREATE TABLE redelegations (
    id           INTEGER PRIMARY KEY,
    tld          TEXT    NOT NULL,
    detected_at  REAL    NOT NULL,
    old_admin    TEXT,
    new_admin    TEXT,                           -- NULL: IANA lists no usable contact now
    resolved_at  REAL                            -- when the new contact confirmed the SSCs
);
