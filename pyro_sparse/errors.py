"""The error contract of pyro-sparse: every user-facing failure is a :class:`PyroSparseError` with a one-line message
naming what is wrong and what was expected (docs/design.md, contract 8).

The public API raises these (most also subclass the built-in exception a Python user would catch: ``ValueError``,
``FileNotFoundError``, ``RuntimeError``); the CLI turns every one of them, and ``ValueError`` / ``OSError`` from the
standard library, into one line on stderr and exit status 2, in one place (:func:`pyro_sparse.cli.main`).
``--debug`` or ``PYRO_SPARSE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations


class PyroSparseError(Exception):
    """Base class: a failure caused by the input (options, files, data), not by a bug. ``str(e)`` is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class InvalidInputError(PyroSparseError, ValueError):
    """An option or argument out of range, non-finite, inconsistent with another one, or of the wrong kind."""


class RunDirError(PyroSparseError, ValueError):
    """A run directory is missing, holds another run, is finished, or one of its files is corrupted or foreign."""


class MissingRunFileError(RunDirError, FileNotFoundError):
    """A file that the run directory should hold is not there (e.g. no compact network: the run is not finished)."""


class RunLockedError(RunDirError):
    """Another process is writing the run directory (one writer per run directory)."""


class UntrustedCodeError(PyroSparseError, ValueError):
    """A file (``compact.json``, ``config.json``) names code to run — a user's ``package.module:factory`` — and the
    caller neither passed that code nor opted in with ``trust_code=True`` / ``--trust-code``
    (:mod:`pyro_sparse.trust`). Nothing was imported."""


class CheckpointError(PyroSparseError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


class DataNotFoundError(PyroSparseError, FileNotFoundError):
    """The dataset is not in the given root folder (and was not to be downloaded)."""


class DataFormatError(PyroSparseError, ValueError):
    """A data file exists but is not in the expected format (bad magic number, truncated, wrong shape)."""


class DivergenceError(PyroSparseError, FloatingPointError):
    """Training produced a non-finite loss or parameter; the run directory keeps its last good checkpoint."""


class UnsupportedModelError(PyroSparseError, ValueError):
    """A network construct that :func:`pyro_sparse.sparsify` or :func:`pyro_sparse.compact` cannot handle exactly
    (a layer type it cannot prune, a graph the tracer cannot follow); the message names the module and the way
    out (``exclude=``)."""


class CompactMismatchError(PyroSparseError, RuntimeError):
    """:func:`pyro_sparse.compact` built a network that does not equal the model in ``.eval()`` mode on the probe
    batch; the message names the first layer that differs."""


class ExportError(PyroSparseError, RuntimeError):
    """:func:`pyro_sparse.export` could not write the network in the asked format (torch.export or the ONNX exporter
    refused it, the extra it needs is not installed), or the exported file does not compute what the network does."""


def one_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type name if it has none), whitespace collapsed."""
    text = str(e).strip().splitlines()
    first = " ".join(text[0].split()) if text else ""
    return first or type(e).__name__
