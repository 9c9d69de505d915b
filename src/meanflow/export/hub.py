"""The Hugging Face Hub (the optional `[hub]` extra, `huggingface_hub`): `hf://` exports in, exports out.

    folder = download_export("hf://ORG/NAME@REVISION")   # only the export's files, safetensors weights
    push_folder(folder, "ORG/NAME", private=True)          # create the repo if needed, upload the files

Every failure (extra missing, no credentials, offline, no network, a missing repo) is a one-line
UserError; nothing here unpickles anything.
"""

from __future__ import annotations

import re
from pathlib import Path

from meanflow.errors import UserError
from meanflow.export.layout import FILES, HF_PREFIX

INSTALL_HINT = "pip install 'meanflow[hub]' (huggingface_hub)"
REPO_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


def require_hub(what: str):
    """The `huggingface_hub` module, or a one-line UserError with the install hint."""
    try:
        import huggingface_hub
        import huggingface_hub.constants  # noqa: F401  (not loaded by the package's lazy __init__)
    except ImportError:
        raise UserError(f"{what} needs the Hugging Face Hub client: {INSTALL_HINT}") from None
    return huggingface_hub


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[0].split())
    return text[:300] or type(exc).__name__


def check_repo(repo: str) -> str:
    """`repo` ('NAME' or 'ORG/NAME'), or a UserError."""
    if not isinstance(repo, str) or not REPO_RE.match(repo) or ".." in repo or len(repo) > 96:
        raise UserError(f"--repo {repo!r} is not a Hub repository name (NAME or ORG/NAME: letters, digits, "
                        "'-', '_', '.')")
    return repo


def parse_hub_path(path: str) -> tuple[str, str | None]:
    """'hf://ORG/NAME@REVISION' -> ('ORG/NAME', 'REVISION'); the revision is None when not given."""
    rest = path[len(HF_PREFIX):]
    repo, _, revision = rest.partition("@")
    if not REPO_RE.match(repo) or (_ and not revision):
        raise UserError(f"{path!r} is not an hf:// path: write hf://ORG/NAME or hf://ORG/NAME@REVISION")
    return repo, revision or None


def download_export(path: str) -> Path:
    """The local folder of export `hf://ORG/NAME[@REVISION]`: `snapshot_download` of the export's files
    only (`layout.FILES`), from the local Hub cache when it holds them (and always with
    HF_HUB_OFFLINE=1)."""
    repo, revision = parse_hub_path(path)
    hub = require_hub(f"loading {path}")
    import huggingface_hub.utils.logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # retry warnings would break the one-line error
    try:
        folder = hub.snapshot_download(repo, revision=revision, allow_patterns=list(FILES))
    except Exception as e:  # offline without a cached copy, no network, unknown repo or revision, ...
        offline = " (offline: HF_HUB_OFFLINE is set and the Hub cache has no copy)" \
            if hub.constants.HF_HUB_OFFLINE else ""
        raise UserError(f"cannot download {path}{offline}: {_first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(level)
    return Path(folder)


def require_credentials(hub) -> None:
    """UserError unless a token is configured and the Hub may be reached (HF_HUB_OFFLINE unset)."""
    if hub.constants.HF_HUB_OFFLINE:
        raise UserError("cannot push: HF_HUB_OFFLINE is set (unset it to reach the Hugging Face Hub)")
    if not hub.get_token():
        raise UserError("cannot push: no Hugging Face credentials (run `hf auth login`, or set HF_TOKEN to "
                        "a token with write access)")


def push_folder(folder: str | Path, repo: str, *, private: bool = False, message: str | None = None) -> str:
    """Upload the export files of `folder` to model repository `repo` (created if missing; `private`
    applies to a new repository). Returns the repository URL."""
    hub = require_hub("meanflow push")
    require_credentials(hub)
    api = hub.HfApi()
    import huggingface_hub.utils.logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        url = api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                          allow_patterns=list(FILES), commit_message=message or "meanflow export")
    except Exception as e:  # no network, bad token, no write access, ...
        raise UserError(f"cannot push to {repo}: {_first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(level)
    return str(url) if url else f"https://huggingface.co/{repo}"
