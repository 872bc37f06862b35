"""The C ABI the datapath shares with Python: struct mirrors, constants read from the
headers, drop reasons."""
