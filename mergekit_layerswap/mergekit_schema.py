"""The fields of a mergekit config that mergekit's own schema (`MergeConfiguration`) types,
checked one line per field before any merge.

`problems(raw)` needs no torch (importing `mergekit.config` imports torch, which `validate`
must not): `dtype`/`out_dtype` (floating-point only, as mergekit merges), `chat_template`,
`tokenizer_source` and `tokenizer`, the latter three against a mirror of mergekit 0.1.5's
types (pinned against mergekit's own model by tests/test_baselines.py). `refused(raw)` runs
mergekit's own model, where torch is loaded anyway (`merge`, `mergekit-yaml`, suites);
`check(raw)` is both, each field named once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ValidationError, model_validator

from mergekit_layerswap.checkpoint import FLOAT_DTYPES

#: The floating-point dtypes mergekit 0.1.5 merges into (`mergekit.common.dtype_from_name`).
DTYPES = tuple(sorted(name for name, _ in FLOAT_DTYPES.values()))
#: What each top-level field takes, shown with a value mergekit refuses.
_EXPECTED = {
    "chat_template": "a string: a template name (chatml, auto) or a Jinja template",
    "tokenizer_source": "union, base or a model path",
    "tokenizer": "a mapping: source (union, base or a model path), tokens "
    "(TOKEN: {source: ..., force: BOOL}), pad_to_multiple_of (an integer)",
}
#: How a line from one of mergekit's own validators (a RuntimeError, no field) begins.
_REFUSED = "mergekit refuses the config"


def _single(value: Any, mark: str, fields: tuple[str, str]) -> Any:
    """mergekit's string form `a[MARK b]` as a mapping of `fields` (at most one MARK)."""
    if not isinstance(value, str):
        return value
    if value.count(mark) > 1:
        raise ValueError(f"more than one {mark!r} in {value!r}")
    return dict(zip(fields, value.split(mark), strict=False))


class _Path(BaseModel):
    """mergekit.common.ModelPath: `path[@revision]`."""

    path: str
    revision: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _single(value, "@", ("path", "revision"))


class _Reference(BaseModel):
    """mergekit.common.ModelReference: `model[+lora]`."""

    model: _Path
    lora: _Path | None = None
    override_architecture: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _single(value, "+", ("model", "lora"))


class _ModelToken(BaseModel):
    kind: Literal["model_token"]
    model: _Reference
    token_id: int | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _one(self) -> _ModelToken:
        if (self.token_id is None) == (self.token is None):
            raise ValueError("give exactly one of token_id or token")
        return self


class _Zero(BaseModel):
    kind: Literal["zero"]


class _Embedding(BaseModel):
    source: _ModelToken | _Zero | _Reference | None = None
    force: bool = False


class _Tokenizer(BaseModel):
    source: _Reference | Literal["union", "base"] = "union"
    tokens: dict[str, _Embedding] | None = None
    pad_to_multiple_of: int | None = None


class _Fields(BaseModel):
    """The fields of mergekit's MergeConfiguration that `validate` checks nowhere else."""

    chat_template: str | None = None
    tokenizer_source: Literal["union", "base"] | _Reference | None = None
    tokenizer: _Tokenizer | None = None


def _where(raw: Any, item: dict) -> tuple[str, Any]:
    """The field an error is about, as written in `raw`, and its value there."""
    parts, value = [], raw
    for part in item["loc"]:
        listed = isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)
        if listed or (isinstance(value, dict) and part in value):
            value = value[part]
        elif item["type"] == "missing" and part == item["loc"][-1]:
            parts.append(f".{part}")
            break
        else:
            break  # a union member's tag, not a key of the config
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip("."), value


def lines(raw: Any, error: ValidationError) -> list[str]:
    """One line per field of `raw` that `error` refuses, naming the field and its value."""
    found: dict[str, str] = {}
    for item in error.errors():
        where, value = _where(raw, item)
        if where in found:
            continue
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        expected = _EXPECTED.get(where.split(".")[0].split("[")[0])
        if item["type"] == "missing":
            found[where] = f"{where}: missing; mergekit requires it"
        elif expected:
            found[where] = f"{where}: got {shown}; mergekit expects {expected}"
        else:
            found[where] = f"{where}: got {shown}; mergekit refuses it: {item['msg']}"
    return list(found.values())


def _float_dtype(value: Any) -> str | None:
    """A `dtype`/`out_dtype` value as the floating-point dtype mergekit reads (None if it is
    none of them)."""
    name = value.removeprefix("torch.") if isinstance(value, str) else None
    return name if name in DTYPES else None


def problems(raw: dict) -> list[str]:
    """Every problem with the fields mergekit's schema types that no other check reads,
    one line each (no torch)."""
    found = [
        f"{key}: got {raw[key]!r}; use one of {', '.join(DTYPES)} (or leave it out to keep "
        "the models' own dtype)"
        for key in ("dtype", "out_dtype")
        if raw.get(key) is not None and _float_dtype(raw[key]) is None
    ]
    try:
        _Fields.model_validate({key: raw[key] for key in _EXPECTED if key in raw})
    except ValidationError as error:
        found += lines(raw, error)
    if raw.get("tokenizer_source") and raw.get("tokenizer"):
        found.append("tokenizer_source: give tokenizer_source or tokenizer, not both")
    return found


def refused(raw: dict) -> list[str]:
    """What mergekit's own MergeConfiguration refuses in `raw`, one line per field (imports
    mergekit.config, and so torch)."""
    from mergekit.config import MergeConfiguration

    try:  # the validator itself: model_validate may be wrapped by plugin._checked_config
        MergeConfiguration.__pydantic_validator__.validate_python(raw)
    except ValidationError as error:
        return lines(raw, error)
    except RuntimeError as error:  # mergekit's own validators raise these unconverted
        return [f"{_REFUSED}: {error}"]
    return []


def check(raw: dict) -> list[str]:
    """`problems` and then what else mergekit's own model refuses, each field once (a
    mergekit validator's own error only when `problems` found none: it stops at its first)."""
    found = problems(raw)
    named = {line.split(":")[0] for line in found} | ({_REFUSED} if found else set())
    return found + [line for line in refused(raw) if line.split(":")[0] not in named]
