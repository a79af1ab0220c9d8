"""Method entries of ``--methods``: a method, a named variant, or a composition.

Grammar (whitespace around any token is ignored)::

    methods := entry ("," entry)*            a comma inside [...] does not split entries
    entry   := part ("+" part)*              a composition, parts applied in the order written
    part    := NAME ["[" FIELD "=" VALUE ("," FIELD "=" VALUE)* "]"]

``karst``, ``karst[rescale=none]``, ``karst[kernels=4,factor=16]``, ``karst+bitfit``,
``lora[rank=4]+ssf``. An entry's canonical **label** names its runs everywhere (``RunSpec.method``,
the ``bench.method`` tag, ``bench runs``, report rows): each part's fields sorted by name, each
value coerced to its field's type and written back as text, parts in the order written. A plain
name is its own label, so ``karst`` keeps the run keys it always had.

:func:`parse_methods` and :func:`parse_entry` only read the text; :func:`resolve_entry` checks the
names, fields and values against the registry and returns the method to run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BenchError

if TYPE_CHECKING:  # the parser is plain text; the resolver imports the methods (torch) when called
    from methods.base import Method

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_FORBIDDEN_IN_VALUE = set("[]=+,")


@dataclass(frozen=True)
class EntryPart:
    """One method of an entry: its registered name and the config values written in brackets."""

    base: str
    overrides: tuple[tuple[str, str], ...] = ()  # (field, value as written), sorted by field

    @property
    def label(self) -> str:
        if not self.overrides:
            return self.base
        return f"{self.base}[{','.join(f'{k}={v}' for k, v in self.overrides)}]"


@dataclass(frozen=True)
class MethodEntry:
    """An entry as written (``text``) and its parts; ``label`` before values are coerced."""

    text: str
    parts: tuple[EntryPart, ...]

    @property
    def label(self) -> str:
        return "+".join(p.label for p in self.parts)


def _refuse(text: str, why: str) -> BenchError:
    return BenchError(
        f"--methods entry {text!r}: {why}; write NAME, NAME[FIELD=VALUE,...] or NAME+NAME, e.g. karst[rescale=none]"
    )


def split_methods(text: str | None) -> list[str] | None:
    """``"lora,karst[factor=16,kernels=4]"`` -> ``["lora", "karst[factor=16,kernels=4]"]``: commas
    outside brackets split; empty items are dropped; unbalanced brackets are refused."""
    if text is None:
        return None
    items, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise _refuse(text, "a ] closes no [")
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise _refuse(text, "a [ is never closed")
    items.append("".join(current))
    return [i.strip() for i in items if i.strip()] or None


def _parse_part(entry: str, text: str) -> EntryPart:
    m = re.fullmatch(r"\s*([^\[\]]*?)\s*(?:\[(.*)\])?\s*", text, flags=re.S)
    if m is None or not _NAME.fullmatch(m.group(1) or ""):
        raise _refuse(
            entry, f"{text.strip() or 'an empty part'!r} is not a method name with optional [FIELD=VALUE,...]"
        )
    name, body = m.group(1), m.group(2)
    if body is None:
        return EntryPart(name)
    if "[" in body or "]" in body:
        raise _refuse(entry, "brackets do not nest")
    values: dict[str, str] = {}
    for item in body.split(","):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not _NAME.fullmatch(key) or not value or _FORBIDDEN_IN_VALUE & set(value):
            raise _refuse(entry, f"{item.strip() or 'an empty item'!r} in {name}[...] is not FIELD=VALUE")
        if key in values:
            raise _refuse(entry, f"{name}[...] sets {key} twice")
        values[key] = value
    return EntryPart(name, tuple(sorted(values.items())))


def parse_entry(text: str) -> MethodEntry:
    """One entry: its parts split on ``+`` (outside brackets, where ``+`` cannot appear)."""
    if len(split_methods(text) or []) > 1:
        raise _refuse(text, "one entry was expected, found a comma between entries")
    parts = tuple(_parse_part(text, p) for p in text.split("+"))
    return MethodEntry(text.strip(), parts)


def parse_methods(text: str) -> list[MethodEntry]:
    """Every entry of a ``--methods`` value."""
    return [parse_entry(item) for item in split_methods(text) or []]


def method_base(label: str) -> str:
    """The ``bench.method_base`` of a run: the registered method of a variant (``karst`` for
    ``karst[rescale=none]``); a plain method's or a composition's own label."""
    entry = parse_entry(label)
    return entry.parts[0].base if len(entry.parts) == 1 else label


def render_value(value: Any) -> str:
    """A coerced config value as the label writes it: ``true``/``false``, ``none``, ``16``, ``0.5``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return repr(value) if isinstance(value, float) else str(value)


