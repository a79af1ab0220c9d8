"""Named variants and compositions of registered methods, each usable as one method.

A **variant** (``karst[rescale=none]``) is its base method with some config values fixed: a
subclass of the base method's class whose ``name`` is the variant's label and whose
``config_defaults`` are the fixed values, so every operation (apply, count, the budget fit,
merge) is the base method's, starting from those values.

A **composition** (``karst+bitfit``) applies its parts in the order written to one backbone. It
counts the sum of its parts, starts at the backbone iff every part does, merges iff every part
merges (each part's merge, in order), and supports the backbone families every part supports.

Two parts collide when they touch the same module or train the same tensor: their counts would
not add up, and one would silently undo or bypass the other (KARST's layer reads the weight of
the linear it wraps, so a LoRA inside it would never act). :meth:`Composition.apply` detects this
on the model itself, by object identity, after each part: a later part may **wrap** a module an
earlier part placed as a whole (SSF's scale and shift around LoRA's layer: the LoRA layer stays,
unchanged, and SSF calls it), but may not replace or remove it, change anything inside it, or
nest a peft tuner layer around it (peft reads and merges through the layers it nests). A module
that only moved into a wrapper is not a change. Every refusal is one line naming both parts and
the module; building on the meta device (as every sweep does before it reads data) is enough.
:meth:`Composition.check_parts_act` then checks, on a tiny random backbone, that every part's
tensors act and that a mergeable composition's merge (each part's, in the order applied)
reproduces its outputs.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .backbones import BackboneSpec, describe_backbone
from .base import (
    BUDGET_TOLERANCE,
    Composite,
    Method,
    MethodError,
    config_to_dict,
    freeze_all_but,
    head_parameters,
    identity_dict,
    make_config,
    within_budget,
)


@dataclass(frozen=True)
class _Placed:
    """A module a part put into the model, and what was inside it then (by object identity)."""

    part: str
    path: str  # where the part put it; a later part's wrapper may move it
    module: nn.Module
    contents: frozenset[int]


def _contents(module: nn.Module) -> frozenset[int]:
    """The identities of every module and tensor inside ``module`` (itself included)."""
    return frozenset(id(x) for x in itertools.chain(module.modules(), module.parameters(), module.buffers()))


def _outermost(model: nn.Module, known: set[int]) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` not in ``known`` (by identity) whose parent is: what a part added
    or put in place of another, each as a whole. A module that only moved is not among them."""
    modules = dict(model.named_modules())
    new = [path for path, m in modules.items() if id(m) not in known]
    fresh = set(new)
    return [(path, modules[path]) for path in new if path == "" or path.rpartition(".")[0] not in fresh]


def _first_words(exc: Exception, limit: int = 100) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def make_variant(base: Method, values: dict[str, Any], label: str) -> Method:
    """``base`` with ``values`` (coerced config values) fixed, named ``label``."""
    cls = type(base)
    attrs = {
        "name": label,
        "config_defaults": {**cls.config_defaults, **values},
        "variant_of": cls.name,
        "__module__": cls.__module__,
        "__doc__": f"{cls.name} with {values} fixed.",
        # the class is made at run time: a worker process rebuilds it from the registry
        "__reduce__": lambda self: (_rebuild_variant, (cls.name, values, label)),
    }
    return type(f"{cls.__name__}Variant", (cls,), attrs)()


def _rebuild_variant(base: str, values: dict[str, Any], label: str) -> Method:
    from .base import get_method

    return make_variant(get_method(base), values, label)


def base_name(method: Method) -> str:
    """The registered method a variant is made from; a plain method's or a composition's own name."""
    return getattr(method, "variant_of", method.name)


@dataclass(frozen=True)
class CompositionConfig:
    """Each part's config, by part label, in the order the parts are applied."""

    parts: tuple[tuple[str, Any], ...]

    def identity_dict(self) -> dict[str, Any]:
        return {label: identity_dict(config) for label, config in self.parts}

    def to_dict(self) -> dict[str, Any]:
        return {label: config_to_dict(config) for label, config in self.parts}


