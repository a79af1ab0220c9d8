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
on the model itself, by comparing its modules and trainable tensors before and after each part,
and refuses in one line naming both parts and the module. Building on the meta device (as every
sweep does before it reads data) is enough to find it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
        placed: dict[str, str] = {}  # module path -> the part that put a module there
        trained: dict[int, tuple[str, str]] = {}  # tensor id -> (the part training it, its name)
        kept: list[nn.Parameter] = []
        for part, c in zip(self.parts, self._configs(config), strict=True):
            before = dict(model.named_modules())
            try:
                model = part.apply(model, c)
            except Exception as exc:  # peft refuses a layer another part wrapped with its own error types
                if not placed and not trained:
                    raise
                earlier = ", ".join(dict.fromkeys(label for label, _ in trained.values())) or self.parts[0].name
                raise MethodError(
                    f"composition {self.name!r}: {part.name} cannot adapt the layers {earlier} placed "
                    f"({type(exc).__name__}: {_first_words(exc)}); they collide: drop one of them"
                ) from None
            changed = [path for path, m in model.named_modules() if before.get(path) is not m]
            self._refuse_overlap(part.name, changed, placed)
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
            placed.update({path: part.name for path in changed})
            trained.update({id(p): (part.name, n) for n, p in own})
            kept.extend(p for _, p in own)
        freeze_all_but(model, kept)
        names = {id(p): n for n, p in model.named_parameters()}
        return model, {names[pid]: label for pid, (label, _) in trained.items()}

    def check_parts_act(self, config: CompositionConfig, family: str) -> None:
        """Refuse the composition if a part's tensor has no effect once every part is applied (one
        part bypasses another: LN-tuning computes with copies of the norms whose biases BitFit
        trains). Checked on the tiny random backbone of ``family`` (``methods.conformance``), with
        every trainable tensor moved off its init so zero-initialised factors count; seconds on a CPU."""
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
            if p.grad is None or not bool(p.grad.abs().sum() > 0):
                others = ", ".join(q.name for q in self.parts if q.name != owners[n])
                raise MethodError(
                    f"composition {self.name!r}: {owners[n]}'s tensor {n} has no effect once {others} is applied "
                    "too (it gets no gradient); they collide: drop one of them"
                )

    def _refuse_overlap(self, part: str, changed: list[str], placed: dict[str, str]) -> None:
        """Refuse a module ``part`` changed at, inside or around a module an earlier part placed."""
        for path in changed:
            for other_path, other in placed.items():
                related = path == other_path or path.startswith(other_path + ".") or other_path.startswith(path + ".")
                if related:
                    where = other_path if len(other_path) <= len(path) else path
                    raise MethodError(
                        f"composition {self.name!r}: {other} and {part} both change module {where}; "
                        "they cannot be stacked: drop one of them"
                    )

    def count(self, spec: BackboneSpec, config: CompositionConfig) -> int:
        return sum(p.count(spec, c) for p, c in zip(self.parts, self._configs(config), strict=True))

    def _fitted_part(self) -> int:
        return next(i for i, p in enumerate(self.parts) if p.budget_adjustable)

    def for_budget(self, spec: BackboneSpec, budget: int) -> CompositionConfig:
        """The first sizeable part fitted to what the others leave of ``budget``; the others at
        their published size."""
        configs = self._configs(self.make_config())
        fit = self._fitted_part()
        rest = sum(p.count(spec, c) for i, (p, c) in enumerate(zip(self.parts, configs, strict=True)) if i != fit)
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
            if within_budget(part.count(spec, config) + rest, budget):
                fits.append((abs(part.count(spec, config) + rest - budget), config))
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
