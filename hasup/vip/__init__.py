"""The virtual IP: adding, removing and announcing the address (the vip worker is hasup.workers.vip)."""
