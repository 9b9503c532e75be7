"""`mergekit-layerswap`: one argparse command line over the package's rooms.

Each subcommand imports what it needs inside its handler, so `--help` and `validate`
never import torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mergekit_layerswap.errors import InputError


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergekit-layerswap",
        description="Layer swapping for mergekit, scored on MGSM with lm-evaluation-harness.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the traceback when a run fails"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    merge = sub.add_parser("merge", help="run a mergekit config (layer_swap or any) atomically")
    merge.add_argument("config", help="mergekit YAML config")
    merge.add_argument("out", help="output folder (must not already hold a model)")
    merge.add_argument("--cuda", action="store_true", help="do the arithmetic on the GPU")
    merge.add_argument(
        "--no-copy-tokenizer", dest="copy_tokenizer", action="store_false",
        help="do not copy the host's tokenizer",
    )  # fmt: skip
    merge.add_argument("--random-seed", type=int, help="seed for randomized methods (DARE)")
    merge.add_argument("--quiet", action="store_true", help="no progress bars")
    merge.set_defaults(handler=_merge)

    check = sub.add_parser("validate", help="report every problem of a layer_swap config")
    check.add_argument("config", help="mergekit YAML config with merge_method: layer_swap")
    check.set_defaults(handler=_validate)
    # --- subcommands: each adds its parser here and sets `handler` ---
    _add_eval(sub)
    _add_suite(sub)
    _add_analyze(sub)
    _add_lab(sub)

    card = sub.add_parser("card", help="write or refresh the model card of a layer_swap merge")
    card.add_argument("model", metavar="MODEL_DIR", help="a merged model folder")
    card.add_argument("--results", help="results.json (or its folder) from `eval` to include")
    card.set_defaults(handler=_card)

    push = sub.add_parser("push", help="upload a complete merged model to the Hugging Face Hub")
    push.add_argument("model", metavar="MODEL_DIR", help="a merged model folder")
    push.add_argument("--repo-id", required=True, help="NAMESPACE/NAME on the Hub")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--revision", help="branch to upload to (created if missing)")
    push.add_argument("--dry-run", action="store_true", help="list what would be uploaded")
    push.set_defaults(handler=_push)
    return parser


def _problems(path: str, error: Exception) -> UsageError:
    lines = getattr(error, "problems", None) or [str(error)]
    return UsageError(
        f"{path}: " + "\n  ".join(lines)
        if len(lines) == 1
        else f"{path} is invalid:\n  " + "\n  ".join(lines)
    )


def _validate(args: argparse.Namespace) -> int:
    from mergekit_layerswap import plan as slices
    from mergekit_layerswap import validate

    try:
        plan = validate.plan(validate.load(args.config))
    except InputError as error:
        raise _problems(args.config, error) from None
    donors = [claim.donor for claim in plan.swap.claims]
    symbols = {plan.host: "H"} | {
        donor: "D" if len(donors) == 1 else f"D{i}" for i, donor in enumerate(donors, 1)
    }
    print(f"{args.config}: OK ({plan.num_layers} layers)")
    print("\n".join(f"{symbol} = {source}" for source, symbol in symbols.items()))
    print("\n".join(slices.text_map(plan.swap, plan.num_layers, symbols)))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from mergekit_layerswap import merge, validate

    try:
        out = merge.run(
            validate.load(args.config), args.out, cuda=args.cuda,
            copy_tokenizer=args.copy_tokenizer, quiet=args.quiet, random_seed=args.random_seed,
        )  # fmt: skip
    except InputError as error:
        raise _problems(args.config, error) from None
    except merge.MergeError as error:
        print(f"mergekit-layerswap merge: error: {error}", file=sys.stderr)
        return 1
    print(f"merged into {out}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval", help="score models on MGSM (lm-eval's own mgsm_* tasks) or any lm-eval tasks"
    )
    ev.add_argument("models", nargs="+", metavar="MODEL", help="local model folder or Hub id")
    what = ev.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--languages", help='MGSM: comma-separated codes, e.g. "sw,te,bn,ja,en", or "all"'
    )
    what.add_argument("--tasks", help="instead of MGSM: comma-separated lm-eval tasks or groups")
    ev.add_argument(
        "--include-path", metavar="DIR", help="folder of lm-eval task YAMLs (with --tasks)"
    )
    ev.add_argument("--mode", default="native_cot", help="native_cot (default), direct or en_cot")
    ev.add_argument(
        "--num-fewshot", type=int,
        help="exemplars (MGSM: 0-8, default 0; tasks: default each task's own)",
    )  # fmt: skip
    ev.add_argument("--limit", type=int, help="only the first N problems per language")
    ev.add_argument("--batch-size", help="N or auto (default: 64 for hf, auto for vllm)")
    ev.add_argument("--max-gen-toks", type=int, default=256, help="default 256 (lm-eval's)")
    ev.add_argument("--backend", default="hf", help="hf (default) or vllm")
    ev.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    ev.add_argument(
        "--data-dir", help="local copy laid out like juletxara/mgsm (default: $MGSM_DATA_DIR, "
        "else the Hub)"
    )  # fmt: skip
    ev.add_argument("--output", required=True, metavar="OUT_DIR", help="results folder")
    ev.add_argument("--cache-dir", help="result cache (default: OUT_DIR/cache)")
    ev.add_argument("--log-samples", action="store_true", help="also write per-sample generations")
    ev.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from mergekit_layerswap import evaluate

    batch_size = args.batch_size
    if args.tasks and args.data_dir:
        raise UsageError("--data-dir is MGSM's: with --tasks, the task YAMLs say where data is")
    try:
        settings = evaluate.EvalSettings(
            languages=args.languages, tasks=args.tasks or (), include_path=args.include_path,
            mode=args.mode, num_fewshot=args.num_fewshot,
            limit=args.limit, max_gen_toks=args.max_gen_toks, backend=args.backend,
            batch_size=int(batch_size) if batch_size and batch_size.isdigit() else batch_size,
            device=args.device, log_samples=args.log_samples,
            **({"data_dir": args.data_dir} if args.data_dir else {}),
        )  # fmt: skip
        results = evaluate.evaluate_models(
            args.models, settings, args.output, cache_dir=args.cache_dir
        )
    except InputError as error:
        raise UsageError("\n  ".join(error.problems)) from None
    print(evaluate.render_markdown(results))
    print(f"wrote {args.output}/results.json and results.md")
    return 0


def _add_suite(sub: argparse._SubParsersAction) -> None:
    suite = sub.add_parser(
        "suite", help="merge every variant and baseline of a suite YAML, score all on MGSM, rank"
    )
    suite.add_argument("suite", help="suite YAML (see recipes/)")
    suite.add_argument("out", metavar="OUT_DIR", help="merges, results and leaderboard go here")
    suite.add_argument("--limit", type=int, help="only the first N problems per language")
    suite.add_argument("--only", nargs="+", metavar="NAME", help="run only these entries")
    suite.add_argument("--data-dir", help="local MGSM copy (default: $MGSM_DATA_DIR, else Hub)")
    suite.add_argument("--dry-run", action="store_true", help="print the plan, touch no weights")
    suite.add_argument("--force", action="store_true", help="redo finished merges and scores")
    suite.add_argument("--cuda", action="store_true", help="merge on the GPU")
    suite.set_defaults(handler=_suite)


def _suite(args: argparse.Namespace) -> int:
    from mergekit_layerswap.errors import InputError
    from mergekit_layerswap.suite.runner import run_suite
    from mergekit_layerswap.suite.schema import load_suite

    try:
        suite = load_suite(args.suite)
        run_suite(
            suite, args.out, only=args.only, limit=args.limit, data_dir=args.data_dir,
            dry_run=args.dry_run, force=args.force, cuda=args.cuda,
        )  # fmt: skip
    except InputError as error:
        raise _problems(args.suite, error) from None
    return 0


def _add_lab(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser(
        "lab", help="layer swapping in miniature: tiny base + experts trained here, merged, "
        "scored over seeds, with a verdict (CPU minutes)",
    )  # fmt: skip
    lab.add_argument("out", metavar="OUT_DIR", help="models, suites, lab.json/md/png go here")
    lab.add_argument("--seeds", type=int, default=3, help="pipelines to run (default 3)")
    lab.add_argument("--language", default="sw", choices=["sw"], help="target language")
    lab.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    lab.add_argument("--size", default="tiny", choices=["tiny", "small"], help="default tiny")
    lab.set_defaults(handler=_lab)
    demo = sub.add_parser("demo", help="the lab's smallest form: one seed, tiny (about 3 min)")
    demo.add_argument("out", metavar="OUT_DIR", help="models, suite and lab.md go here")
    demo.set_defaults(handler=_lab, seeds=1, language="sw", device="cpu", size="tiny")


def _lab(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from mergekit_layerswap.errors import InputError
    from mergekit_layerswap.evaluate.run import check_writable
    from mergekit_layerswap.lab.run import LabSettings, run_lab

    try:
        settings = LabSettings(
            seeds=args.seeds, language=args.language, device=args.device, size=args.size
        )
        check_writable(Path(args.out), "output")
    except ValidationError as error:
        problems = [f"--{item['loc'][0]}: {item['msg']}" for item in error.errors()]
        raise UsageError("; ".join(problems)) from None
    except InputError as error:
        raise UsageError(str(error)) from None
    run_lab(args.out, settings)
    return 0


def _card(args: argparse.Namespace) -> int:
    from mergekit_layerswap import card
    from mergekit_layerswap.evaluate import read_results

    try:
        results = read_results(args.results) if args.results else None
        path = card.write_card(args.model, results)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    print(f"wrote {path}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from mergekit_layerswap import hub

    try:
        upload = hub.push(
            args.model, args.repo_id, private=args.private, revision=args.revision,
            dry_run=args.dry_run,
        )  # fmt: skip
    except InputError as error:
        raise UsageError(str(error)) from None
    except hub.UploadError as error:
        print(f"mergekit-layerswap push: error: {error}", file=sys.stderr)
        return 1
    for path, size in upload.files:
        print(f"  {size / 1e6:10.1f} MB  {path}")
    total = f"{len(upload.files)} files, {upload.total_bytes / 1e9:.2f} GB"
    if args.dry_run:
        print(f"dry run: would upload {total} to {upload.repo_id}")
    else:
        print(f"uploaded {total} to {upload.repo_id}: {upload.url}")
    return 0


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    an = sub.add_parser(
        "analyze", help="where did each expert change? per-layer figures, plots, a suggested swap"
    )
    an.add_argument("--base", required=True, metavar="MODEL", help="the experts' shared base")
    an.add_argument(
        "--expert", action="append", required=True, dest="experts", metavar="NAME=MODEL",
        help="a fine-tune of the base (local folder or Hub id); repeat for every expert",
    )  # fmt: skip
    an.add_argument("--output", required=True, metavar="OUT_DIR", help="results folder")
    an.add_argument("--host", metavar="NAME", help="expert that keeps its middle layers")
    an.add_argument("--donor", metavar="NAME", help="expert whose outer layers are swapped in")
    an.add_argument(
        "--ratio", type=float, default=1.0,
        help="a layer is the donor's when its change exceeds RATIO x the host's (default 1)",
    )  # fmt: skip
    an.add_argument("--quiet", action="store_true", help="no progress bar")
    an.set_defaults(handler=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from mergekit_layerswap import analysis

    try:
        result = analysis.analyze(
            args.base, [analysis.parse_expert(spec) for spec in args.experts], args.output,
            host=args.host, donor=args.donor, ratio=args.ratio, progress=not args.quiet,
        )  # fmt: skip
    except InputError as error:
        raise UsageError(str(error)) from None
    for path in result.files:
        print(f"wrote {path}")
    if result.suggestion is not None:
        print(f"suggestion: {result.suggestion.describe()}")
    return 0


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
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command: 0 done, 2 bad input (one line per problem), 1 a run that failed (one
    line naming what failed; `-v` shows the traceback instead)."""
    args = build_parser().parse_args(argv)
    prefix = f"mergekit-layerswap {args.command}"
    try:
        return args.handler(args) or 0
    except UsageError as error:
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if args.verbose or not _is_fault(error):
            raise
        print(f"{prefix}: failed: {_fault(error)} (-v shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
