-- Which worker instance holds a message in 'processing'. A worker that lost its claim (the
-- daemon restarted and requeued the message while the old worker was still finishing) must
-- not write its outcome or effects: only the claim holder's outcome counts.
ALTER TABLE spool ADD COLUMN claimed_by TEXT;
