"""The reading center's side.

Worklist, claims, viewer reports, report signing and the report's return to the edge.
"""
