"""The audit trail: the hash-chained ledger, foreign events, verification, stats and fees."""
