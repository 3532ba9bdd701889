"""Data: sources produce a manifest; the data module turns it into loaders."""
