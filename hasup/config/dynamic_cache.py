"""A local copy of the dynamic configuration in the data directory, under Patroni's file name.

A node that starts while etcd's `config` key is missing (wiped, or a restored etcd) runs with the
settings the cluster last had rather than bootstrap.dcs, and as leader it writes them back.  The file
is another process's output as far as we are concerned: read with a size bound, and a file that
does not parse is ignored with one line, never trusted in part.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from hasup.config.dynamic import parse_dynamic

CACHE_FILE = "patroni.dynamic.json"
MAX_CACHE_BYTES = 128 * 1024  # etcd's config key is read with the same bound (hasup.dcs.parse)


def cache_path(data_dir: str) -> str:
    return os.path.join(data_dir, CACHE_FILE)


def read_cache(data_dir: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the cached configuration, None), or (None, why it was ignored); (None, None) when there is none."""
    path = cache_path(data_dir)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CACHE_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path}: cannot be read ({exc.strerror or type(exc).__name__}); ignored"
    if len(raw) > MAX_CACHE_BYTES:
        return None, f"{path}: larger than {MAX_CACHE_BYTES} bytes; ignored"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return None, f"{path}: not valid JSON ({type(exc).__name__}); ignored"
    if not isinstance(data, dict) or not data:
        return None, f"{path}: not a non-empty JSON object; ignored"
    try:
        parse_dynamic(data)
    except Exception as exc:  # parse_dynamic promises never to fail; a value it missed must not stop the start
        return None, f"{path}: unreadable ({type(exc).__name__}); ignored"
    return data, None


def write_cache(data_dir: str, config: Mapping[str, Any]) -> None:
    """Replace the cache atomically: a crash leaves the old file or the new one, never half of one.

    Raises OSError; the caller decides how loudly to say so.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_FILE}.", dir=data_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(dict(config), f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # it may hold parameters an operator considers private
        os.replace(tmp, cache_path(data_dir))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(data_dir, os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    except OSError:  # some file systems refuse to fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(dir_fd)
