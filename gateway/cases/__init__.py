"""Cases: their states, release (the signed quality gate) and what a case holds."""
