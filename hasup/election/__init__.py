"""The election worker's policy and its helpers: the pure HA decision (policy), and what the worker runs it with."""
