"""What a comparison runs, as data: a problem, its dataset, both models' settings and the forecasts.

A protocol is a TOML file (the reference cases' are ``firedrake_msm/configs/<case>.toml``; copy
one to make your own) or a :class:`Protocol` built in Python. Its tables add to the defaults of
:func:`~firedrake_msm.dns.simulate` (``[dns]``), :class:`~firedrake_msm.model.ModelConfig`
(``[model]``, whose ``n_latent`` is the multiscale model's) and
:class:`~firedrake_msm.train.TrainConfig` (``[train]``); ``[forecast]`` sets the ensemble size
and the Smagorinsky constant, ``[baselines]`` which baselines run (``methods``, a list of
:data:`BASELINES`; default: every one that applies) and the data-driven ones' settings (``dmd``
and ``pod_sindy``, keywords of :func:`~firedrake_msm.reduced.fit_dmd` and
:func:`~firedrake_msm.reduced.fit_pod_sindy`), ``[reference]`` holds published errors to print
beside ours, and ``[fast]`` the seconds-long sizes that tests run.
"""
import inspect
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib.resources import files
from pathlib import Path

from firedrake_msm.model import ModelConfig
from firedrake_msm.reduced import fit_dmd, fit_pod_sindy
from firedrake_msm.train import TrainConfig

CONFIGS = files("firedrake_msm") / "configs"

#: The baselines a comparison can run (:func:`~firedrake_msm.compare.compare`): the coarse DNS;
#: the LES closures of :class:`~firedrake_msm.baselines.CoarseSolver` (Smagorinsky with the
#: protocol's constant and with one tuned on the validation trajectories, the dynamic Smagorinsky
#: model, WALE), each where it can act on the observed field; DMD and POD-SINDy
#: (:mod:`firedrake_msm.reduced`).
BASELINES = ("coarse_dns", "smagorinsky", "smagorinsky_tuned", "dynamic_smagorinsky", "wale", "dmd",
             "pod_sindy")


