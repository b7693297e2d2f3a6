"""Interoperability with other libraries' model formats (key renamings; no third-party import needed)."""
