"""Running per-image work on a Dask cluster: connecting, and checking shared storage.

`dask_client(address, folder, images, files)` connects to a scheduler and, before any work is
sent, checks that every worker sees the cache `folder` the client sees: the client writes a
marker file there that each worker must read back, and each worker writes one that the
client must read. The workers write their results into that folder and the client reads
them, so a folder that is not on storage every worker sees (a local disk of each machine, a
relative path resolved elsewhere) is one clear error, not a run whose results vanish. The
first of `images` and each of `files` must be readable by every worker too, and the workers
must run this version of rcnn.

Paths sent to workers are absolute (`remote_path`): a worker's working directory is not the
client's. The workers import `rcnn`, so it must be installed where they run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from pathlib import Path

from rcnn import __version__
from rcnn.cache import write_text
from rcnn.errors import RcnnError

__all__ = ["DASK_TIMEOUT", "check_shared", "dask_client", "remote_path"]

DASK_TIMEOUT = 30  # seconds to reach a Dask scheduler
HINT = "put cache_dir on storage every worker sees"


def remote_path(path) -> str:
    """`path` made absolute on the client, as a worker must be sent it."""
    return os.path.abspath(os.fspath(path))


@contextlib.contextmanager
def dask_client(address: str, folder=None, images=(), files=(), timeout: float = DASK_TIMEOUT, hint: str = HINT):
    """A `distributed.Client` of the scheduler at `address`, with the shared-storage check
    done (see the module docstring) when `folder` is given (`hint`: what the error tells
    the user to do). Raises `RcnnError` when Dask is
    not installed, the scheduler cannot be reached or the check fails."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise RcnnError("--dask needs Dask: pip install 'rcnn[dask]'") from None
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError) as e:
        raise RcnnError(f"cannot reach the Dask scheduler at {address}: {e}") from None
    with client:
        if folder is not None:
            check_shared(client, folder, images, files, hint)
        yield client


def check_shared(client, folder, images=(), files=(), hint: str = HINT) -> None:
    """Every worker of `client` must read a file the client writes into `folder`, the client
    must read a file each worker writes there, and every worker must read the first of
    `images` and each of `files`; otherwise `RcnnError`."""
    folder = Path(remote_path(folder))
    token = uuid.uuid4().hex
    marker = folder / f".dask-check-{token}"
    write_text(marker, token)
    probes = [remote_path(p) for p in [*list(images)[:1], *files]]
    written: list[str] = []
    try:
        try:
            answers = client.run(_probe, str(marker), token, probes)
        except Exception as e:  # noqa: BLE001  whatever the workers raised: they cannot run our code
            raise RcnnError(
                f"the Dask workers cannot run rcnn {__version__}'s code ({type(e).__name__}: {e}): "
                "install this rcnn where the workers run"
            ) from None
        if not answers:
            raise RcnnError(
                f"the Dask scheduler at {client.scheduler.address} has no workers (start some: dask worker)"
            )
        for worker, answer in sorted(answers.items()):
            if answer["version"] != __version__:
                raise RcnnError(
                    f"Dask worker {worker} runs rcnn {answer['version']}, this client {__version__}: "
                    "install the same version on every worker"
                )
            if answer["marker"] is not None:
                raise RcnnError(
                    f"cache folder {folder} is not visible to the Dask workers (worker {worker} on "
                    f"{answer['host']}: {answer['marker']}): {hint}"
                )
            written.append(answer["written"])
            mine = Path(answer["written"])
            if not mine.is_file() or mine.read_text() != token:
                raise RcnnError(
                    f"cache folder {folder} is not visible to the Dask workers (a file worker {worker} on "
                    f"{answer['host']} wrote there is not seen here): {hint}"
                )
            for path, problem in answer["files"].items():
                if problem is not None:
                    raise RcnnError(
                        f"{path} is not visible to the Dask workers (worker {worker} on {answer['host']}: "
                        f"{problem}): put it on storage every worker sees"
                    )
    finally:
        marker.unlink(missing_ok=True)
        with contextlib.suppress(Exception):  # the workers' own files, wherever they landed
            client.run(_remove, str(marker))


def _probe(marker: str, token: str, paths: list[str]) -> dict:
    """Runs on each worker: whether it reads `marker` (None: yes, else why not) and each of
    `paths`; writes its own marker (``written``) for the client to read."""
    try:
        seen = Path(marker).read_text()
        problem = None if seen == token else "the marker file there holds other contents"
    except OSError as e:
        problem = f"cannot read {marker}: {e.strerror or e}"
    mine = f"{marker}-{uuid.uuid4().hex[:8]}"
    with contextlib.suppress(OSError):
        write_text(mine, token)
    files = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                f.read(1)
            files[path] = None
        except OSError as e:
            files[path] = f"cannot read it: {e.strerror or e}"
    return {"version": __version__, "host": socket.gethostname(), "marker": problem, "written": mine, "files": files}


def _remove(marker: str) -> None:
    """Runs on each worker: remove the check's files it can see."""
    for path in Path(marker).parent.glob(Path(marker).name + "*"):
        path.unlink(missing_ok=True)
