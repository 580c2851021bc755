"""Query/retrieve model shared by C-FIND/C-MOVE/C-GET (gateway/scp.py) and QIDO-RS.

(Being written: the index columns below are migration 6 of the store.)
"""

from __future__ import annotations

# Migration 6 of gateway/store.py: columns and indexes the query levels need.
MIGRATION_SQL = """
CREATE TABLE IF NOT EXISTS qr_placeholder (x INTEGER)
"""
