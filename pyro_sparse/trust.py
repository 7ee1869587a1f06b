"""Files are data: the one place where pyro-sparse turns a name written in a file into code (docs/design.md,
contract 12).

A compact network (``compact.json``) and a run directory (``config.json``) record how their network was built: the
name of an architecture of :mod:`pyro_sparse.models.nets` with its options (plain data, validated by type and
range), or ``package.module:factory``, a user's own architecture. Reading such a file never imports or calls what it
names. A user's architecture is rebuilt only by

* a factory the caller passes (``load_compact(dir, factory=...)``; on the command line
  ``--arch package.module:factory``, which must equal the recorded name), or
* an explicit opt-in whose name says what it does: ``trust_code=True`` (``--trust-code``), which imports the recorded
  module and calls the recorded factory — do this only for files you trust, like Hugging Face's
  ``trust_remote_code``.

Otherwise :class:`~pyro_sparse.errors.UntrustedCodeError` says, in one line, which factory the file names and how to
pass it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from torch import nn

from pyro_sparse.models import nets

from .errors import InvalidInputError, RunDirError, UntrustedCodeError, one_line

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_FACTORY = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")


def is_factory_name(name: object) -> bool:
    """Whether ``name`` has the form ``package.module:factory`` (dotted identifiers, no dunder part)."""
    if not isinstance(name, str) or not _FACTORY.match(name):
        return False
    parts = re.split(r"[.:]", name)
    return not any(p.startswith("__") and p.endswith("__") for p in parts)


def _import_attr(name: str, what: str):
    """``package.module:attr`` imported (a dotted path inside the module allowed).

    :raises InvalidInputError: a malformed name, a module that cannot be imported, or no such attribute."""
    if not is_factory_name(name):
        raise InvalidInputError(f"{what} {name!r}: expected package.module:name (dotted Python identifiers, no "
                                "dunder names)")
    module_name, _, attr = name.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise InvalidInputError(f"{what} {name!r}: cannot import it ({one_line(e)}); expected package.module:name "
                                "importable from here") from None
    return obj


def import_method(name: str):
    """Import the :class:`pyro_sparse.Method` that ``package.module:Name`` names (an instance, or a subclass built
    with no arguments) and register it (:func:`pyro_sparse.register_method`). Call this only with a name the caller
    gave (a command-line ``--method``, ``trust_code=True``), never with one read from a file on its own.

    :raises InvalidInputError: a malformed or unimportable name, not a ``Method``, or another method registered under
        the same name.
    """
    from .sparsify import Method

    obj = _import_attr(name, "method")
    if isinstance(obj, type) and issubclass(obj, Method):
        obj = obj()
    if not isinstance(obj, Method):
        raise InvalidInputError(f"method {name!r} is a {type(obj).__name__}, expected a pyro_sparse.Method")
    return use_method(obj)


def use_method(method):
    """Register the caller's ``method`` (a :class:`pyro_sparse.Method`) unless it is registered already; returns it.

    :raises InvalidInputError: not a ``Method``, invalid fields, or another method registered under its name."""
    from .sparsify import METHODS, Method, register_method

    if not isinstance(method, Method):
        raise InvalidInputError(f"method= must be a pyro_sparse.Method, got a {type(method).__name__}")
    if METHODS.get(method.name) is method:
        return method
    if method.name in METHODS:
        raise InvalidInputError(f"another method is registered as {method.name!r}; give yours another name")
    try:
        register_method(method)
    except ValueError as e:
        raise InvalidInputError(one_line(e)) from None
    return method


def recorded_method(source: object, file: str, method=None, trust_code: bool = False):
    """The :class:`pyro_sparse.Method` a run recorded as ``source`` (``package.module:Name``, read from ``file``):
    the caller's ``method``, or with ``trust_code`` the imported one; both are registered.

    :raises RunDirError: ``source`` is not of that form.
    :raises UntrustedCodeError: neither ``method`` nor ``trust_code``.
    """
    if not is_factory_name(source):
        raise RunDirError(f"{file} names the method source {source!r}; expected package.module:Name")
    if method is not None:
        return use_method(method)
    if trust_code:
        return import_method(source)
    raise UntrustedCodeError(
        f"{file} names the method {source!r}, code that pyro-sparse does not import from a file: pass "
        f"method=<that Method> (command line: --method {source}), or trust_code=True (--trust-code) if you trust "
        "the file")


def import_factory(name: str) -> Callable[[], nn.Module]:
    """Import ``package.module`` and return its attribute ``factory`` (a dotted path inside the module is allowed).

    Call this only with a name the caller gave (a command-line ``--arch``, ``trust_code=True``), never with one read
    from a file on its own.

    :raises InvalidInputError: a malformed name, a module that cannot be imported, no such attribute, or an attribute
        that is not callable.
    """
    if not is_factory_name(name):
        raise InvalidInputError(f"arch {name!r}: expected package.module:factory (dotted Python identifiers, no "
                                "dunder names)")
    try:
        obj = _import_attr(name, "arch")
    except InvalidInputError as e:
        raise InvalidInputError(f"{one_line(e)} (the factory)") from None
    attr = name.partition(":")[2]
    if not callable(obj):
        raise InvalidInputError(f"arch {name!r}: {attr} is a {type(obj).__name__}, expected a callable returning an "
                                "nn.Module")
    return obj


def recorded_network(spec: object, source: str, factory: Callable[[], nn.Module] | None = None,
                     trust_code: bool = False) -> Callable[[], nn.Module]:
    """A zero-argument builder of the unpruned network that ``spec`` (read from file ``source``) records.

    :param spec: ``{"name": ..., "kwargs": {...}}`` as :mod:`pyro_sparse.models.nets` records it on a network, or
        ``None`` (a network that recorded no name: the caller's ``factory`` is then required).
    :param factory: the caller's own builder (used as it is, for a user's architecture or a network without a name).
    :param trust_code: import and call the factory that ``spec`` names (only for files you trust).
    :raises RunDirError: ``spec`` is malformed, or names a built-in architecture with invalid options.
    :raises UntrustedCodeError: ``spec`` names a user's factory and neither ``factory`` nor ``trust_code`` was given.
    :raises InvalidInputError: ``factory`` is not callable.
    """
    if factory is not None and not callable(factory):
        raise InvalidInputError(f"factory must be a callable returning a fresh, unpruned nn.Module, got a "
                                f"{type(factory).__name__}")
    if spec is None:
        if factory is None:
            raise UntrustedCodeError(f"{source} records no architecture name (a network you built yourself): pass "
                                     "factory=... (a callable returning a fresh, unpruned instance)")
        return factory
    if not isinstance(spec, dict) or set(spec) != {"name", "kwargs"} or not isinstance(spec["name"], str) \
            or not isinstance(spec["kwargs"], dict):
        raise RunDirError(f"{source}: the recorded factory is malformed; expected an object with 'name' and "
                          "'kwargs'")
    name, kwargs = spec["name"], spec["kwargs"]
    if name in nets.NETS:
        try:
            nets.check_options(name, kwargs)
        except ValueError as e:
            raise RunDirError(f"{source}: {one_line(e)}") from None
        return lambda: nets.build(name, **kwargs)
    if not is_factory_name(name):
        raise RunDirError(f"{source} names the architecture {name!r}; expected one of {', '.join(nets.NETS)} or "
                          "package.module:factory")
    if kwargs:
        raise RunDirError(f"{source}: the user factory {name!r} is recorded with options {sorted(kwargs)}; a user's "
                          "factory takes none")
    if factory is not None:
        return factory
    if trust_code:
        return import_factory(name)
    raise UntrustedCodeError(
        f"{source} names the factory {name!r} of a user's own architecture, and pyro-sparse does not import code "
        f"named in a file: pass factory=<that callable> (command line: --arch {name}), or trust_code=True "
        "(--trust-code) if you trust the file")
