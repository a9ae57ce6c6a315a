-- Postfix in front: when a trusted relay hands a message over with XFORWARD,
-- client_addr/client_port/helo are the real client's, as the relay saw them, and relay_addr
-- is the relay's own address (the TCP peer). NULL: the client spoke to us directly.
ALTER TABLE spool ADD COLUMN relay_addr TEXT;
