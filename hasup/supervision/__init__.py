"""What the supervisor's loop uses: the OS seam (system), restart policy (crash_policy), heartbeat escalation
(heartbeat), the shutdown order (shutdown), routing and replay (routing), fencing, capabilities, sd_notify, logs."""
