"""python-etcd without dnspython.

python-etcd imports dnspython at its top for one purpose: finding etcd's members through DNS SRV
records, which hasup does not offer (hasup/config/etcd.py refuses etcd.srv).  dnspython is some
70 modules and 2.7 MiB of heap that the supervisor would load before it forks, so every node would
carry them; while python-etcd is imported, a placeholder stands in for them.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

NAME = "dns.resolver"


@contextmanager
def without_dnspython() -> Iterator[None]:
    """Have `import dns.resolver` find a placeholder while the block runs; nothing stays behind.

    Only dnspython's small package module loads.  A real dns.resolver loaded already (Patroni's, in a
    test) is left alone, and one imported after the block is the real one again."""
    if NAME in sys.modules:
        yield
        return
    placeholder = types.ModuleType(NAME, "hasup.dcs.dnsless: SRV discovery is not offered")
    sys.modules[NAME] = placeholder
    try:
        yield
    finally:
        if sys.modules.get(NAME) is placeholder:
            del sys.modules[NAME]
