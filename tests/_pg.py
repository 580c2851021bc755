"""A throwaway PostgreSQL cluster for tests: the lab's (``fenji.gateway.lab.pg``),
fsync off (import as ``from _pg import PgCluster``)."""

from __future__ import annotations

from fenji.gateway.lab.pg import SUPERUSER, PgCluster, cluster, pg_bindir

__all__ = ["SUPERUSER", "PgCluster", "cluster", "pg_bindir"]
