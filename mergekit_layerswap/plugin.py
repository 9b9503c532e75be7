"""How mergekit-layerswap plugs into mergekit 0.1.5, which has no plugin hooks: all of it.

`install()` registers `layer_swap` with mergekit's public `register` and wraps five mergekit
functions, each wrapper below beside a line on what it replaces and why:
- `MergeConfiguration.model_validate` (`_checked_config`): the stock `mergekit-yaml` checks a
  layer_swap config once, before any tensor is read (every problem one line, exit 2), and
  hands the checked swap to the planner;
- `MergePlanner.plan_to_disk` (`_streamed_plan`): plans the host checkpoint's own tensors
  (`checkpoint_arch`) and writes the swap as one streamed task (`stream_swap`) where it can;
- `mergekit.merge.run_merge` (`_named_output`): an absolute output path, so that the card
  names the folder (`OUT/` and `.` name none); from Python, the config as given;
- `mergekit.merge.generate_card` (`_our_card`): our model card for layer_swap (`card`);
- `mergekit.merge._model_out_config` (`_quiet_dtype`): the output dtype set without
  transformers' "`torch_dtype` is deprecated" warning.
A target that has moved or changed (another mergekit) is left alone with one warning: the
stock CLI then merges layer_swap exactly through mergekit's own executor and `method`'s kernel
(reading every model for every tensor, with mergekit's card). Nothing raises from here into
an import of mergekit. The `.pth` hook (`_hook`) calls `install()` for the stock CLI; `merge`,
`suite` and Python callers call it themselves.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import warnings
from collections.abc import Callable
from contextvars import ContextVar
from importlib.metadata import version

import yaml

from mergekit_layerswap import card, checkpoint, layout, method, stream_swap, validate
from mergekit_layerswap.checkpoint_arch import from_checkpoint
from mergekit_layerswap.errors import InputError
from mergekit_layerswap.swap import METHOD

#: The mergekit these patches are written against (pyproject.toml pins it).
MERGEKIT_VERSION = "0.1.5"

#: The last layer_swap config checked in this context and its checked swap: the one check of
#: a merge, handed from where the config is read to where it is planned.
_checked: ContextVar[tuple[object, validate.CheckedSwap] | None] = ContextVar(
    "layerswap_checked", default=None
)


def _skip(target: str, why: str) -> None:
    warnings.warn(
        f"mergekit-layerswap: {target} {why} in mergekit {version('mergekit')}; left as it is "
        f"(layer_swap still merges, exactly, without this patch): install "
        f"mergekit=={MERGEKIT_VERSION} for streamed writes and our model card",
        RuntimeWarning,
        stacklevel=3,
    )


def _wrap(owner: object, name: str, parameters: tuple[str, ...], make: Callable) -> None:
    """Replace `owner.name` by `make(original)` once, if its leading parameters are still
    `parameters`; otherwise warn and leave it."""
    target = f"{getattr(owner, '__name__', owner)}.{name}"
    original = getattr(owner, name, None)
    if original is None:
        return _skip(target, "is missing")
    if getattr(original, "layerswap", False):
        return None
    try:
        found = tuple(inspect.signature(original).parameters)[: len(parameters)]
    except (TypeError, ValueError):
        found = ()
    if found != parameters:
        return _skip(target, f"takes {found}, not {parameters}")
    wrapped = make(original)
    getattr(wrapped, "__func__", wrapped).layerswap = True  # a classmethod: its function
    setattr(owner, name, wrapped)
    return None


def _exit_on_input_error(hook):
    """An uncaught InputError (from the stock mergekit-yaml) prints its lines, not a
    traceback, and exits 2; every other exception keeps the previous hook."""

    def excepthook(kind, error, traceback):
        if isinstance(error, InputError):
            for line in error.problems:
                print(f"layer_swap config error: {line}", file=sys.stderr)
            sys.exit(2)
        hook(kind, error, traceback)

    excepthook.layerswap = True
    return excepthook


def _check(raw: dict) -> validate.CheckedSwap:
    """The merge's one check (`validate.merge_check`); InputError listing every problem,
    which the stock CLI prints as lines (exit 2): the hook is set only then."""
    checked, problems = validate.merge_check(raw)
    if problems:
        if not getattr(sys.excepthook, "layerswap", False):
            sys.excepthook = _exit_on_input_error(sys.excepthook)
        raise InputError(problems)
    return checked


def _raw_config(config) -> dict:
    """What `validate` reads of a MergeConfiguration that was built without model_validate,
    model references as their strings. Not `config.model_dump()`: for a path with a space or
    a quote, mergekit's ModelReference serializer returns the reference itself, which
    pydantic reports as "Circular reference detected"."""
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


def configuration(raw: dict, checked: validate.CheckedSwap):
    """mergekit's MergeConfiguration of `raw`, which `checked` is the check of: the planner
    takes it instead of checking again (`merge.run`)."""
    from mergekit.config import MergeConfiguration

    _checked.set((raw, checked))
    config = MergeConfiguration.model_validate(raw)
    _checked.set((config, checked))
    return config


def _checked_config(config_class) -> None:
    """mergekit ignores unknown parameter names and checks nothing across donors, so a
    layer_swap config is checked where the stock CLI parses the YAML: a malformed shape
    (`models: [./A, ./B]`) or a field mergekit's schema refuses is one line per problem."""

    def make(original):
        @functools.wraps(original)
        def model_validate(cls, obj, *args, **kwargs):
            if not (isinstance(obj, dict) and obj.get("merge_method") == METHOD):
                return original.__func__(cls, obj, *args, **kwargs)
            held = _checked.get()
            checked = held[1] if held and held[0] is obj else _check(obj)
            config = original.__func__(cls, obj, *args, **kwargs)
            _checked.set((config, checked))
            return config

        return classmethod(model_validate)

    _wrap(config_class, "model_validate", ("obj",), make)


