"""fenji.routing: moving cases between nodes."""
