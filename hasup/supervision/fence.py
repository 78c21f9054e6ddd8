"""The supervisor's fence of a hung PostgreSQL (docs/design.md §3): proc.kill_and_confirm, told what only it knows.

The supervisor calls this from its one loop when election asks for a
fence, and when a worker's crash loop must end with PostgreSQL confirmed
stopped.  Election deletes the leader key only when the result is
confirmed; proc.kill_and_confirm says why that word is never said lightly.
"""

from __future__ import annotations

from dataclasses import replace

from hasup.proc import KillResult, find_postmaster, kill_and_confirm

# The supervisor's seam (hasup.supervision.system) takes both from here, with fence_postgres.
__all__ = ["FenceResult", "fence_postgres", "find_postmaster"]

FenceResult = KillResult  # the primitive's answer, its reason saying "fence"


def fence_postgres(postmaster_pid: int | None, data_dir: str, supervisor_pid: int, worker_pids: set[int],
                   timeout: float = 1.0) -> FenceResult:
    """SIGKILL the postmaster of data_dir and every process of it, and confirm through /proc they are gone.

    What the supervisor adds to the primitive: its workers are never
    fenced (the postgres worker may well look like a server to /proc), and
    it is the child subreaper, so a server process re-parented to it is an
    orphaned backend of ours that could still commit.
    """
    result = kill_and_confirm(data_dir, postmaster=postmaster_pid, subreaper=supervisor_pid,
                              spare={supervisor_pid, *worker_pids}, timeout=timeout)
    return replace(result, reason=f"fence {result.reason}")
