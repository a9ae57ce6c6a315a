-- Automatic replies of every kind (refusals, the help template) are limited per sender and
-- kind: one table for the one rule (auto_reply.py). The refusal rows carry over.
CREATE TABLE auto_replies (
    kind        TEXT    NOT NULL,                  -- 'refusal', 'help'
    address     TEXT    NOT NULL,                  -- lower-cased envelope sender
    last_sent   REAL    NOT NULL,
    PRIMARY KEY (kind, address)
);
INSERT INTO auto_replies (kind, address, last_sent)
    SELECT 'refusal', address, last_sent FROM refusal_replies;
DROP TABLE refusal_replies;
