"""Nothing lost: atomic writes and checksummed archives."""
