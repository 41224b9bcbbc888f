"""The storage layer: the app's Azure Table Storage tables, one module per store (tables: the shared plumbing)."""
