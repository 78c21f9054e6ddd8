"""The supervisor's helpers: fencing a hung PostgreSQL, the crash policy, capabilities, systemd notify, logs."""
