"""The SMTP front: protocol guards, replies, and the spool appender that makes a 250 durable."""
