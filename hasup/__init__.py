"""hasup: a PostgreSQL high-availability supervisor compatible with Patroni."""

__version__ = "0.1.0"

# The Patroni contract version hasup implements; member keys advertise it so
# Patroni's own tools (patronictl) parse hasup members as current Patroni.
PATRONI_COMPAT_VERSION = "4.1.4"
