"""Taking over a data directory that a restore (a replica method, a custom bootstrap) filled.

What came from the backup is another server's: its recovery settings in postgresql.auto.conf (a
backup tool may write restore_command there) and, from a plain PostgreSQL, a postgresql.conf that
hasup's own would replace.  This makes the directory one hasup can configure.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

from hasup.config import Config
from hasup.config.methods import MANAGED_RECOVERY, OBSOLETE_RECOVERY, RECOVERY_PARAMETERS
from hasup.postgresql.conf import write_private

log = logging.getLogger(__name__)

_SETTING = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?")
RECOVERY_NAMES = RECOVERY_PARAMETERS | MANAGED_RECOVERY | OBSOLETE_RECOVERY
SIGNAL_FILES = ("standby.signal", "recovery.signal")


def adopt_restored(cfg: Config, keep_recovery: bool = False) -> None:
    """Make a restored data directory hasup's (keep_recovery: leave the backup tool's recovery
    settings and signal files alone, as keep_existing_recovery_conf asks)."""
    pg = cfg.postgresql
    os.chmod(pg.data_dir, 0o700)
    if not pg.custom_conf:
        # Like after initdb: the server's own postgresql.conf becomes the base hasup's includes. A
        # data directory that was hasup's (or Patroni's) already has its base file and keeps it.
        conf = os.path.join(pg.data_dir, "postgresql.conf")
        base = os.path.join(pg.data_dir, "postgresql.base.conf")
        if os.path.exists(conf) and not os.path.exists(base):
            os.replace(conf, base)
    if not keep_recovery:
        strip_recovery_settings(os.path.join(pg.data_dir, "postgresql.auto.conf"))


def strip_recovery_settings(path: str) -> list[str]:
    """Drop recovery parameters from an ALTER SYSTEM file: there they would override the ones hasup
    writes (a replica could stop at a recovery target of the backup's).  Returns the names dropped."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return []
    kept, dropped = [], []
    for line in lines:
        match = _SETTING.match(line)
        if match and not line.lstrip().startswith("#") and match.group(1).lower() in RECOVERY_NAMES:
            dropped.append(match.group(1))
        else:
            kept.append(line)
    if dropped:
        log.info("removed recovery settings from %s: %s", path, ", ".join(dropped))
        write_private(path, "".join(kept))
    return dropped


def remove_signal_files(data_dir: str) -> None:
    for name in SIGNAL_FILES:
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            os.unlink(path)


def remove_contents(path: str) -> None:
    if not os.path.isdir(path):
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
