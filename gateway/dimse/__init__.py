"""The DIMSE shells (pynetdicom): C-ECHO/C-STORE server, Q/R (C-FIND/MOVE/GET), connection guard."""
