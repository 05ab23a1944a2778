"""The explain command: heat maps of why the served classifier decided as it did."""
