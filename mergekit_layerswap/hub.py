"""Publish a merged model to the Hugging Face Hub, only when the folder is a complete model.

`check_complete` names every missing or broken piece (`complete.problems`: config, JSON
files that do not parse, weights and their index, tokenizer; and the card) and the repo id
is checked with huggingface_hub's own validation, before anything is uploaded or listed. The token
comes from huggingface_hub's usual places (HF_TOKEN, `hf auth login`) and is never printed
or written anywhere by this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergekit_layerswap import complete
from mergekit_layerswap.errors import InputError, RunError, first_line

#: Seconds any request of an upload waits to connect or for the next bytes of an answer.
TIMEOUT = 60.0


def check_complete(model_dir: str | Path) -> list[str]:
    """Every reason the folder is not a complete, publishable model (empty if it is)."""
    folder = Path(model_dir)
    problems = complete.problems(folder)
    if folder.is_dir() and not (folder / "README.md").is_file():
        problems.append("README.md (the model card) is missing: mergekit-layerswap card DIR")
    return problems


def repo_id_problem(repo_id: str) -> str | None:
    """Why `repo_id` is not a NAMESPACE/NAME the Hub accepts (its own validation)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        return f"--repo-id {repo_id!r}: {str(error).splitlines()[0]}"
    if "/" not in repo_id:
        return f"--repo-id {repo_id!r}: write NAMESPACE/NAME (your user or organization name)"
    return None


def human_size(size: float) -> str:
    """Bytes as B, KB, MB or GB (powers of 1000); whole bytes below 1 KB, so that a file
    that is not empty never reads 0."""
    units = ("B", "KB", "MB", "GB")
    power = 0
    while size >= 1000 and power < len(units) - 1:
        size, power = size / 1000, power + 1
    return f"{size:.0f} B" if power == 0 else f"{size:.1f} {units[power]}"


@dataclass(frozen=True)
class Upload:
    repo_id: str
    files: list[tuple[str, int]]  # (path in the repo, bytes)
    url: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def push(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    endpoint: str | None = None,
    timeout: float = TIMEOUT,
) -> Upload:
    """Create the repo if needed and upload the folder (or, with dry_run, only list it).
    Each request waits at most `timeout` seconds (connecting, or for the next bytes of an
    answer); an endpoint that does not answer, or answers what is not the Hub's JSON (an
    HTML page), is a RunError."""
    folder = Path(model_dir)
    problems = check_complete(folder)
    found = [f"{folder} is not a complete model: " + "; ".join(problems)] if problems else []
    found += filter(None, [repo_id_problem(repo_id)])
    if found:
        raise InputError("; ".join(found))
    files = sorted(
        (str(p.relative_to(folder)), p.stat().st_size)
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if dry_run:
        return Upload(repo_id, files)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError
    from huggingface_hub.utils import get_session

    api = HfApi(endpoint=endpoint)
    session = get_session()  # huggingface_hub's shared client waits forever by default
    unbounded, session.timeout = session.timeout, timeout
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            revision=revision,
            commit_message="Upload layer-swap merge (mergekit-layerswap)",
            ignore_patterns=[".*", "*/.*"],
        )
    except (OSError, HTTPError, ValueError) as error:  # network, timeouts, token, refusals
        reason = first_line(error)
        if isinstance(error, ValueError):  # JSONDecodeError: a proxy's or a server's page
            reason = f"its answer is not the Hub's JSON: {reason}; is HF_ENDPOINT the Hub?"
        raise RunError(
            f"could not upload to {api.endpoint} ({type(error).__name__}: {reason}); "
            "check the network, HF_HUB_OFFLINE and your token (hf auth login)"
        ) from None
    finally:
        session.timeout = unbounded
    return Upload(repo_id, files, url=getattr(commit, "commit_url", None) or str(commit))