def _host_architecture(planner, checked: validate.CheckedSwap, host):
    """The architecture the planner merges: the host's tensors as its checkpoint holds them
    (the check's headers; mergekit's loader for pickled or Hub weights), a tensor no merge
    could place refused (`layout.read`)."""
    from mergekit.io.tasks import LoaderCache

    names = checked.tensors.get(checked.host) or LoaderCache().get(host).index.tensor_paths
    found, problems = layout.read(names, checked.num_layers)
    if problems:
        raise InputError([f"base_model: {checked.host} {line}" for line in problems])
    return from_checkpoint(planner.arch_info, found, planner.out_model_config)


def _streamed_plan(planner_class) -> None:
    """mergekit plans a swap from its architecture's templates, one task per tensor reading
    every model; `plan_to_disk` instead plans the host checkpoint's own tensors and, where
    `stream_swap.stream_rows` allows, returns one StreamSwap task for the whole model."""

    def make(original):
        @functools.wraps(original)
        def plan_to_disk(self, out_path: str) -> list:
            config = self.config
            if config.merge_method != METHOD or not config.models:
                return original(self, out_path)
            held = _checked.get()
            checked = held[1] if held and held[0] is config else _check(_raw_config(config))
            references = {str(m.model): m.model for m in config.models}
            references.setdefault(str(config.base_model), config.base_model)
            self.arch_info = _host_architecture(self, checked, references[checked.host])
            tasks = original(self, out_path)
            rows = stream_swap.stream_rows(checked, references, tasks, self.options, config)
            if rows is None:
                return tasks
            return [
                stream_swap.StreamSwap(
                    out_path=out_path,
                    tensors=rows,
                    max_shard_size=self.options.out_shard_size,
                    quiet=self.options.quiet,
                )
            ]

        return plan_to_disk

    _wrap(planner_class, "plan_to_disk", ("self", "out_path"), make)


def _named_output(merge_module) -> None:
    """`run_merge` names the card's model after the last part of its output path, so the
    path is made absolute; called from Python without `config_source`, the card and
    `mergekit_config.yml` get the layer_swap config as given."""

    def make(original):
        @functools.wraps(original)
        def run_merge(merge_config, out_path, options, config_source=None):
            if not config_source and merge_config.merge_method == METHOD:
                config_source = merge_config.to_yaml()
            return original(merge_config, os.path.abspath(out_path), options, config_source)

        return run_merge

    parameters = ("merge_config", "out_path", "options", "config_source")
    _wrap(merge_module, "run_merge", parameters, make)


def _our_card(merge_module) -> None:
    """A layer_swap output gets our card (layer map, sources, citation), not mergekit's."""

    def make(original):
        @functools.wraps(original)
        def generate_card(config, config_yaml, name, *args, **kwargs):
            if config.merge_method != METHOD:
                return original(config, config_yaml, name, *args, **kwargs)
            raw = yaml.safe_load(config_yaml)
            layers = checkpoint.model_info(validate.reference(raw["base_model"])).num_layers
            return card.render(raw, config_yaml, name=name, num_layers=layers)

        return generate_card

    _wrap(merge_module, "generate_card", ("config", "config_yaml", "name"), make)


def _quiet_dtype(merge_module) -> None:
    """mergekit sets the output config's dtype as `config.torch_dtype = ...`, which
    transformers 5 answers with a deprecation warning on every merge: `_model_out_config`
    gets the merge config without its dtypes, and the dtype it would have set (`out_dtype`,
    else `dtype`) is set as `dtype` (the config.json written is the same)."""

    def make(original):
        @functools.wraps(original)
        def model_out_config(config, *args, **kwargs):
            dtype = config.out_dtype or config.dtype
            undated = config.model_copy(update={"out_dtype": None, "dtype": None})
            out = original(undated, *args, **kwargs)
            if dtype:
                out.dtype = dtype
            return out

        return model_out_config

    _wrap(merge_module, "_model_out_config", ("config",), make)


def _register() -> None:
    """`layer_swap` by name, through mergekit's public registry (once)."""
    from mergekit.merge_methods import register, registered_methods

    if all(known.spec.name != METHOD for known in registered_methods()):
        register(method.layer_swap)


def install() -> None:
    """Register `layer_swap` with mergekit and apply the patches above; idempotent. It never
    raises: a patch that does not fit is left out with a warning (`_wrap`), anything else
    that fails is one warning."""
    try:
        import mergekit.config
        import mergekit.merge
        import mergekit.plan

        _register()
        _checked_config(mergekit.config.MergeConfiguration)
        _streamed_plan(mergekit.plan.MergePlanner)
        for patch in (_named_output, _our_card, _quiet_dtype):
            patch(mergekit.merge)
    except Exception as error:  # never break mergekit for its other users
        warnings.warn(
            f"mergekit-layerswap: not installed into mergekit {version('mergekit')} ({error}); "
            f"it supports mergekit=={MERGEKIT_VERSION}",
            RuntimeWarning,
            stacklevel=2,
        )
