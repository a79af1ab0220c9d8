"""The method interface every PEFT method implements, and the registry that finds them.

A method is a class with a config dataclass (its structural and method-specific
hyperparameters, published defaults as field defaults) and five operations:
``apply``, ``count``, ``for_budget``, ``search_space`` and, where the method can be folded
into plain layers, ``merge``. Built-in methods register with :func:`register_method`;
third-party packages register a ``Method`` subclass under the entry-point group
``bench.methods``.

This package knows nothing about suites, tracking or the runner: it sees a timm model (a
``VisionTransformer`` or a ``SwinTransformer``) and its :class:`~methods.backbones.BackboneSpec`
and nothing else. ``Method.families`` says which backbone families a method supports; on any
other, :meth:`Method.check_backbone` refuses in one line before anything runs.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench.errors import BenchError

from .backbones import BackboneSpec, describe_backbone

ENTRY_POINT_GROUP = "bench.methods"

#: A config is within budget when |count - budget| <= BUDGET_TOLERANCE * budget.
BUDGET_TOLERANCE = 0.05


class MethodError(BenchError):
    """A user-caused problem with a method: unknown name, bad config value, unreachable budget.

    The message names the bad value and the fix; the CLI prints it without a traceback.
    """


def backbone_spec_of(model: nn.Module, name: str = "") -> BackboneSpec:
    """Describe a timm ``VisionTransformer`` or ``SwinTransformer`` (real or on the meta device)."""
    return describe_backbone(model, name)


# ----------------------------------------------------------------------------------------
# Parameter helpers shared by every method


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classification head's parameters (timm ViT: ``model.head``; Swin: ``model.head.fc``)."""
    head = getattr(model, "head", None)
    return list(head.parameters()) if isinstance(head, nn.Module) else []


def unique_parameters(params: Iterable[nn.Parameter]) -> Iterator[nn.Parameter]:
    """Parameters de-duplicated by identity, so a shared tensor is counted once."""
    seen: set[int] = set()
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            yield p


def trainable_params_excluding_head(model: nn.Module) -> int:
    """The count every budget refers to: trainable tensors, shared ones once, head excluded."""
    head_ids = {id(p) for p in head_parameters(model)}
    return sum(p.numel() for p in unique_parameters(model.parameters()) if p.requires_grad and id(p) not in head_ids)


def wrapped_layer(module: nn.Module) -> nn.Module:
    """The plain layer a wrapping layer computes on: through peft's tuner layers
    (``get_base_layer()``) and bench's own wrappers (their ``base``), to the innermost module."""
    while True:
        get_base_layer = getattr(module, "get_base_layer", None)
        inner = get_base_layer() if callable(get_base_layer) else getattr(module, "base", None)
        if not isinstance(inner, nn.Module) or inner is module:
            return module
        module = inner


def head_param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in head_parameters(model))


def freeze_all_but(model: nn.Module, keep: Iterable[nn.Parameter]) -> None:
    """Freeze every parameter, then unfreeze ``keep`` and the head (the head always trains)."""
    model.requires_grad_(False)
    for p in keep:
        p.requires_grad_(True)
    for p in head_parameters(model):
        p.requires_grad_(True)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor (head included) by name, detached: what a run needs to store."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------------------
# Configs


# Field metadata for a config option added after runs were recorded: at its default it reproduces
# the method as it was, so it is left out of the run's identity there (see identity_dict).
ADDED_OPTION = "bench_added_option"


def added_option(default: Any) -> Any:
    """A config field added to an existing method whose default keeps the method as it was."""
    return dataclasses.field(default=default, metadata={ADDED_OPTION: True})


def config_to_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):  # a composition's config: each part's by its label
        return config.to_dict()
    return dataclasses.asdict(config)


def identity_dict(config: Any) -> dict[str, Any]:
    """The config as it enters a run's identity: every field, except added options at their default,
    so that adding such an option does not change the run keys of finished runs."""
    if hasattr(config, "identity_dict"):  # a composition's config: each part's identity by its label
        return config.identity_dict()
    values = dataclasses.asdict(config)
    for f in dataclasses.fields(config):
        if f.metadata.get(ADDED_OPTION) and values[f.name] == f.default:
            del values[f.name]
    return values


