"""Every change this plugin makes to mergekit, each beside the mergekit function it wraps.

mergekit 0.1.5 (pinned in pyproject.toml) has no plugin hooks, so `_hook` calls these as soon
as mergekit's own modules finish importing:
- `guard_config` wraps `mergekit.config.MergeConfiguration.model_validate`: a malformed
  layer_swap config, or one mergekit's own schema refuses, is one line per problem (exit 2)
  instead of pydantic's traceback;
- `guard_planner` wraps `mergekit.plan.MergePlanner.normalize_config` (check the config before
  any tensor is read, compile it into minimal-read slices, and plan the host checkpoint's
  own tensors rather than mergekit's template, `checkpoint_arch`) and `plan_to_disk` (one
  streamed write task instead of per-tensor tasks);
- `guard_card` wraps `mergekit.merge.generate_card` (our model card) and `run_merge` (an
  absolute output path, so the card names the folder);
- `quiet_dtype` wraps `mergekit.merge._model_out_config`, which sets the output config's
  dtype through transformers' deprecated `torch_dtype` (a warning on every merge).
Each wrapped function is pinned by tests/test_registration.py: a mergekit that moves one
fails there, and `_wrap` refuses to patch a function that is missing. Nothing here imports
mergekit or torch at module level.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from importlib.metadata import version

import yaml

from mergekit_layerswap import checkpoint, layout, mergekit_schema, validate
from mergekit_layerswap.errors import InputError
from mergekit_layerswap.layer_map import compile_slices

#: The mergekit these patches are written against (pyproject.toml pins it).
MERGEKIT_VERSION = "0.1.5"


def _wrap(owner: object, name: str, make: Callable[[Callable], Callable]) -> None:
    """Replace `owner.name` by `make(original)`, once (a second call does nothing)."""
    original = getattr(owner, name, None)
    if original is None:
        raise RuntimeError(
            f"mergekit {version('mergekit')} has no {owner.__name__}.{name}; mergekit-layerswap "
            f"patches mergekit {MERGEKIT_VERSION}: install mergekit=={MERGEKIT_VERSION}"
        )
    if getattr(original, "layerswap", False):
        return
    wrapped = make(original)
    getattr(wrapped, "__func__", wrapped).layerswap = True  # a classmethod: its function
    setattr(owner, name, wrapped)


def _exit_on_input_error(hook):
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


def _refuse(problems: list[str]) -> None:
    """Raise the problems as one InputError that the stock CLI prints as lines, exit 2."""
    if problems:
        if not getattr(sys.excepthook, "layerswap", False):
            sys.excepthook = _exit_on_input_error(sys.excepthook)
        raise InputError(problems)


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


def compile_config(config, plan: validate.CheckedSwap) -> dict:
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


def _host_architecture(arch, plan: validate.CheckedSwap, host, config):
    """The architecture the planner merges: the host's tensors as its checkpoint holds them,
    names read as mergekit's loader reads them (pickled weights too); a tensor no merge
    could place is refused (`layout.read`)."""
    from mergekit.io.tasks import LoaderCache

    from mergekit_layerswap.checkpoint_arch import from_checkpoint

    names = LoaderCache().get(host).index.tensor_paths
    found, problems = layout.read(names, plan.num_layers)
    _refuse([f"base_model: {plan.host} {line}" for line in problems])
    return from_checkpoint(arch, found, config)


def guard_config(config_module) -> None:
    """Check layer_swap configs where the stock `mergekit-yaml` parses the loaded YAML
    (`MergeConfiguration.model_validate`), so a malformed shape (`models: [./A, ./B]`, a
    `model:` without a path, non-string keys) or a field mergekit's schema refuses
    (`chat_template: [1]`) is one line per problem."""

    def make(original):
        @functools.wraps(original)
        def model_validate(cls, obj, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("merge_method") == validate.METHOD:
                _refuse(validate.check(obj) or mergekit_schema.refused(obj))
            return original.__func__(cls, obj, *args, **kwargs)

        return classmethod(model_validate)

    _wrap(config_module.MergeConfiguration, "model_validate", make)


def guard_planner(plan_module) -> None:
    """Check, compile and stream every layer_swap config in mergekit's planner.

    mergekit silently ignores unknown parameter names and checks nothing across donors;
    `MergePlanner.normalize_config` is the first call that sees the whole configuration, so
    the check runs there, before any tensor is read, and a valid `models:` config is then
    compiled into minimal-read slices over the host checkpoint's own tensors
    (`_host_architecture`). `MergePlanner.plan_to_disk` then swaps mergekit's
    per-tensor save tasks for one StreamSwap task where `stream_rows` allows.
    """

    def make_normalize(original):
        @functools.wraps(original)
        def normalize_config(self):
            if self.config.merge_method == validate.METHOD:
                plan, problems = validate.review(_raw_config(self.config))
                _refuse(problems)
                self._layerswap = plan, compile_config(self.config, plan)
                host = self._layerswap[1][plan.host]
                self.arch_info = _host_architecture(
                    self.arch_info, plan, host, self.out_model_config
                )
            return original(self)

        return normalize_config

    def make_plan_to_disk(original):
        @functools.wraps(original)
        def plan_to_disk(self, out_path: str) -> list:
            from mergekit_layerswap.stream_swap import StreamSwap, stream_rows

            tasks = original(self, out_path)
            rows = stream_rows(self, tasks)
            if rows is None:
                return tasks
            options = self.options
            return [
                StreamSwap(
                    out_path=out_path,
                    tensors=rows,
                    max_shard_size=options.out_shard_size,
                    quiet=options.quiet,
                )
            ]

        return plan_to_disk

    _wrap(plan_module.MergePlanner, "normalize_config", make_normalize)
    _wrap(plan_module.MergePlanner, "plan_to_disk", make_plan_to_disk)


def guard_card(merge_module) -> None:
    """Give layer_swap outputs our model card (layer map, sources, citation) instead of
    mergekit's generic one; `run_merge` calls `mergekit.merge.generate_card` with the last
    part of its output path as the model's name, so `run_merge` gets that path made
    absolute (`OUT/` and `.` would name no model); and, called without `config_source` (from
    Python), the layer_swap config as given, before the planner compiles it into slices (the
    card and `mergekit_config.yml` describe the `models:` form)."""

    def make_run_merge(original):
        @functools.wraps(original)
        def run_merge(merge_config, out_path, options, config_source=None):
            if not config_source and merge_config.merge_method == validate.METHOD:
                config_source = merge_config.to_yaml()
            return original(merge_config, os.path.abspath(out_path), options, config_source)

        return run_merge

    def make_generate_card(original):
        @functools.wraps(original)
        def generate_card(config, config_yaml, name, *args, **kwargs):
            if config.merge_method != validate.METHOD:
                return original(config, config_yaml, name, *args, **kwargs)
            from mergekit_layerswap import card

            raw = yaml.safe_load(config_yaml)
            layers = checkpoint.model_info(validate.reference(raw["base_model"])).num_layers
            return card.render(raw, config_yaml, name=name, num_layers=layers)

        return generate_card

    _wrap(merge_module, "generate_card", make_generate_card)
    _wrap(merge_module, "run_merge", make_run_merge)


def quiet_dtype(merge_module) -> None:
    """mergekit sets the output config's dtype as `config.torch_dtype = ...`, which
    transformers 5 answers with "`torch_dtype` is deprecated" on every merge: mergekit's
    `_model_out_config` gets the merge config without its dtypes, and the dtype it would have
    set (`out_dtype`, else `dtype`) is set as `dtype` (the config.json written is the same)."""

    def make_model_out_config(original):
        @functools.wraps(original)
        def model_out_config(config, *args, **kwargs):
            dtype = config.out_dtype or config.dtype
            undated = config.model_copy(update={"out_dtype": None, "dtype": None})
            out = original(undated, *args, **kwargs)
            if dtype:
                out.dtype = dtype
            return out

        return model_out_config

    _wrap(merge_module, "_model_out_config", make_model_out_config)
