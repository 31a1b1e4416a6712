"""The orchestrator: accepts tasks, streams them to capable agents, and records their outcome."""