def _coerce(value: str, annotation: Any, field_name: str) -> Any:
    """Turn a ``--set key=value`` string into the field's declared type."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and args:
        if value.lower() in ("none", "null", ""):
            return None
        return _coerce(value, args[0], field_name)
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise MethodError(f"{field_name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")
        return value
    try:
        if annotation is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation is int:
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return value
    except ValueError:
        raise MethodError(f"{field_name}={value!r} is not a valid {annotation.__name__}") from None
    raise MethodError(f"{field_name} has type {annotation!r}, which --set cannot parse")


def make_config(method: Method, overrides: dict[str, Any] | None = None) -> Any:
    """The method's default config with ``overrides`` (field name -> value or string) applied.

    A named variant's own values (``Method.config_defaults``) come first; ``overrides`` win over them.
    """
    if isinstance(method, Composite):
        return method.make_config(overrides)
    overrides = {**method.config_defaults, **(overrides or {})}
    cls = method.Config
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise MethodError(
            f"method {method.name!r} has no config field {', '.join(unknown)}; "
            f"its fields are: {', '.join(names) or '(none)'}"
        )
    values = {k: _coerce(v, hints[k], k) if isinstance(v, str) else v for k, v in overrides.items()}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise MethodError(f"{method.name} {key}={value} is not a finite number; give a finite value")
    config = cls(**values)
    method.validate(config)
    return config


def check_range(
    method: str, field: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    """Refuse ``value`` outside [low, high] (bounds open where asked), naming field, value and range.

    Values far outside a method's range do not fail: they overflow or saturate the update and
    the run quietly trains nothing (LoRA with alpha 1e30 scores like a linear probe).
    """
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise MethodError(f"{method} {field}={value:g} is out of range; set it within {interval}")


def parse_set_options(items: Iterable[str]) -> dict[str, str]:
    """``["rank=4", "alpha=8"]`` -> ``{"rank": "4", "alpha": "8"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MethodError(f"--set {item!r} is not key=value; write e.g. --set rank=4")
        out[key.strip()] = value.strip()
    return out


# ----------------------------------------------------------------------------------------
# The interface


@dataclass
class EmptyConfig:
    """Config of methods without structural hyperparameters (``linear``, ``full``)."""


#: Method groups: re-parameterisable (a weight update that folds into the backbone's linears),
#: additive (new modules kept at inference), prompt (learned tokens), selective (a subset of the
#: backbone's own parameters trains) and reference (linear probing and full fine-tuning).
CATEGORIES = ("reparameterisable", "additive", "prompt", "selective", "reference")


class Method(ABC):
    """Base class of every PEFT method. Subclasses set ``name`` and ``Config``.

    Class attributes describe what the conformance checks may expect:
    ``identity_at_init`` (the adapted model equals the backbone before any step) and
    ``mergeable`` (``merge`` folds the method into plain timm layers).
    """

    name: ClassVar[str]
    Config: ClassVar[type] = EmptyConfig
    description: ClassVar[str] = ""
    identity_at_init: ClassVar[bool] = True
    mergeable: ClassVar[bool] = False
    budget_adjustable: ClassVar[bool] = True  # False: a reference run at its fixed size (linear, full)
    #: Backbone families the method supports (``methods.backbones.FAMILIES``). A plugin that does not
    #: say otherwise supports ViTs only, the shapes its count was written for.
    families: ClassVar[tuple[str, ...]] = ("vit",)
    #: Why the method refuses the families it does not support, by family (shown in the refusal).
    unsupported_reasons: ClassVar[dict[str, str]] = {}
    #: False when the training step cannot be captured in a CUDA graph (e.g. a linear solve that
    #: synchronises with the host); the runner then compiles it without CUDA graphs.
    cuda_graphs: ClassVar[bool] = True
    #: How the method adapts, for grouping in ``bench methods list`` (one of ``CATEGORIES``).
    category: ClassVar[str] = "additive"
    #: The paper that introduced it, short form: "Hu et al., ICLR 2022 (arXiv 2106.09685)".
    paper: ClassVar[str] = ""
    #: Trainable parameters (head excluded) the paper reports on ViT-B/16 for VTAB-1K, as printed
    #: there ("0.29M"), or "" when it reports none.
    published_params: ClassVar[str] = ""
    #: Config values a named variant fixes (``karst[rescale=none]``): :func:`make_config` starts
    #: from them. Empty for a registered method.
    config_defaults: ClassVar[dict[str, Any]] = {}
    #: True when the method's layers wrap whatever module sits at their site and call it as a
    #: whole, another method's adapted layer included (SSF): in a composition it goes after the
    #: parts whose layers it should wrap.
    wraps_whole_layers: ClassVar[bool] = False

    def check_backbone(self, spec: BackboneSpec) -> None:
        """Refuse, in one line naming the backbone and the reason, a family the method does not support."""
        if spec.family in self.families:
            return
        reason = self.unsupported_reasons.get(spec.family, f"it supports {', '.join(self.families)} backbones only")
        raise MethodError(
            f"method {self.name!r} cannot run on {spec.name} (a {spec.family} backbone): {reason}; "
            f"choose a {' or '.join(self.families)} backbone or another method"
        )

    def validate(self, config: Any) -> None:  # noqa: B027  (optional hook)
        """Raise :class:`MethodError` for a config the method cannot build."""

    @abstractmethod
    def apply(self, model: nn.Module, config: Any) -> nn.Module:
        """Insert the method into ``model`` (built and loaded), freeze the rest, keep the head trainable."""

    @abstractmethod
    def count(self, spec: BackboneSpec, config: Any) -> int:
        """Trainable parameters the method adds (head excluded), in closed form."""

    def budget_count(self, spec: BackboneSpec, config: Any) -> int:
        """The parameters a budget charges the method: its free parameters. :meth:`count` (what the
        built model stores as trainable) unless some stored entries are not free (BOFT stores full
        b x b blocks of which only the skew-symmetric part is free)."""
        return self.count(spec, config)

    def for_budget(self, spec: BackboneSpec, budget: int) -> Any:
        """The config whose count is within ±5 % of ``budget``; a :class:`MethodError` otherwise."""
        config = make_config(self)
        n = self.count(spec, config)
        if within_budget(n, budget):
            return config
        raise MethodError(budget_error(self.name, budget, [n]))

    def size_limits(self, spec: BackboneSpec, config: Any) -> dict[str, tuple[int, str]]:
        """The largest value each structural size field of ``config`` may take on ``spec``, and why
        (LoRA: rank up to min(in, out) of the adapted layers). Past it a method adds parameters
        but no capacity, so a budget or a --set that needs more is refused."""
        return {}

    def largest_config(self, spec: BackboneSpec) -> Any:
        """The config with the most trainable parameters :meth:`for_budget` can reach on ``spec``:
        the published config with every size field at its limit. Override where the budget search
        also varies other fields."""
        config = make_config(self)
        limits = self.size_limits(spec, config)
        return dataclasses.replace(config, **{name: cap for name, (cap, _) in limits.items()})

    def search_space(self, trial: Any) -> dict[str, Any]:
        """The hyperparameters Optuna may tune: the shared optimiser ones plus the method's own."""
        return shared_search_space(trial)

    def published_hparams(self) -> dict[str, Any]:
        """The method's own published values of its ``search_space`` keys. The tuner enqueues them,
        on top of the suite preset's lr, weight decay and drop-path, as every study's first trial."""
        return {}

    def preset_caveat(self, preset_lr: float) -> str | None:
        """Why the suite's shared preset may not suit this method, or None. ``bench run`` prints it
        when the method trains with the suite preset (``--hparams preset``, not its paper recipe or tuned values)."""
        return None

    def extra_checks(self, config: Any) -> list[Any]:
        """Method-specific conformance checks (``methods.conformance.CheckResult`` values), e.g.
        what does hold for a method that is not the backbone at init."""
        return []

    def reference(self, model: nn.Module) -> nn.Module:
        """The function the adapted model equals at init (``identity_at_init``): the backbone itself,
        unless the method changes what the head reads (DTL pools patch tokens instead of CLS)."""
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the method into plain timm layers (only where ``mergeable``)."""
        raise MethodError(f"method {self.name!r} cannot be merged into the backbone")


class Composite(Method):
    """A method made of other methods (``methods.composition.Composition``): its config holds each
    part's config, and it makes its own."""

    parts: list[Method]

    @abstractmethod
    def make_config(self, overrides: dict[str, dict[str, Any]] | None = None) -> Any:
        """Each part's config, ``overrides`` (field values by part label) applied."""


def shared_search_space(trial: Any) -> dict[str, Any]:
    """Ranges every method tunes alike, so no method gets a wider search."""
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
        "drop_path": trial.suggest_float("drop_path", 0.0, 0.2),
    }


