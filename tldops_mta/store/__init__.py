"""SQLite: the database and its migrations, the spool, tokens, backups, retries, state on disk."""
