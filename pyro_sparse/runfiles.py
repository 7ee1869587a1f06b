"""The files of a run directory: one writer at a time, atomic writes, and readers that fail with one line.

A run directory (``RUN_DIR``) holds ``config.json`` (the recorded command and options), ``log.jsonl`` (one line per
finished epoch), ``checkpoint.pt`` (after every epoch), and once finished ``metrics.json`` + the compact network.
Every file is written to ``NAME.tmp`` and renamed into place (``os.replace``), and the log line of an epoch is written
before its checkpoint, so a process killed at any instant leaves a directory that ``--resume`` continues to the same
final state as an uninterrupted run: log lines past the checkpoint and a torn last line are dropped, leftover
``*.tmp`` files removed (:func:`recover`).

One writer: :class:`RunLock` holds an exclusive ``flock`` on ``RUN_DIR/.lock`` (which records the writer's PID) while
a process writes the directory; a second writer gets :class:`~pyro_sparse.errors.RunLockedError`. The operating
system releases the lock of a killed process; the next writer finds its PID in the file and reports it as stale.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
from pathlib import Path

import torch

from .errors import CheckpointError, RunDirError, RunLockedError, one_line

CONFIG, LOG, CHECKPOINT, METRICS, LOCK = "config.json", "log.jsonl", "checkpoint.pt", "metrics.json", ".lock"
#: version of the ``config.json`` layout; a file of another version is refused with one line
CONFIG_FORMAT = 2
_CHECKPOINT_KEYS = {"epoch", "model", "guide", "optimizer"}


# ---- writers ----------------------------------------------------------------------------------------------------

def _commit(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``path.tmp`` + ``os.replace`` (readers never see a partial file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    _commit(tmp, path)


def atomic_write_json(obj, path: Path) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def atomic_torch_save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line; a process killed mid-write leaves a torn last line, which :func:`recover` drops."""
    _append(path, json.dumps(record) + "\n")


def is_fresh(run_dir: Path) -> bool:
    """``run_dir`` holds no run: it is missing, empty, or holds only a lock and ``*.tmp`` leftovers of a process
    killed before it wrote ``config.json``."""
    return not run_dir.is_dir() or all(f.name == LOCK or f.name.endswith(".tmp") for f in run_dir.iterdir())


# ---- readers ----------------------------------------------------------------------------------------------------