def within_budget(count: int, budget: int) -> bool:
    return abs(count - budget) <= BUDGET_TOLERANCE * budget


def fit_affine_size(method: str, count: Callable[[int], int], budget: int) -> int:
    """The size n >= 1 (a rank, a width, a prompt count) whose count is nearest ``budget``, for a
    count affine in n (fixed + n * per_unit), if within ±5 %; otherwise a :class:`MethodError`
    naming the counts of n and its neighbours."""
    fixed = count(0)
    per_unit = count(1) - fixed
    n = max(1, round((budget - fixed) / per_unit))
    if not within_budget(count(n), budget):
        raise MethodError(budget_error(method, budget, [count(k) for k in (n - 1, n, n + 1) if k > 0]))
    return n


def budget_error(method: str, budget: int, feasible: Iterable[int]) -> str:
    nearest = sorted(set(feasible), key=lambda n: abs(n - budget))[:3]
    shown = ", ".join(f"{n:,}" for n in sorted(nearest))
    return (
        f"method {method!r} has no configuration within ±5% of a budget of {budget:,} trainable parameters; "
        f"the nearest feasible counts are {shown}: choose a budget near one of them"
    )


# ----------------------------------------------------------------------------------------
# Registry

_REGISTRY: dict[str, type[Method]] = {}
_entry_points_loaded = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__qualname__} must set a class attribute `name`")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise TypeError(f"method name {name!r} is taken by {existing.__module__}.{existing.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not take the harness down
            raise MethodError(
                f"the plugin method {ep.name!r} ({ep.value}) failed to import: {exc}; "
                "fix or uninstall the package that provides it"
            ) from exc
        if not (isinstance(obj, type) and issubclass(obj, Method)):
            raise MethodError(f"entry point {ep.name!r} ({ep.value}) is not a bench Method subclass")
        if obj.name != ep.name:
            raise MethodError(f"entry point {ep.name!r} points at a method named {obj.name!r}; make them equal")
        register_method(obj)


def available_methods() -> dict[str, type[Method]]:
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> Method:
    methods = available_methods()
    if name not in methods:
        raise MethodError(
            f"unknown method {name!r}; available methods: {', '.join(methods)} (see `bench methods list`)"
        )
    return methods[name]()
