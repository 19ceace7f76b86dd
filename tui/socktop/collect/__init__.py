"""Kernel → records: read the socket table and who owns each socket. No Textual here."""
