"""`mergekit-layerswap`: one argparse command line over the package's rooms.

Every subcommand is a pair: `_add_NAME` adds its parser (setting `handler`), `_NAME` runs it,
importing what it needs inside, so `--help` and `validate` never import torch. Handlers let
bad input (`InputError`) propagate: `main` prints it and exits 2, under the name of the file
it is about when the parser's `input_file` default names the argument that holds one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mergekit_layerswap.errors import InputError, RunError, first_line
from mergekit_layerswap.flags import add_flags, given
from mergekit_layerswap.options import LazyParser, add_merge_options, merge_options
from mergekit_layerswap.threads import chosen_threads, threads_problems, torch_threads

if TYPE_CHECKING:
    from mergekit_layerswap.evaluate import EvalSettings

Subparsers = argparse._SubParsersAction


def build_parser() -> argparse.ArgumentParser:
    parser = LazyParser(
        prog="mergekit-layerswap",
        description="Layer swapping for mergekit, scored on MGSM with lm-evaluation-harness.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the traceback when a run fails"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_merge,
        _add_validate,
        _add_eval,
        _add_suite,
        _add_analyze,
        _add_lab,
        _add_card,
        _add_push,
    ):
        add(sub)
    return parser


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="change the YAML before it is checked, e.g. models.lang=org/expert, "
        "evaluation.languages=[te,en], merges.0.dtype=float16 (each value is YAML)",
    )


def _add_merge(sub: Subparsers) -> None:
    merge = sub.add_parser(
        "merge",
        help="run a mergekit config (layer_swap or any) atomically, with mergekit-yaml's options",
    )
    merge.add_argument("config", help="mergekit YAML config")
    merge.add_argument("out", help="output folder (must not already hold a model)")
    _add_overrides(merge)
    merge.later = add_merge_options  # they import torch: only once `merge` is parsed
    merge.set_defaults(handler=_merge, input_file="config")


def _merge(args: argparse.Namespace) -> int:
    from mergekit_layerswap import merge, validate

    options = merge_options(args)
    options.apply_global_options()  # logging level, threads, seed: as mergekit-yaml does
    out = merge.run(validate.load(args.config, args.overrides), args.out, options)
    print(f"merged into {out}")
    return 0


def _add_validate(sub: Subparsers) -> None:
    check = sub.add_parser("validate", help="report every problem of a layer_swap config")
    check.add_argument("config", help="mergekit YAML config with merge_method: layer_swap")
    _add_overrides(check)
    check.set_defaults(handler=_validate, input_file="config")


def _validate(args: argparse.Namespace) -> int:
    from mergekit_layerswap import layer_map, validate

    plan = validate.checked(validate.load(args.config, args.overrides))
    donors = [claim.donor for claim in plan.swap.claims]
    symbols = {plan.host: "H"} | {
        donor: "D" if len(donors) == 1 else f"D{i}" for i, donor in enumerate(donors, 1)
    }
    print(f"{args.config}: OK ({plan.num_layers} layers)")
    print("\n".join(f"{symbol} = {source}" for source, symbol in symbols.items()))
    print("\n".join(layer_map.text_map(plan.swap, plan.num_layers, symbols)))
    print("".join(f"note: {note}\n" for note in plan.notes), end="")
    return 0


def _add_eval(sub: Subparsers) -> None:
    ev = sub.add_parser(
        "eval", help="score models on MGSM (lm-eval's own mgsm_* tasks) or any lm-eval tasks"
    )
    ev.add_argument("models", nargs="+", metavar="MODEL", help="local model folder or Hub id")
    ev.add_argument("--output", required=True, metavar="OUT_DIR", help="results folder")
    ev.add_argument("--cache-dir", help="result cache (default: OUT_DIR/cache)")
    ev.later = _eval_flags  # EvalSettings' package imports torch: only once `eval` is parsed
    ev.set_defaults(handler=_eval)


def _eval_flags(ev: argparse.ArgumentParser) -> None:
    """One flag per EvalSettings field (`flags.add_flags`); MGSM languages or tasks."""
    from mergekit_layerswap.evaluate.settings import EvalSettings

    what = ev.add_mutually_exclusive_group(required=True)
    add_flags(what, EvalSettings, _WHAT)
    add_flags(ev, EvalSettings, [name for name in EvalSettings.model_fields if name not in _WHAT])


def _eval_settings(args: argparse.Namespace) -> EvalSettings:
    """The EvalSettings of `eval`'s options: those given, EvalSettings' defaults for the rest."""
    from mergekit_layerswap.evaluate import EvalSettings

    if args.tasks and args.data_dir:
        raise InputError("--data-dir is MGSM's: with --tasks, the task YAMLs say where data is")
    if args.batch_size and args.batch_size.isdigit():
        args.batch_size = int(args.batch_size)
    return EvalSettings.checked(as_flags=True, **given(args, EvalSettings))


def _eval(args: argparse.Namespace) -> int:
    from mergekit_layerswap import evaluate

    settings = _eval_settings(args)
    results = evaluate.evaluate_models(args.models, settings, args.output, cache_dir=args.cache_dir)
    print(evaluate.render_markdown(results))
    print(f"wrote {Path(args.output) / 'results.json'} and results.md")
    return 0


def _add_suite(sub: Subparsers) -> None:
    suite = sub.add_parser(
        "suite", help="merge every variant and baseline of a suite YAML, score all on MGSM, rank"
    )
    suite.add_argument("suite", help="suite YAML (see recipes/)")
    suite.add_argument("out", metavar="OUT_DIR", help="merges, results and leaderboard go here")
    _add_overrides(suite)
    suite.add_argument("--limit", type=int, help="only the first N problems per language")
    suite.add_argument("--only", nargs="+", metavar="NAME", help="run only these entries")
    suite.add_argument("--data-dir", help="local MGSM copy (default: $MGSM_DATA_DIR, else Hub)")
    suite.add_argument("--dry-run", action="store_true", help="print the plan, touch no weights")
    suite.add_argument("--force", action="store_true", help="redo finished merges and scores")
    suite.add_argument("--cuda", action="store_true", help="merge on the GPU")
    suite.add_argument("--executor", choices=["local", "ray"], help="default: the suite's or local")
    suite.add_argument("--address", help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT")
    suite.set_defaults(handler=_suite, input_file="suite")


def _suite(args: argparse.Namespace) -> int:
    from mergekit_layerswap.suite.runner import run_suite
    from mergekit_layerswap.suite.schema import load_suite

    run_suite(
        load_suite(args.suite, args.overrides),
        args.out,
        only=args.only,
        limit=args.limit,
        data_dir=args.data_dir,
        dry_run=args.dry_run,
        force=args.force,
        cuda=args.cuda,
        executor=args.executor,
        address=args.address,
    )
    return 0


#: The flags that say what `eval` scores: MGSM's languages or lm-eval tasks (one of them).
_WHAT = ("languages", "tasks")
#: LabSettings' fields that `lab` takes as flags (the rest are the lab's design).
LAB_FLAGS = ("seeds", "language", "device", "size", "tokenizer", "experts", "n_test")


def _add_lab(sub: Subparsers) -> None:
    lab = sub.add_parser(
        "lab",
        help="layer swapping in miniature: tiny base + experts trained here, merged, "
        "scored over seeds, with a verdict (CPU minutes)",
    )
    lab.add_argument("out", metavar="OUT_DIR", help="models, suites, lab.json/md/png go here")
    lab.later = _lab_flags  # pydantic: only once `lab` is parsed (`--help` stays light)
    demo = sub.add_parser(
        "demo", help="the lab's smallest form: one seed, tiny (about 6.5 min on 2 cores)"
    )
    demo.add_argument("out", metavar="OUT_DIR", help="models, suite and lab.md go here")
    demo.set_defaults(seeds=1)
    for parser in (lab, demo):
        _add_threads(parser, "the tiny models")
        parser.set_defaults(handler=_lab)


def _add_threads(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        help=f"torch threads (default: $OMP_NUM_THREADS when set, else 1: {what} gain little "
        "from more and slow down sharply on a busy machine)",
    )


def _lab_flags(lab: argparse.ArgumentParser) -> None:
    """One flag per LabSettings field in LAB_FLAGS (`flags.add_flags`)."""
    from mergekit_layerswap.lab.settings import LabSettings

    add_flags(lab, LabSettings, LAB_FLAGS)


def _lab(args: argparse.Namespace) -> int:
    from mergekit_layerswap.lab.preflight import check_lab
    from mergekit_layerswap.lab.run import run_lab
    from mergekit_layerswap.lab.settings import LabSettings

    settings = check_lab(args.out, args.threads, **given(args, LabSettings))
    run_lab(args.out, settings, threads=chosen_threads(args.threads))
    return 0


def _add_card(sub: Subparsers) -> None:
    card = sub.add_parser("card", help="write or refresh the model card of a layer_swap merge")
    card.add_argument("model", metavar="MODEL_DIR", help="a merged model folder")
    card.add_argument("--results", help="results.json (or its folder) from `eval` to include")
    card.set_defaults(handler=_card)


def _card(args: argparse.Namespace) -> int:
    from mergekit_layerswap import card
    from mergekit_layerswap.evaluate import read_results

    results = read_results(args.results) if args.results else None
    path = card.write_card(args.model, results)
    print(f"wrote {path}")
    return 0


def _add_push(sub: Subparsers) -> None:
    push = sub.add_parser("push", help="upload a complete merged model to the Hugging Face Hub")
    push.add_argument("model", metavar="MODEL_DIR", help="a merged model folder")
    push.add_argument("--repo-id", required=True, help="NAMESPACE/NAME on the Hub")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--revision", help="branch to upload to (created if missing)")
    push.add_argument("--dry-run", action="store_true", help="list what would be uploaded")
    push.set_defaults(handler=_push)


def _push(args: argparse.Namespace) -> int:
    from mergekit_layerswap import hub

    upload = hub.push(
        args.model,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        dry_run=args.dry_run,
    )
    for path, size in upload.files:
        print(f"  {hub.human_size(size):>8}  {path}")
    total = f"{len(upload.files)} files, {hub.human_size(upload.total_bytes)}"
    if args.dry_run:
        print(f"dry run: would upload {total} to {upload.repo_id}")
    else:
        print(f"uploaded {total} to {upload.repo_id}: {upload.url}")
    return 0


def _add_analyze(sub: Subparsers) -> None:
    an = sub.add_parser(
        "analyze", help="where did each expert change? per-layer figures, plots, a suggested swap"
    )
    an.add_argument("--base", required=True, metavar="MODEL", help="the experts' shared base")
    an.add_argument(
        "--expert",
        action="append",
        required=True,
        dest="experts",
        metavar="NAME=MODEL",
        help="a fine-tune of the base (local folder or Hub id); repeat for every expert",
    )
    an.add_argument("--output", required=True, metavar="OUT_DIR", help="results folder")
    an.add_argument("--host", metavar="NAME", help="expert that keeps its middle layers")
    an.add_argument("--donor", metavar="NAME", help="expert whose outer layers are swapped in")
    an.add_argument(
        "--ratio",
        type=float,
        default=1.0,
        help="a layer is the donor's when its change exceeds RATIO x the host's (default 1)",
    )
    an.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threads(an, "its small tensor pieces")
    an.set_defaults(handler=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from mergekit_layerswap import analysis

    if problems := threads_problems(args.threads):
        raise InputError(problems)
    with torch_threads(chosen_threads(args.threads)):
        result = analysis.analyze(
            args.base,
            [analysis.parse_expert(spec) for spec in args.experts],
            args.output,
            host=args.host,
            donor=args.donor,
            ratio=args.ratio,
            progress=not args.quiet,
        )
    for path in result.files:
        print(f"wrote {path}")
    if result.suggestion is not None:
        print(f"suggestion: {result.suggestion.describe()}")
    return 0


def _problems(error: InputError, file: str | None) -> str:
    """An InputError as printed, one problem a line: about a file, after `FILE: ` (one) or
    under `FILE is invalid:` (several), a problem that starts with `FILE: ` not naming it twice."""
    if file is None:
        return "\n  ".join(error.problems)
    lines = [problem.removeprefix(f"{file}: ") for problem in error.problems]
    if len(lines) == 1:
        return f"{file}: {lines[0]}"
    return f"{file} is invalid:\n  " + "\n  ".join(lines)


def _is_fault(error: Exception) -> bool:
    """A failure of the environment, not of our code: file system or network (OSError, which
    includes huggingface_hub's and requests' errors, or an httpx error)."""
    http = tuple(sys.modules[name].HTTPError for name in ("httpx", "httpx2") if name in sys.modules)
    return isinstance(error, (OSError, *http))


def _fault(error: Exception) -> str:
    """One line: the file(s) an OSError names and why, or the error's first line."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        files = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
        return f"{files}: {error.strerror}"
    return first_line(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command: 0 done, 2 bad input (one line per problem), 1 a run that failed (one
    line naming what failed; `-v` shows the traceback instead), 130 interrupted (Ctrl-C)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and ("overrides" not in args or any(arg.startswith("-") for arg in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # KEY=VALUE after an option: argparse leaves them over
        args.overrides += extra
    prefix = f"mergekit-layerswap {args.command}"
    try:
        return args.handler(args) or 0
    except InputError as error:
        file = getattr(args, args.input_file) if "input_file" in args else None
        print(f"{prefix}: error: {_problems(error, file)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.verbose:
            raise
        if isinstance(error, RunError):
            print(f"{prefix}: error: {error}", file=sys.stderr)
        elif _is_fault(error):
            print(f"{prefix}: failed: {_fault(error)} (-v shows the traceback)", file=sys.stderr)
        else:
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