def _resolve_part(entry: MethodEntry, part: EntryPart) -> Method:
    import methods
    from methods.base import MethodError, make_config
    from methods.composition import make_variant

    try:
        method = methods.get_method(part.base)
        if not part.overrides:
            return method
        config = make_config(method, dict(part.overrides))  # coerces and validates every value
    except MethodError as exc:
        raise MethodError(f"--methods entry {entry.text!r}: {exc}") from None
    values = {k: getattr(config, k) for k, _ in part.overrides}
    label = f"{method.name}[{','.join(f'{k}={render_value(v)}' for k, v in values.items())}]"
    return make_variant(method, values, label)


def resolve_entry(entry: MethodEntry | str) -> Method:
    """The method an entry names; its ``name`` is the entry's canonical label. Unknown methods,
    fields and values are refused in one line naming the entry."""
    from methods.base import MethodError
    from methods.composition import Composition

    if isinstance(entry, str):
        entry = parse_entry(entry)
    parts = [_resolve_part(entry, p) for p in entry.parts]
    if len(parts) == 1:
        return parts[0]
    try:
        return Composition(parts, "+".join(p.name for p in parts))
    except MethodError as exc:
        raise MethodError(f"--methods entry {entry.text!r}: {exc}") from None


def resolve_methods(texts: list[str]) -> list[Method]:
    """Every entry's method, refusing two entries with one label (``karst[rank=8]`` and ``karst[rank=08]``)."""
    chosen = [resolve_entry(t) for t in texts]
    seen: dict[str, str] = {}
    for text, method in zip(texts, chosen, strict=True):
        if method.name in seen:
            raise BenchError(
                f"--methods lists {seen[method.name]!r} and {text!r}, which are the same entry {method.name!r}; give it once"
            )
        seen[method.name] = text
    return chosen


def _is_composite(method: Method) -> bool:
    from methods.base import Composite

    return isinstance(method, Composite)


def _parts(method: Method) -> list[Method]:
    from methods.base import Composite

    return method.parts if isinstance(method, Composite) else [method]


def set_bases(methods: list[Method]) -> set[str]:
    """The registered methods ``--set METHOD.FIELD=VALUE`` may name for these entries."""
    from methods.composition import base_name

    return {base_name(p) for m in methods for p in _parts(m)}


def set_values(method: Method, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``--set`` values that reach ``method``: those of its base method, except the fields its
    brackets fix (a variant's own values win). A composition's are by part label."""
    from methods.base import Composite
    from methods.composition import base_name

    def own(part: Method) -> dict[str, Any]:
        return {k: v for k, v in overrides.get(base_name(part), {}).items() if k not in part.config_defaults}

    if isinstance(method, Composite):
        return {p.name: values for p in method.parts if (values := own(p))}
    return own(method)


def held_values(method: Method, overrides: dict[str, Any]) -> dict[str, Any]:
    """What a budget fit must keep: the variant's bracket values and the ``--set`` values (by part
    label for a composition)."""
    from methods.base import Composite

    if isinstance(method, Composite):
        held = {p.name: {**p.config_defaults, **overrides.get(p.name, {})} for p in method.parts}
        return {k: v for k, v in held.items() if v}
    return {**method.config_defaults, **overrides}


def with_values(method: Method, config: Any, values: dict[str, Any]) -> Any:
    """``config`` with ``values`` (as :func:`held_values` gives them) applied, validated."""
    from methods.base import Composite, config_to_dict, make_config

    if isinstance(method, Composite):
        current = config_to_dict(config)
        return make_config(method, {label: {**current[label], **values.get(label, {})} for label in current})
    return make_config(method, {**config_to_dict(config), **values})


def choose_entry_for_budget(method: Method, spec: Any, budget: int, overrides: dict[str, Any] | None = None) -> Any:
    """:func:`bench.budget.choose_for_budget` for an entry: the fitted structure keeps the variant's
    bracket values and the ``--set`` values, which may change how it computes (``karst[rescale=none]``,
    ``karst.mode``) but not its size; a value that changes the size is refused in one line."""
    import dataclasses

    from .budget import choose_for_budget

    choice = choose_for_budget(method, spec, budget)
    held = held_values(method, overrides or {})
    if not held or not choice.adjustable:
        return choice
    config = with_values(method, choice.config, held)
    if method.budget_count(spec, config) != choice.count:
        flat = {f"{k}.{f}": v for k, fs in held.items() for f, v in fs.items()} if _is_composite(method) else held
        shown = ", ".join(f"{k}={render_value(v)}" for k, v in flat.items())
        raise BenchError(
            f"--set or the brackets ({shown}) and --budget {budget:,} both size method {method.name!r}; drop one "
            "of them (values that keep the size, such as karst[rescale=none] or karst.mode, work with --budget)"
        )
    return dataclasses.replace(choice, config=config)
