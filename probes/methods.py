"""The attribution-method interface (Method, AttributionContext) and the registry building methods by name."""

from __future__ import annotations

import abc
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from probes.data.corpus import Corpus
from probes.data.queries import Query
from probes.features.backend import DEFAULT, PassOptions
from probes.features.store import FeatureStore
from probes.lm.load import ModelPair


@dataclass
class AttributionContext:
    """Everything a method may use: the training corpus, ALL queries (methods index them by query id), the
    model pair and its shared FeatureStore, and the validation split's relevance. Never test relevance."""

    corpus: Corpus
    queries: list[Query]
    candidate_ids: Int[Tensor, "c"] | None
    pair: ModelPair | None
    features: FeatureStore | None
    val_ids: Int[Tensor, "q_val"]
    val_relevant: Bool[Tensor, "q_val n"]
    # per-run memo of expensive intermediate results shared between method instances, e.g. grad_sim's
    # per-module projected gradients
    memo: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Where methods compute: f_new's device (the CPU without a model pair)."""
        return torch.device("cpu") if self.pair is None else next(self.pair.new.parameters()).device

    @property
    def pass_options(self) -> PassOptions:
        """How the methods' own passes run (losses, gradients, patching): the FeatureStore's options."""
        return DEFAULT if self.features is None else self.features.options

    def require(self, field: str, method: str):
        """``getattr(self, field)``, or an error saying that ``method`` needs it."""
        value = getattr(self, field)
        if value is None:
            raise ValueError(
                f"method {method!r} needs AttributionContext.{field}, which is None; build the context "
                f"with a model pair and a FeatureStore (see compare.py)"
            )
        return value


class Method(abc.ABC):
    """An attribution method: ``prepare`` once over the training corpus, then ``score`` batches of queries.

    Subclasses call ``super().__init__(**settings)`` with their validated settings, which ``hparams`` reports.
    """

    name: str = ""
    # True when score() splits the queries itself, into batches that each cost a pass over the documents
    # (ekfac): compare.py and tune give it all their queries in one call (`query_batches`)
    batches_queries: bool = False

    def __init__(self, **settings: object) -> None:
        self.settings = settings

    @abc.abstractmethod
    def prepare(self, ctx: AttributionContext) -> None:
        """Compute everything that does not depend on the scored queries (plus any val-only fitting)."""

    @abc.abstractmethod
    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        """Scores of the queries with these ids against every training document; higher = more influential."""

    def hparams(self) -> dict[str, float | int | str | bool]:
        """The method's settings as flat scalars (lists and None as strings), for tables and TensorBoard."""
        out: dict[str, float | int | str | bool] = {"method": self.name}
        for key, value in self.settings.items():
            out[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
        return out


METHODS: dict[str, type[Method]] = {}
# Built-in methods, imported on first use so a method's heavy dependencies load only when it is asked for.
BUILTIN: dict[str, str] = {
    "random": "baselines.random",
    "bm25": "baselines.bm25",
    "edit_distance": "baselines.edit_distance",
    "repsim": "baselines.repsim",
    "delta_h": "baselines.delta_h",
    "act_grad": "baselines.act_grad",
    "attr_weighted": "baselines.attr_weighted",
    "patching": "baselines.patching",
    "grad_sim": "baselines.grad_sim",
    "ekfac": "baselines.ekfac",
    "trackstar": "baselines.trackstar",
    "magic": "baselines.magic",
    "dlp": "probes.models.method",
}


# Methods whose library is an optional extra: the module that must import, and how to install it.
INFLUENCE = "pip install -e '.[influence]' && pip install --no-deps kronfluence==1.0.1 bergson==2.5.1"
OPTIONAL: dict[str, tuple[str, str]] = {
    "ekfac": ("kronfluence", INFLUENCE),
    "trackstar": ("bergson", INFLUENCE),
}


def query_batches(method: Method, query_ids: Int[Tensor, " q"], batch_size: int) -> tuple[Tensor, ...]:
    """The ``score`` calls' query ids: ``batch_size`` at a time, or all at once for a method that batches
    its queries itself (each of its own batches costs a pass over the documents, so smaller calls would only
    add passes)."""
    return (query_ids,) if method.batches_queries else query_ids.split(batch_size)


def missing_extra(name: str) -> str | None:
    """How to install the library that method ``name`` needs, when it is not importable; else None."""
    if name not in OPTIONAL or importlib.util.find_spec(OPTIONAL[name][0]) is not None:
        return None
    return OPTIONAL[name][1]


def unavailable(rows: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Row label -> how to install its library, for each (label, method name) whose library is missing."""
    return {label: hint for label, name in rows if (hint := missing_extra(name))}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a Method buildable as ``build_method(name, ...)``."""

    def add(cls: type[Method]) -> type[Method]:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {METHODS[name].__qualname__}")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def method_names() -> list[str]:
    """Every name ``build_method`` accepts."""
    return sorted(set(METHODS) | set(BUILTIN))


def method_class(name: str) -> type[Method]:
    """The class registered under ``name``, importing a built-in method's module on first use."""
    if name not in METHODS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
    return METHODS[name]


def accepted_options(cls: type[Method]) -> list[str]:
    """The options ``cls`` accepts: its own and, where ``__init__`` forwards ``**kwargs``, its bases'."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is Method or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [
            p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def build_method(name: str, **options: object) -> Method:
    """An instance of the method ``name`` with ``options``; raises naming an unknown name or option."""
    cls = method_class(name)
    accepted = accepted_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"method {name!r} has no option(s) {unknown}; its options are: {', '.join(accepted)}"
        )
    return cls(**options)


def check_choice(method: str, option: str, value: object, choices: tuple) -> None:
    """Raise naming the method and option when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"method {method!r}: option {option}={value!r} is not one of {list(choices)}")
