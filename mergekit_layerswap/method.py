"""`layer_swap` as a mergekit merge method: one declarative spec, one small function.

The host is the `base_model`; each donor's `bottom`/`top`/`layers` and the shared
`transition` are mergekit parameters. Per output tensor the function asks the swap rule
(`swap.tensor_weights`) which sources it takes: a single source is returned as is (bit for
bit), a transition layer is blended in float32 and cast back to the inputs' dtype.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from collections.abc import Hashable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Literal

import torch
import yaml
from mergekit.common import ModelReference, dtype_from_name
from mergekit.graph import Task
from mergekit.merge_methods import (
    BasePolicy,
    InputContract,
    PerNonBase,
    TensorGroup,
    merge_method,
)
from mergekit.merge_methods.base import FunctionalGroupMergeMethod
from pydantic import NonNegativeInt, PositiveInt

from mergekit_layerswap import _hook, checkpoint, stream, swap, validate
from mergekit_layerswap.errors import InputError
from mergekit_layerswap.plan import compile_slices

PAPER_URL = "https://arxiv.org/abs/2410.01335"
#: Set to 0 to run layer_swap through mergekit's per-tensor executor instead of StreamSwap.
STREAM_ENV = "MERGEKIT_LAYERSWAP_STREAM"
_TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16,
                 "F16": torch.float16}  # fmt: skip
_ST_DTYPES = {dtype: name for name, dtype in _TORCH_DTYPES.items()}


def _layer_count(group: TensorGroup, num_layers: int | None) -> int:
    if num_layers is not None:
        return num_layers
    host = group.base.id
    if isinstance(host, ModelReference):
        return checkpoint.model_info(str(host)).num_layers
    raise ValueError(
        "layer_swap: pass parameters={'num_layers': N} when merging in-memory state dicts "
        "(with mergekit configs the layer count comes from the models' config.json)"
    )


def _rule_weights(group: TensorGroup, num_layers: int | None, **parameters) -> dict:
    """{input id: weight} for this tensor, from the swap rule and the per-donor claims.
    When no donor claims anything (e.g. a generic call with default parameters, as
    mergekit's own tests make), the host is returned unchanged, with a warning; mergekit
    configs never get here that way (validation refuses a donor that claims nothing)."""
    bottom, top, layers = (parameters.pop(name) for name in ("bottom", "top", "layers"))
    claims = tuple(swap.Claim(e.id, bottom[e.id], top[e.id], layers[e.id]) for e in group.non_base)
    if not any(claim.bottom or claim.top or str(claim.layers).strip() for claim in claims):
        warnings.warn(
            "layer_swap: no donor claims any layer (bottom, top and layers are unset); "
            "the result is the base model unchanged",
            stacklevel=2,
        )
        return {group.base.id: 1.0}
    config = swap.SwapConfig(host=group.base.id, claims=claims, **parameters)
    position = checkpoint.tensor_position(group.metadata.name or "")
    return dict(swap.tensor_weights(position, _layer_count(group, num_layers), config))


class LayerSwapMethod(FunctionalGroupMergeMethod):
    """The layer_swap method object. In-memory merges (`merge_state_dicts`, which calls
    the method on all tensor groups at once) are checked against the layers present: a
    wrong `num_layers` would place the top/transition layers wrongly, or not at all.
    mergekit's planner calls `_execute_resolved` instead, with validated configs."""

    def __call__(self, groups, /, *, parameters=None, **options) -> tuple[torch.Tensor, ...]:
        groups = tuple(groups)
        num_layers = (parameters or {}).get("num_layers")
        positions = (checkpoint.tensor_position(g.metadata.name or "") for g in groups)
        present = sorted({p for p in positions if isinstance(p, int)})
        if isinstance(num_layers, int) and present and present[-1] + 1 != num_layers:
            raise ValueError(
                f"layer_swap: num_layers={num_layers}, but the state dicts hold layers "
                f"{swap.format_ranges(present)}; pass num_layers={present[-1] + 1}"
            )
        return super().__call__(groups, parameters=parameters, **options)


@merge_method(
    name="layer_swap",
    pretty_name="Layer Swapping",
    reference_url=PAPER_URL,
    contract=InputContract(base=BasePolicy.REQUIRED),
    uses_accelerator=False,
)
def _kernel(
    group: TensorGroup,
    bottom: PerNonBase[NonNegativeInt] = 0,
    top: PerNonBase[NonNegativeInt] = 0,
    layers: PerNonBase[str] = "",
    transition: NonNegativeInt = 0,
    embed_source: Literal["auto", "base"] = "auto",
    head_source: Literal["auto", "base"] = "auto",
    num_layers: PositiveInt | None = None,
    slice_weights: str = "",
) -> torch.Tensor:
    if slice_weights:  # a slice compiled by plan.compile_slices: its sources are its weights
        by_name = {str(e.id): e.id for e in group.entries}
        weights = {by_name[name]: w for name, w in json.loads(slice_weights).items()}
    else:
        weights = _rule_weights(
            group, num_layers, bottom=bottom, top=top, layers=layers, transition=transition,
            embed_source=embed_source, head_source=head_source,
        )  # fmt: skip
    tensors: dict[Hashable, torch.Tensor] = {e.id: e.tensor for e in group.entries}
    return combine([tensors[source] for source in weights], list(weights.values()))


layer_swap = LayerSwapMethod(_kernel.spec, _kernel.implementation)


def combine(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """One source: itself (bit for bit); several: their weighted sum in float32, cast back
    to the first one's dtype (the streamed writer computes transitions with this too)."""
    if len(tensors) == 1:
        return tensors[0]
    blend = torch.zeros_like(tensors[0], dtype=torch.float32)
    for tensor, weight in zip(tensors, weights, strict=True):
        blend.add_(tensor.to(torch.float32), alpha=weight)
    return blend.to(tensors[0].dtype)


def compile_config(config, plan: validate.LayerSwapPlan) -> dict[str, ModelReference]:
    """Rewrite a `models:` layer_swap config into minimal-read slices, in place; returns
    the config's model references by name.

    Each slice lists only the models its layers use (`slice_weights` says how much of
    each); a slice without the host names its own donor as base_model, as mergekit's input
    contract wants a base in every slice. mergekit 0.1.5 plans the final norm and head with
    as many inputs as the *first* slice has sources, so when the head is a blend of more
    models than the embeddings, the first (zero-length) slice also lists the head's other
    models, with no weight (pinned by tests/test_merge_integration.py).
    """
    from mergekit.config import InputSliceDefinition, OutputSliceDefinition

    references = {str(m.model): m.model for m in config.models}
    references.setdefault(str(config.base_model), config.base_model)
    specs = compile_slices(plan.swap, plan.num_layers)
    head_only = [name for name in specs[-1].weights if name not in specs[0].weights]
    slices = []
    for spec in specs:
        names = list(spec.weights)
        if spec is specs[0]:
            names += head_only[: len(specs[-1].weights) - len(names)]
        sources = [
            InputSliceDefinition(model=references[name], layer_range=(spec.start, spec.end))
            for name in names
        ]
        base = plan.host if plan.host in spec.weights else next(iter(spec.weights))
        slices.append(
            OutputSliceDefinition(
                sources=sources,
                base_model=references[base],
                parameters={"slice_weights": json.dumps(spec.weights)},
            )
        )
    config.slices, config.models = slices, None
    return references


@dataclass(frozen=True)
class _Row:
    """One output tensor of a streamed swap: its sources as (stored tensor, weight), its
    output dtype, and the dtype mergekit's loader casts inputs to (None: no cast)."""

    name: str
    parts: tuple[tuple[stream.Stored, float], ...]
    dtype: str
    load: str | None


class StreamSwap(Task[None]):
    """A whole layer swap as one mergekit task: copied tensors go from file to file in the
    kernel, transition tensors are blended with `combine`; the bytes equal those of
    mergekit's per-tensor tasks, which it replaces (see `guard_planner`)."""

    out_path: str
    tensors: tuple[_Row, ...]
    max_shard_size: int
    quiet: bool = False

    def arguments(self) -> dict[str, Task]:
        return {}

    def main_thread_only(self) -> bool:
        return True

    def execute(self) -> None:
        stream.write_model(
            self.out_path,
            [_output_tensor(row) for row in self.tensors],
            max_shard_size=self.max_shard_size,
            index_metadata={"mergekit_version": version("mergekit")},
            quiet=self.quiet,
        )


def _output_tensor(row: _Row) -> stream.OutputTensor:
    """A row as the writer's tensor: a byte copy when it has one source and no cast,
    otherwise computed as mergekit would (cast to `load`, align, combine, cast)."""
    stored = [item for item, _ in row.parts]
    name, dtype, load = row.name, row.dtype, row.load
    if len(stored) == 1 and stored[0].dtype == dtype and load in (None, dtype):
        return stream.OutputTensor(name, dtype, stored[0].shape, source=stored[0])

    def compute() -> memoryview:
        tensors = []
        for item in stored:
            raw = stream.read_bytes(item)
            tensor = torch.frombuffer(raw, dtype=_TORCH_DTYPES[item.dtype]).reshape(item.shape)
            tensors.append(tensor.to(_TORCH_DTYPES[load]) if load else tensor)
        aligned = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
        result = combine([t.to(aligned) for t in tensors], [w for _, w in row.parts])
        return memoryview(result.to(_TORCH_DTYPES[dtype]).contiguous().view(torch.uint8).numpy())

    return stream.OutputTensor(name, dtype, stored[0].shape, compute=compute, reads=tuple(stored))


def _stream_rows(planner, tasks: list) -> tuple[_Row, ...] | None:
    """The planned merge as StreamSwap rows, or None where mergekit's executor must run
    it (tokenizer or vocabulary work, LoRA, pickles, multi-GPU, names the loader resolves
    through aliases or tied weights, non-float tensors, the opt-out variable)."""
    from mergekit.io.tasks import FinalizeModel, LoaderCache, SaveTensor

    plan, references = getattr(planner, "_layerswap", (None, {}))
    options, config = planner.options, planner.config
    if (
        plan is None
        or os.environ.get(STREAM_ENV, "1") == "0"
        or not options.safe_serialization
        or options.multi_gpu
        or options.read_to_gpu
        or options.unsafe_truncate_embeddings
        or not all(isinstance(task, (SaveTensor, FinalizeModel)) for task in tasks)
    ):
        return None
    indexes = {name: LoaderCache().get(ref).index for name, ref in references.items()}
    if any(ref.lora for ref in references.values()) or not all(
        index.is_safetensors for index in indexes.values()
    ):
        return None
    load = _ST_DTYPES.get(dtype_from_name(config.dtype)) if config.dtype else None
    if config.dtype and load is None:
        return None
    headers: dict[str, dict[str, stream.Stored]] = {}
    rows = []
    for save in (task for task in tasks if isinstance(task, SaveTensor)):
        position = checkpoint.tensor_position(save.tensor_name)
        weights = swap.tensor_weights(position, plan.num_layers, plan.swap)
        parts = []
        for model, weight in weights.items():
            shard = indexes[model].tensor_paths.get(save.tensor_name)
            if shard is None:
                return None
            path = os.path.join(indexes[model].base_path, shard)
            if path not in headers:
                headers[path] = stream.read_header(path)
            item = headers[path][save.tensor_name]
            if item.dtype not in _TORCH_DTYPES:
                return None
            parts.append((item, weight))
        loaded = [_TORCH_DTYPES[load or item.dtype] for item, _ in parts]
        dtype = dtype_from_name(save.dtype) or functools.reduce(torch.promote_types, loaded)
        if dtype not in _ST_DTYPES:
            return None
        rows.append(_Row(save.tensor_name, tuple(parts), _ST_DTYPES[dtype], load))
    return tuple(rows)


def register() -> None:
    """Make `layer_swap` available by name to mergekit (idempotent)."""
    from mergekit import merge_methods

    try:
        existing = merge_methods.get(layer_swap.spec.name)
    except RuntimeError:
        merge_methods.register(layer_swap)
        return
    if existing is not layer_swap:
        raise RuntimeError("another merge method named 'layer_swap' is already registered")


def _exit_on_config_error(hook):
    """An uncaught InputError (e.g. from the stock mergekit-yaml) prints its lines, not a
    traceback, and exits 2; every other exception keeps the previous hook."""

    def excepthook(kind, error, traceback):
        if isinstance(error, InputError):
            for line in error.problems:
                print(f"layer_swap config error: {line}", file=sys.stderr)
            sys.exit(2)
        hook(kind, error, traceback)

    excepthook.layerswap = True
    return excepthook


def _raw_config(config) -> dict:
    """What validation reads of a MergeConfiguration, model references as their strings.

    Not `config.model_dump()`: for a path with a space or a quote, mergekit's
    ModelReference serializer returns the reference itself, which pydantic reports as
    "Circular reference detected". `slices`/`modules` (refused by validation) are only
    marked as present.
    """
    plain = {"merge_method", "parameters", "dtype", "out_dtype"}
    raw = config.model_dump(mode="json", exclude_none=True, include=plain)
    if config.base_model is not None:
        raw["base_model"] = str(config.base_model)
    if config.models is not None:
        raw["models"] = [
            {
                "model": str(m.model),
                **m.model_dump(mode="json", exclude_none=True, exclude={"model"}),
            }
            for m in config.models
        ]
    raw.update({key: True for key in ("slices", "modules") if getattr(config, key)})
    return raw


def _refuse(problems: list[str]) -> None:
    """Raise the problems as one InputError that the stock CLI prints as lines, exit 2."""
    if problems:
        if not getattr(sys.excepthook, "layerswap", False):
            sys.excepthook = _exit_on_config_error(sys.excepthook)
        raise InputError(problems)


def guard_config(config_module) -> None:
    """Check layer_swap configs where the stock `mergekit-yaml` parses the loaded YAML
    (`MergeConfiguration.model_validate`, pinned by tests/test_registration.py), so a
    malformed shape (`models: [./A, ./B]`, a `model:` without a path, non-string keys) is
    one line per problem instead of pydantic's traceback."""
    configuration = config_module.MergeConfiguration
    original = configuration.model_validate.__func__
    if getattr(original, "layerswap", False):
        return

    @functools.wraps(original)
    def model_validate(cls, obj, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("merge_method") == layer_swap.spec.name:
            _refuse(validate.check(obj))
        return original(cls, obj, *args, **kwargs)

    model_validate.layerswap = True
    configuration.model_validate = classmethod(model_validate)


def guard_planner(plan_module) -> None:
    """Check, compile and stream every layer_swap config in mergekit's planner.

    mergekit silently ignores unknown parameter names and checks nothing across donors;
    `MergePlanner.normalize_config` is the first call that sees the whole configuration, so
    the check runs there, before any tensor is read, and a valid `models:` config is then
    compiled into minimal-read slices. `MergePlanner.plan_to_disk` then swaps mergekit's
    per-tensor save tasks for one StreamSwap task where `_stream_rows` allows (both hook
    points pinned by tests/test_registration.py).
    """
    planner = plan_module.MergePlanner
    original = planner.normalize_config
    if getattr(original, "layerswap", False):
        return
    original_plan = planner.plan_to_disk

    @functools.wraps(original)
    def normalize_config(self):
        if self.config.merge_method == layer_swap.spec.name:
            raw = _raw_config(self.config)
            plan, problems = validate.check_plan(raw)
            _refuse(problems)
            self._layerswap = plan, compile_config(self.config, plan)
        return original(self)

    @functools.wraps(original_plan)
    def plan_to_disk(self, out_path: str) -> list:
        tasks = original_plan(self, out_path)
        rows = _stream_rows(self, tasks)
        if rows is None:
            return tasks
        options = self.options
        task = StreamSwap(out_path=out_path, tensors=rows,
                          max_shard_size=options.out_shard_size, quiet=options.quiet)  # fmt: skip
        return [task]

    normalize_config.layerswap = True
    planner.normalize_config = normalize_config
    planner.plan_to_disk = plan_to_disk


def guard_card(merge_module) -> None:
    """Give layer_swap outputs our model card (layer map, sources, citation) instead of
    mergekit's generic one; `run_merge` calls `mergekit.merge.generate_card` (pinned by
    tests/test_registration.py) with the last part of its output path as the model's name,
    so `run_merge` gets that path made absolute (`OUT/` and `.` would name no model)."""
    original = merge_module.generate_card
    if getattr(original, "layerswap", False):
        return
    run_merge = merge_module.run_merge

    @functools.wraps(run_merge)
    def run_merge_named(merge_config, out_path, *args, **kwargs):
        return run_merge(merge_config, os.path.abspath(out_path), *args, **kwargs)

    @functools.wraps(original)
    def generate_card(config, config_yaml, name, *args, **kwargs):
        if config.merge_method != layer_swap.spec.name:
            return original(config, config_yaml, name, *args, **kwargs)
        from mergekit_layerswap import card

        raw = yaml.safe_load(config_yaml)
        host = validate.reference(raw["base_model"])
        layers = checkpoint.model_info(host).num_layers
        return card.render(raw, config_yaml, name=name, num_layers=layers)

    generate_card.layerswap = True
    merge_module.generate_card = generate_card
    merge_module.run_merge = run_merge_named


_hook.run_deferred()  # hook callbacks that fired while this module imported mergekit
