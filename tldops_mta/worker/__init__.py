"""The worker process: its loops, the dispatch of each message to its desk, when work is due."""
