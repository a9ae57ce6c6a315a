"""tldops-mta: the mail daemon of TLD-OPS, the ccTLD incident-response contact repository."""

__version__ = "0.1.0"
