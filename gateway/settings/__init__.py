"""How a config file becomes a checked Config: the checks beyond types (checks)."""
