"""Records → snapshots: frozen snapshots, aggregates in one pass, bounded history. No Textual here."""