class Composition(Composite):
    """Several methods on one backbone, applied in order, counted, merged and budgeted as one."""

    Config = CompositionConfig
    category = "composition"

    def __init__(self, parts: list[Method], label: str):
        labels = [p.name for p in parts]
        if len(parts) < 2:
            raise MethodError(f"composition {label!r} needs at least two parts joined by +")
        if len(set(labels)) != len(labels):
            raise MethodError(f"composition {label!r} names a method twice; give each part once")
        self.parts = list(parts)
        self.name = label
        self.description = " + ".join(labels)
        self.identity_at_init = all(p.identity_at_init for p in parts)
        self.mergeable = all(p.mergeable for p in parts)
        self.budget_adjustable = any(p.budget_adjustable for p in parts)
        self.cuda_graphs = all(p.cuda_graphs for p in parts)  # one part's uncapturable step is the whole step's
        self.families = tuple(f for f in parts[0].families if all(f in p.families for p in parts[1:]))
        self.unsupported_reasons = {}

    def check_backbone(self, spec: BackboneSpec) -> None:
        for part in self.parts:
            part.check_backbone(spec)

    def make_config(self, overrides: dict[str, dict[str, Any]] | None = None) -> CompositionConfig:
        """Each part's published config, with ``overrides`` (field values by part label) applied;
        :func:`methods.base.make_config` comes here for a composition."""
        overrides = overrides or {}
        return CompositionConfig(tuple((p.name, make_config(p, overrides.get(p.name))) for p in self.parts))

    def _configs(self, config: CompositionConfig) -> list[Any]:
        return [c for _, c in config.parts]

    def validate(self, config: CompositionConfig) -> None:
        for part, c in zip(self.parts, self._configs(config), strict=True):
            part.validate(c)

    def apply(self, model: nn.Module, config: CompositionConfig) -> nn.Module:
        return self.apply_parts(model, config)[0]

    def apply_parts(self, model: nn.Module, config: CompositionConfig) -> tuple[nn.Module, dict[str, str]]:
        """The adapted model, and which part trains each trainable tensor (by name)."""
        self.check_backbone(describe_backbone(model))
        head = {id(p) for p in head_parameters(model)}
        placed: list[_Placed] = []  # the modules each part put in, followed by object: a wrapper may move them
        trained: dict[int, tuple[str, str]] = {}  # tensor id -> (the part training it, its name)
        kept: list[nn.Parameter] = []
        for index, (part, c) in enumerate(zip(self.parts, self._configs(config), strict=True)):
            before = list(model.modules())  # held, so no new module can reuse a dropped one's id
            try:
                model = part.apply(model, c)
            except Exception as exc:  # peft refuses a layer another part wrapped with its own error types
                if not placed and not trained:
                    raise
                raise MethodError(self._cannot_adapt(index, trained, exc)) from None
            known = {id(m) for m in before}
            added = _outermost(model, known)
            self._refuse_overlap(part.name, model, added, placed)
            own = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in head]
            for n, p in own:
                if id(p) in trained:
                    other = trained[id(p)][0]
                    raise MethodError(
                        f"composition {self.name!r}: {other} and {part.name} both train {n}; "
                        "their counts would not add up: drop one of them"
                    )
            present = {id(p) for p in model.parameters()}
            for pid, (other, n) in trained.items():
                if pid not in present:
                    raise MethodError(
                        f"composition {self.name!r}: {part.name} removed {n}, which {other} trains; drop one of them"
                    )
            placed.extend(_Placed(part.name, path, m, _contents(m)) for path, m in added)
            trained.update({id(p): (part.name, n) for n, p in own})
            kept.extend(p for _, p in own)
        freeze_all_but(model, kept)
        names = {id(p): n for n, p in model.named_parameters()}
        return model, {names[pid]: label for pid, (label, _) in trained.items()}

    def _cannot_adapt(self, index: int, trained: dict[int, tuple[str, str]], exc: Exception) -> str:
        """The refusal for a part that fails on the model the earlier parts adapted: reorder when an
        earlier part is one that wraps other parts' layers (``ssf+lora``: peft cannot adapt SSF's
        layer, but SSF wraps LoRA's), drop one part otherwise."""
        part, earlier = self.parts[index], self.parts[:index]
        placers = ", ".join(dict.fromkeys(label for label, _ in trained.values())) or earlier[0].name
        head = f"composition {self.name!r}: {part.name} cannot adapt the layers {placers} placed"
        wrapper = next((p for p in earlier if p.wraps_whole_layers), None)
        if wrapper is None:
            return f"{head} ({type(exc).__name__}: {_first_words(exc)}); they collide: drop one of them"
        # the library's own words (a module's repr) add nothing to what the user must do: reorder
        order = "+".join(p.name for p in self.parts if p is not wrapper) + "+" + wrapper.name
        return f"{head}; {wrapper.name} wraps other parts' layers as a whole, so write it last: {order!r}"

    def check_parts_act(self, config: CompositionConfig, family: str) -> None:
        """Refuse the composition if a part's tensor takes no part in the forward pass once every part
        is applied (it gets no gradient at all: one part bypasses another, as LN-tuning computes with
        copies of the norms whose biases BitFit trains), or, where every part merges, if merging the
        parts in order changes the outputs.
        Checked on the tiny random backbone of ``family`` (``methods.conformance``), with every
        trainable tensor moved off its init so zero-initialised factors count; seconds on a CPU."""
        import torch

        from .conformance import TINY, TINY_VIT

        model, owners = self.apply_parts(TINY[family](), config)
        generator = torch.Generator().manual_seed(0)
        trainable = [(n, p) for n, p in model.named_parameters() if n in owners]
        with torch.no_grad():
            for _, p in trainable:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
        size = TINY_VIT["img_size"]
        x = torch.randn(2, 3, size, size, generator=generator)
        model.train()
        model(x).square().sum().backward()
        for n, p in trainable:
            # Only a tensor the forward pass never reaches is bypassed. One it reaches may still get a
            # gradient of exactly 0 on its own terms: GLoRA's scalar bias offset E on a layer that
            # writes into the residual stream adds one constant to every channel, which the next
            # LayerNorm removes, in every model it is part of.
            if p.grad is None:
                others = ", ".join(q.name for q in self.parts if q.name != owners[n])
                raise MethodError(
                    f"composition {self.name!r}: {owners[n]}'s tensor {n} has no effect once {others} is applied "
                    "too (it gets no gradient); they collide: drop one of them"
                )
        if self.mergeable:
            self.check_merged_outputs(model.eval(), x, TINY[family]())

    def check_merged_outputs(self, model: nn.Module, x: Any, plain: nn.Module) -> None:
        """Refuse a mergeable composition whose parts' merges, run in order on a copy of ``model``,
        change its outputs or leave layers the plain backbone ``plain`` does not have."""
        import torch

        from .conformance import merge_tolerance

        with torch.no_grad():
            before = model(x)
            try:
                merged = self.merge(copy.deepcopy(model)).eval()
            except Exception as exc:
                raise MethodError(
                    f"composition {self.name!r} cannot be merged ({type(exc).__name__}: {_first_words(exc, 160)}); "
                    "its parts' merges do not stack: drop one of them"
                ) from None
            diff = float((merged(x) - before).abs().max())
        extra = sorted(set(merged.state_dict()) - set(plain.state_dict()))
        if diff > merge_tolerance(before) or extra:
            found = (
                f"leaves {extra[0]}, which the plain backbone has not"
                if extra
                else f"changes the outputs by {diff:.1e}"
            )
            raise MethodError(
                f"composition {self.name!r}: merging its parts in order {found}; "
                "their merges do not stack: drop one of them, or run it unmerged with one part fewer"
            )

    def _refuse_overlap(
        self, part: str, model: nn.Module, added: list[tuple[str, nn.Module]], placed: list[_Placed]
    ) -> None:
        """Refuse ``part`` if it replaced or removed a module an earlier part placed, changed anything
        inside one, or nested a peft tuner layer around one. Wrapping one as a whole (SSF's layer
        around LoRA's) is allowed: the earlier module stays, unchanged, and the wrapper calls it."""
        paths = {id(m): path for path, m in model.named_modules()}
        for earlier in placed:
            path = paths.get(id(earlier.module))
            if path is None:
                why = f"{part} replaces or removes the layer {earlier.part} put there"
            elif _contents(earlier.module) != earlier.contents:
                why = f"{part} changes what is inside {earlier.part}'s layer"
            else:
                continue
            self._refuse_structure(earlier.part, part, path or earlier.path, why)
        for path, module in added:
            if isinstance(module, BaseTunerLayer):
                inside = {id(m) for m in module.modules()}
                nested = next((e for e in placed if id(e.module) in inside), None)
                if nested is not None:
                    why = f"peft nests {part}'s layer around {nested.part}'s and reads and merges through it"
                    self._refuse_structure(nested.part, part, path, why)

    def _refuse_structure(self, earlier: str, part: str, path: str, why: str) -> None:
        raise MethodError(
            f"composition {self.name!r}: {earlier} and {part} both change module {path} ({why}); "
            "they cannot be stacked: drop one of them"
        )

    def count(self, spec: BackboneSpec, config: CompositionConfig) -> int:
        return sum(p.count(spec, c) for p, c in zip(self.parts, self._configs(config), strict=True))

    def budget_count(self, spec: BackboneSpec, config: CompositionConfig) -> int:
        return sum(p.budget_count(spec, c) for p, c in zip(self.parts, self._configs(config), strict=True))

    def _fitted_part(self) -> int:
        return next(i for i, p in enumerate(self.parts) if p.budget_adjustable)

    def for_budget(self, spec: BackboneSpec, budget: int) -> CompositionConfig:
        """The first sizeable part fitted to what the others leave of ``budget``; the others at
        their published size."""
        configs = self._configs(self.make_config())
        fit = self._fitted_part()
        rest = sum(
            p.budget_count(spec, c) for i, (p, c) in enumerate(zip(self.parts, configs, strict=True)) if i != fit
        )
        if budget - rest <= 0:
            raise MethodError(
                f"composition {self.name!r}: its parts other than {self.parts[fit].name} already count {rest:,} "
                f"trainable parameters, more than the budget of {budget:,}; choose a larger budget"
            )
        part = self.parts[fit]
        # The tolerance applies to the composition's total, not to the fitted part's share: aim the
        # part at points across the whole window the total allows, and keep the fit nearest the budget.
        low, high = budget * (1 - BUDGET_TOLERANCE) - rest, budget * (1 + BUDGET_TOLERANCE) - rest
        targets = [budget - rest] + [round(low + (high - low) * k / 8) for k in range(9)]
        fits, first_error = [], None
        for target in (t for t in targets if t > 0):
            try:
                config = part.for_budget(spec, target)
            except MethodError as exc:
                first_error = first_error or exc
                continue
            if within_budget(part.budget_count(spec, config) + rest, budget):
                fits.append((abs(part.budget_count(spec, config) + rest - budget), config))
        if not fits:
            raise MethodError(
                f"composition {self.name!r} has no configuration within ±5% of a budget of {budget:,}: its parts "
                f"other than {part.name} count {rest:,}, and {part.name} cannot make up the rest "
                f"({_first_words(first_error, 160) if first_error else 'no fit in the window'}); choose another budget"
            )
        configs[fit] = min(fits, key=lambda f: f[0])[1]
        return CompositionConfig(tuple((p.name, c) for p, c in zip(self.parts, configs, strict=True)))

    def largest_config(self, spec: BackboneSpec) -> CompositionConfig:
        configs = self._configs(self.make_config())
        fit = self._fitted_part()
        configs[fit] = self.parts[fit].largest_config(spec)
        return CompositionConfig(tuple((p.name, c) for p, c in zip(self.parts, configs, strict=True)))

    def preset_caveat(self, preset_lr: float) -> str | None:
        return next((c for p in self.parts if (c := p.preset_caveat(preset_lr)) is not None), None)

    def search_space(self, trial: Any) -> dict[str, Any]:
        raise MethodError(
            f"composition {self.name!r} cannot be tuned yet (its parts' own hyperparameters share names); "
            "run it with --hparams published, or tune its parts alone"
        )

    def reference(self, model: nn.Module) -> nn.Module:
        for part in self.parts:
            model = part.reference(model)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        if not self.mergeable:
            return super().merge(model)
        for part in self.parts:  # in the order applied: the first part's layers are the innermost
            model = part.merge(model)
        return model
