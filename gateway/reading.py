"""The reading center: worklist, claims, reports and their way back (DESIGN.md §3 steps 8-9).

(Being written.)
"""

from __future__ import annotations

# Migration 7 of gateway/store.py.
MIGRATION_SQL = """
CREATE TABLE IF NOT EXISTS reading_placeholder (x INTEGER)
"""