def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``. :raises RunDirError: missing, unreadable, not JSON, or not an object."""
    if not path.is_file():
        raise RunDirError(f"{path.parent} holds no {what} ({path.name} missing)")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} is not a readable JSON {what} ({one_line(e)})") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path} is not a {what}: expected a JSON object, got a {type(obj).__name__}")
    return obj


def read_config(run_dir: str | os.PathLike) -> dict:
    """``RUN_DIR/config.json`` as written by this version of pyro-sparse.

    :raises RunDirError: missing, corrupted, truncated, or written by another version (``format`` key).
    """
    path = Path(run_dir) / CONFIG
    cfg = read_json(path, "run configuration")
    if cfg.get("format") != CONFIG_FORMAT:
        raise RunDirError(f"{path} has format {cfg.get('format')!r}, this pyro-sparse reads format {CONFIG_FORMAT}; "
                          "it was written by another version (rerun that run, or use that version)")
    for key, kind in (("method", str), ("arch", str), ("dataset", str), ("args", dict), ("config", dict)):
        if not isinstance(cfg.get(key), kind):
            raise RunDirError(f"{path} lacks a valid {key!r} entry (expected a {kind.__name__}); the file is damaged")
    for key in ("method", "arch", "dataset"):
        if key in cfg["args"] and cfg["args"][key] != cfg[key] and not (
                key == "method" and cfg["args"][key] == cfg.get("method_source")):
            raise RunDirError(f"{path}: {key!r} is {cfg[key]!r} but the recorded options say {cfg['args'][key]!r}; "
                              "the file is damaged or was edited")
    shape = cfg.get("input_shape", [])
    checks = (("input_shape", isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                                              and d > 0 for d in shape), "a list of positive ints"),
              ("data_root", cfg.get("data_root") is None or isinstance(cfg["data_root"], str), "a path or null"),
              ("net_kwargs", isinstance(cfg.get("net_kwargs", {}), dict), "an object"),
              ("arch_options", isinstance(cfg.get("arch_options", {}), dict), "an object"))
    for key, ok, expected in checks:
        if not ok:
            raise RunDirError(f"{path}: entry {key!r} is not {expected}; the file is damaged")
    return cfg


def read_log(run_dir: str | os.PathLike, torn_ok: bool = True) -> list[dict]:
    """The records of ``RUN_DIR/log.jsonl`` (``[]`` if there is none).

    :param torn_ok: a last line without its newline (a process killed while appending) is dropped.
    :raises RunDirError: a line that is not a JSON object with an integer ``epoch``, other than a torn last line.
    """
    path = Path(run_dir) / LOG
    if not path.is_file():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is unreadable ({one_line(e)})") from None
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    records = []
    for i, line in enumerate(lines + ([] if torn_ok else [torn] if torn else []), 1):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int):
                raise ValueError("not an epoch record")
        except ValueError as e:
            raise RunDirError(f"{path} line {i} is corrupted ({one_line(e)}); expected one JSON epoch record per "
                              "line") from None
        records.append(rec)
    return records


def config_digest(run_dir: str | os.PathLike) -> str | None:
    """SHA-256 (hex) of ``RUN_DIR/config.json``, or ``None`` where there is none: checkpoints and compact networks
    written into a run directory record it, so that a file of another run is recognised."""
    path = Path(run_dir) / CONFIG
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def load_checkpoint(run_dir: str | os.PathLike) -> dict:
    """Read ``RUN_DIR/checkpoint.pt`` safely (``weights_only=True``: no arbitrary unpickling).

    A checkpoint written by this version records the SHA-256 of the run's ``config.json``; where both are there
    they must agree (a checkpoint copied from another run is refused).

    :raises CheckpointError: missing, unreadable, corrupted, without the keys of a pyro-sparse checkpoint, or of
        another run than ``config.json``.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (expected the checkpoint.pt of a pyro-sparse run)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged or foreign files
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupted ({one_line(e)})") from None
    if not isinstance(ckpt, dict) or not _CHECKPOINT_KEYS <= set(ckpt) or not isinstance(ckpt["epoch"], int):
        raise CheckpointError(f"checkpoint {path} is not a pyro-sparse checkpoint (expected the keys "
                              f"{', '.join(sorted(_CHECKPOINT_KEYS))})")
    recorded, digest = ckpt.get("config_sha256"), config_digest(run_dir)
    if recorded is not None and digest is not None and recorded != digest:
        raise CheckpointError(f"checkpoint {path} belongs to another run: it was written under another "
                              f"{CONFIG} (SHA-256 differs); expected the checkpoint of this run")
    return ckpt


# ---- crash recovery ---------------------------------------------------------------------------------------------

def recover(run_dir: Path, last_epoch: int) -> list[dict]:
    """Bring ``run_dir`` back to its checkpoint at 0-based epoch ``last_epoch`` (−1: none): remove ``*.tmp``
    leftovers, keep the log lines of epochs ``<= last_epoch + 1`` (1-based) and drop a torn last line.

    :returns: the kept log records. :raises RunDirError: a corrupted log line.
    """
    for tmp in run_dir.glob("*.tmp"):
        tmp.unlink()
    keep = [r for r in read_log(run_dir) if r["epoch"] <= last_epoch + 1]
    path = run_dir / LOG
    if path.is_file():
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())
    return keep


# ---- one writer -------------------------------------------------------------------------------------------------

_HELD: dict[str, list] = {}  # resolved run dir -> [file object, depth]: re-entrant within one process


class RunLock:
    """Exclusive writer lock of a run directory (creates the directory if needed).

    ``with RunLock(run_dir) as lock:`` — ``lock.stale_pid`` is the PID of a dead writer whose lock was found and
    taken over (``None`` if there was none). Re-entrant within one process.

    :raises RunDirError: ``run_dir`` is a regular file, or cannot be created.
    :raises RunLockedError: another process holds the lock (its PID is named).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.stale_pid: int | None = None

    def __enter__(self) -> RunLock:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"{self.run_dir} is a file; expected a run directory (a new or existing folder)")
        key = str(self.run_dir.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            f = open(self.run_dir / LOCK, "a+")
        except OSError as e:
            raise RunDirError(f"cannot create the run directory {self.run_dir} ({one_line(e)})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise RunLockedError(f"{self.run_dir} is being written by process {pid}; wait for it to finish or "
                                 "choose another --out (one writer per run directory)") from None
        f.seek(0)
        previous = f.read().strip()
        if previous.isdigit() and int(previous) != os.getpid():
            self.stale_pid = int(previous)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        _HELD[key] = [f, 1]
        return self

    def __exit__(self, *exc) -> None:
        key = str(self.run_dir.resolve())
        held = _HELD[key]
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            (self.run_dir / LOCK).unlink(missing_ok=True)
            held[0].close()  # closing releases the flock
