"""fenji.codecs: pure functions over bytes and arrays (no I/O, nothing of fenji)."""
