"""Finding a problem by what names it: an object, a short name, an import path or a file.

A problem is named wherever it must be rebuilt in another process (datasets, checkpoints, the
command line), so the name must be enough to find it without editing the package:

- a :class:`~firedrake_msm.problems.Problem` instance or subclass;
- a short name of the entry-point group ``firedrake_msm.problems`` (the reference problems
  ``pulse``, ``kdv``, ``burgers2d``, ``cylinder`` and ``shallow_water`` are registered there by
  this package; a third-party package registers its own in its ``pyproject.toml``)::

      [project.entry-points."firedrake_msm.problems"]
      heat = "my_package.problems:Heat"

- an import path ``package.module:ClassName``;
- a file ``path/to/file.py:ClassName`` (the user's own script).

With the keyword arguments it was constructed with (:attr:`Problem.options`), :func:`reference`
gives back a name that :func:`resolve` turns into an equal problem in a fresh process.
"""
import importlib
import importlib.util
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

GROUP = "firedrake_msm.problems"


class ProblemNotFound(LookupError):
    """A problem name that leads to no problem class."""


def resolve(spec, options=None):
    """The problem that ``spec`` names, constructed with ``options``.

    Parameters
    ----------
    spec : Problem, type or str
        A problem instance (returned as it is; ``options`` must then be empty), a subclass of
        :class:`~firedrake_msm.problems.Problem`, a short name of the entry-point group
        ``firedrake_msm.problems``, ``"package.module:ClassName"`` or ``"file.py:ClassName"``.
    options : dict, optional
        Keyword arguments of the class's constructor.

    Raises
    ------
    ProblemNotFound
        When nothing of that name exists or it cannot be imported (the cause is chained).
    TypeError
        When ``spec`` names something that is not a problem class, or ``options`` do not fit
        its constructor.
    """
    from firedrake_msm.problems.base import Problem, constructor_signature
    options = dict(options or {})
    if isinstance(spec, Problem):
        if options:
            raise TypeError(f"options {options} given with a problem instance, {spec!r}: construct it "
                            "with them instead")
        return spec
    cls = spec if isinstance(spec, type) else find(spec)
    if not (isinstance(cls, type) and issubclass(cls, Problem)):
        raise TypeError(f"{spec!r} names {cls!r}, which is not a subclass of firedrake_msm.Problem")
    try:
        constructor_signature(cls).bind(**options)
    except TypeError as error:
        raise TypeError(f"options {options} do not fit {cls.__qualname__}: {error}") from None
    return cls(**options)


def find(name):
    """The class that a short name, import path or ``file.py:Class`` names (see :func:`resolve`)."""
    if not isinstance(name, str) or not name:
        raise ProblemNotFound(f"a problem is named by a non-empty string, not {name!r}")
    registered = {ep.name: ep for ep in entry_points(group=GROUP)}
    if ":" not in name:
        if name not in registered:
            known = ", ".join(sorted(registered)) or "none"
            raise ProblemNotFound(f"no problem named {name!r}: registered problems are {known}; or give an "
                                  "import path 'package.module:ClassName' or 'path/to/file.py:ClassName'")
        try:
            return registered[name].load()
        except Exception as error:
            raise ProblemNotFound(f"the registered problem {name!r} ({registered[name].value}) cannot be "
                                  f"imported: {error}") from error
    where, _, qualname = name.rpartition(":")
    if where.endswith(".py"):
        module = _import_file(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except Exception as error:
            raise ProblemNotFound(f"cannot import module {where!r} of problem {name!r}: {error}") from error
    target = module
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ProblemNotFound(f"{where} has no {qualname!r} (problem {name!r})") from None
    return target


def reference(problem):
    """``(name, options)``: what :func:`resolve` needs to rebuild ``problem`` in another process.

    The name is the short registered name where the class is registered, else
    ``module:ClassName``, or ``file.py:ClassName`` for a class defined in a script (``__main__``),
    in a module beside it (which a process started elsewhere would not find by name) or in a
    file that :func:`resolve` loaded. The options must be JSON-serialisable: they are
    stored as attributes of datasets and in checkpoints.
    """
    cls = type(problem)
    options = dict(problem.options)
    try:
        json.dumps(options)
    except TypeError as error:
        raise TypeError(f"{cls.__qualname__}'s constructor arguments {options} cannot be stored in a dataset "
                        f"or checkpoint (they must be numbers, strings, lists or dicts): {error}") from None
    for ep in entry_points(group=GROUP):
        if ep.value == f"{cls.__module__}:{cls.__qualname__}":
            return ep.name, options
    module = sys.modules.get(cls.__module__)
    if cls.__module__ == "__main__" or cls.__module__.startswith(_FILE_MODULE) or _local(module):
        path = getattr(module, "__file__", None)
        if path is None:
            raise TypeError(f"{cls.__qualname__} is defined in an interactive session: move it into a file "
                            "or module so that other processes can import it")
        return f"{Path(path).resolve()}:{cls.__qualname__}", options
    if "<locals>" in cls.__qualname__:
        raise TypeError(f"{cls.__qualname__} is defined inside a function: define it at the top level of "
                        "a module or file so that other processes can import it")
    return f"{cls.__module__}:{cls.__qualname__}", options


_FILE_MODULE = "firedrake_msm_problem_file_"


def _local(module):
    """Whether ``module`` is a top-level module from the script's folder or the working
    directory."""
    path = getattr(module, "__file__", None)
    if path is None or "." in module.__name__:
        return False
    folders = {Path.cwd().resolve(), Path(sys.path[0] or ".").resolve()}
    return Path(path).resolve().parent in folders


def _import_file(path):
    """A Python file as a module (loaded once per process, under a name of its own)."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ProblemNotFound(f"no problem file at {path}")
    name = _FILE_MODULE + str(abs(hash(str(path))))
    if name in sys.modules:
        return sys.modules[name]
    # A file imported already (the script run as the main program, a module beside it): reuse
    # it, so that instances made by the script and by resolve() are of the same class.
    for module in list(sys.modules.values()):
        where = getattr(module, "__file__", None)
        if where and where.endswith(path.name) and Path(where).resolve() == path:
            return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise ProblemNotFound(f"cannot import problem file {path}: {type(error).__name__}: "
                              f"{error}") from error
    return module