@dataclass
class Protocol:
    """A comparison's settings (see the module's docstring for the TOML form).

    Attributes
    ----------
    name : str
        Names the folders of its data, runs and results.
    problem : Problem, type or str
        Anything :func:`~firedrake_msm.problems.resolve` takes.
    problem_options : dict
    dataset : str or pathlib.Path, optional
        Data recorded elsewhere (a user's own loop); default: :func:`~firedrake_msm.dns.simulate`
        with :attr:`dns` into ``<data>/<name>.h5``.
    dns, model : dict
        Keywords of :func:`~firedrake_msm.dns.simulate` and
        :class:`~firedrake_msm.model.ModelConfig` (``n_latent``: the multiscale model's).
    train : TrainConfig
    samples : int
        Ensemble members of the learned models' forecasts.
    C_s : float
        The Smagorinsky baseline's constant.
    baselines : sequence of str, optional
        The baselines to run, of :data:`BASELINES` (default: every one that applies to the problem).
    dmd, pod_sindy : dict
        Keywords of :func:`~firedrake_msm.reduced.fit_dmd` and
        :func:`~firedrake_msm.reduced.fit_pod_sindy`.
    reference : dict
        Method name to a published relative L2 error, shown beside ours.
    test_sizes : dict
        ``{"dns": {...}}``: what the case needs at test sizes (:meth:`fast`; the TOML's
        ``[fast]``).
    """
    name: str
    problem: object
    problem_options: dict = field(default_factory=dict)
    dataset: object = None
    dns: dict = field(default_factory=dict)
    model: dict = field(default_factory=lambda: {"n_latent": 5})
    train: TrainConfig = field(default_factory=TrainConfig)
    samples: int = 64
    C_s: float = 0.17
    baselines: tuple = None
    dmd: dict = field(default_factory=dict)
    pod_sindy: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    test_sizes: dict = field(default_factory=dict)

    def __post_init__(self):
        known = {f.name for f in fields(ModelConfig)} - {"problem", "problem_options"}
        unknown = set(self.model) - known
        if unknown:
            raise ValueError(f"protocol {self.name!r}: unknown [model] settings {sorted(unknown)}; "
                             f"ModelConfig takes {sorted(known)}")
        if self.samples < 1:
            raise ValueError(f"protocol {self.name!r}: samples must be at least 1, not {self.samples}")
        if self.baselines is not None:
            self.baselines = tuple(self.baselines)
            unknown = set(self.baselines) - set(BASELINES)
            if unknown:
                raise ValueError(f"protocol {self.name!r}: unknown baselines {sorted(unknown)}; there are "
                                 f"{list(BASELINES)}")
        for name, fit in (("dmd", fit_dmd), ("pod_sindy", fit_pod_sindy)):
            known = {p.name for p in inspect.signature(fit).parameters.values() if p.kind == p.KEYWORD_ONLY}
            unknown = set(getattr(self, name)) - known
            if unknown:
                raise ValueError(f"protocol {self.name!r}: unknown {name} settings {sorted(unknown)}; "
                                 f"{fit.__name__} takes {sorted(known)}")

    @classmethod
    def load(cls, spec):
        """The protocol ``spec`` names: a ``.toml`` file, a reference case's name
        (``configs/<case>.toml``), or any other problem name (with default settings)."""
        path = Path(spec)
        if path.suffix == ".toml":
            if not path.is_file():
                raise FileNotFoundError(f"no protocol file at {path}")
            return cls.from_toml(path.read_text(), name=path.stem, source=str(path),
                                 base=path.resolve().parent)
        shipped = CONFIGS / f"{spec}.toml"
        if shipped.is_file():
            return cls.from_toml(shipped.read_text(), name=str(spec), source=str(shipped))
        # A problem without a protocol file: named for its class ("file.py:Heat" -> "heat").
        return cls(name=str(spec).rpartition(":")[2].rpartition("/")[2].removesuffix(".py").lower(),
                   problem=spec)

    @classmethod
    def from_toml(cls, text, *, name, source="<string>", base=None):
        """A protocol from TOML text; relative paths (``dataset``, a ``file.py:Class``
        problem) are taken from ``base``."""
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{source} is not valid TOML: {error}") from None
        allowed = {"problem", "problem_options", "dataset", "dns", "model", "train", "forecast", "baselines",
                   "reference", "fast"}
        unknown = set(table) - allowed
        if unknown or "problem" not in table:
            raise ValueError(f"{source}: a protocol names its problem and has only the keys {sorted(allowed)}"
                             + (f"; unknown: {sorted(unknown)}" if unknown else "; 'problem' is missing"))
        problem, dataset = table["problem"], table.get("dataset")
        if base is not None:
            where, colon, qualname = problem.rpartition(":")
            if colon and where.endswith(".py") and not Path(where).is_absolute():
                problem = f"{base / where}:{qualname}"
            if dataset is not None and not Path(dataset).is_absolute():
                dataset = base / dataset
        try:
            train = TrainConfig(**table.get("train", {}))
        except TypeError as error:
            raise ValueError(f"{source}: [train] {error}") from None
        forecast = table.get("forecast", {})
        unknown = set(forecast) - {"samples", "C_s"}
        if unknown:
            raise ValueError(f"{source}: [forecast] takes samples and C_s, not {sorted(unknown)}")
        baselines = table.get("baselines", {})
        unknown = set(baselines) - {"methods", "dmd", "pod_sindy"}
        if unknown:
            raise ValueError(f"{source}: [baselines] takes methods, dmd and pod_sindy, not {sorted(unknown)}")
        return cls(name=name, problem=problem, problem_options=table.get("problem_options", {}),
                   dataset=dataset, dns=table.get("dns", {}), model={"n_latent": 5, **table.get("model", {})},
                   train=train, baselines=baselines.get("methods"), dmd=baselines.get("dmd", {}),
                   pod_sindy=baselines.get("pod_sindy", {}),
                   reference=table.get("reference", {}), test_sizes=table.get("fast", {}), **forecast)

    def model_config(self, n_latent):
        """The :class:`~firedrake_msm.model.ModelConfig` of the model with ``n_latent`` channels."""
        return ModelConfig(self.problem, problem_options=self.problem_options,
                           **{**self.model, "n_latent": n_latent})

    def fast(self):
        """The same protocol at seconds-long sizes, for tests only: 4 short trajectories (or the
        case's ``[fast]`` data), 4 training steps of tiny batches, 2 auxiliary channels, 4 members."""
        dns = {"trajectories": 4, "t_end": 0.1, "dt": 0.01, **self.test_sizes.get("dns", {})}
        train = TrainConfig(steps=4, batch_size=2, window=8, beta_warmup=2, residual_times=4,
                            validate_every=2, checkpoint_every=4, validation_samples=2)
        return replace(self, dns=dns, model={**self.model, "n_latent": 2}, train=train, samples=4)
