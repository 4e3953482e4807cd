"""Files copied verbatim into `ldm export` folders (read as data, never imported by the system)."""
