"""Snapshots → meaning: knowledge of the TCP states, findings, sysctl advice, commands. No Textual here."""
