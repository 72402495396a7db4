"""``specnet-zoo push DIR --repo-id ORG/NAME``: publish an export folder on the Hugging Face Hub with ``HfApi``."""
from __future__ import annotations

import json
from pathlib import Path

from .pretrained import WEIGHTS_FILE, WeightsError, sha256_file

__all__ = ["EXPORT_FILES", "check_export", "push_export"]

EXPORT_FILES = (WEIGHTS_FILE, "config.json", "README.md")


def check_export(folder: str | Path) -> list[str]:
    """The files of an export folder, after checking it is complete and its weights match config.json's sha256."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"export folder {folder} does not exist")
    missing = [name for name in EXPORT_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete export (missing {', '.join(missing)}); "
                                "write one with `specnet-zoo export CKPT --out DIR`")
    expected = json.loads((folder / "config.json").read_text()).get("specnet_zoo", {}).get("sha256")
    actual = sha256_file(folder / WEIGHTS_FILE)
    if expected and actual != expected:
        raise WeightsError(f"{folder / WEIGHTS_FILE}: sha256 is {actual} but config.json records {expected}; "
                           "the weights changed after export: export again rather than publish them")
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def push_export(folder: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
                dry_run: bool = False, token: str | None = None, api=None) -> str:
    """Create ``repo_id`` (exist_ok) and upload the export folder in one commit; returns what was done.

    The token comes from ``token``, else ``HF_TOKEN`` or ``hf auth login`` (huggingface_hub's lookup).
    ``dry_run`` checks the folder and says what would be sent, without any network call.
    """
    from huggingface_hub import HfApi, get_token

    files = check_export(folder)
    target = f"{repo_id}" + (f"@{revision}" if revision else "") + (" (private)" if private else "")
    if dry_run:
        return "\n".join([f"would upload to https://huggingface.co/{repo_id} {target}:"] + [f"  {f}" for f in files])
    token = token or get_token()
    if api is None and token is None:
        raise PermissionError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (write access to "
                              f"{repo_id.split('/')[0]} is needed)")
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                               allow_patterns=files, commit_message=f"specnet-zoo export of {Path(folder).name}")
    oid = getattr(commit, "oid", None)
    return (f"uploaded {len(files)} files to {target}: {getattr(commit, 'commit_url', commit)}"
            + (f"\npin it: hf_revision {oid}" if oid else ""))
