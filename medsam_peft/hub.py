"""Share a tuned model as a Hugging Face Hub repository (``medsam-peft push`` / ``pull``).

The repository is the exported MONAI bundle (``medsam-peft export-bundle``: ``configs/``, ``models/model.safetensors``,
``docs/``, ``LICENSE``) plus, at its root, the Hub's files: ``README.md`` (the model card: YAML front matter with
``library_name``, tags, metrics, then the bundle's docs) and ``config.json`` (backbone, tuner and options, image
size, prompt mode, base checkpoint, checksums). A pulled repository is therefore a bundle folder: ``medsam-peft
predict --adapter DIR``, the MONAI Label app and ``monai.bundle`` take it as it is.

Where to: ``--hub https://huggingface.co`` (the default, or ``HF_ENDPOINT``; any Hub-compatible server, through
``huggingface_hub``), or a ``file://`` mirror — a folder holding ``<owner>/<name>/`` repositories, for sites that share
models over a network drive. Pulled files are checked: the adapter's tensor checksum must match.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from medsam_peft.errors import ConfigError, DataError, MedsamPeftError, MissingFileError
from medsam_peft.export import export_bundle, model_folder_kind
from medsam_peft.tuners.adapter_io import BUNDLE_ADAPTER, read_adapter
from medsam_peft.version import __version__

DEFAULT_HUB = "https://huggingface.co"


class HubError(MedsamPeftError, RuntimeError):
    """The Hub or mirror refused or failed a transfer."""


def _repo_id(repo_id: str) -> str:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(p and p not in (".", "..") and p.replace("-", "").replace("_", "").replace(".", "")
                                  .isalnum() for p in parts):
        raise ConfigError(f"repository id {repo_id!r} must be OWNER/NAME (letters, digits, '-', '_', '.')")
    return repo_id


def model_card(bundle: Path) -> str:
    """The Hub model card: YAML front matter from the bundle's metadata, then its docs/README.md."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    train = json.loads((bundle / "configs" / "train.json").read_text()) if (bundle / "configs" / "train.json").is_file() else {}
    tags = ["medsam_peft", "monai", "segment-anything", "peft", "medical-imaging", str(train.get("tuner", "")),
            str(train.get("backbone", ""))]
    front = ["---", "library_name: medsam_peft", "license: apache-2.0", "pipeline_tag: image-segmentation", "tags:"]
    front += [f"- {t}" for t in tags if t]
    if meta.get("eval_metrics"):
        front += ["metrics:"] + [f"- {k}" for k in sorted(meta["eval_metrics"])]
    front += ["---", ""]
    docs = (bundle / "docs" / "README.md").read_text() if (bundle / "docs" / "README.md").is_file() else ""
    usage = ("\n## Use\n\n```bash\nmedsam-peft pull OWNER/NAME model_dir\nmedsam-peft predict --adapter model_dir "
             "--input images/ --boxes boxes.json --output masks/\n```\n")
    return "\n".join(front) + docs + usage


def hub_config(bundle: Path) -> dict[str, Any]:
    """``config.json``: what rebuilds and feeds the model, read from the bundle."""
    meta = read_adapter(bundle / BUNDLE_ADAPTER)["metadata"]
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    return {"library_name": "medsam_peft", "medsam_peft_version": __version__, "backbone": meta["backbone"],
            "tuner": meta["tuner"], "tuner_options": meta["options"], "decoder": meta.get("decoder"),
            "image_size": meta["image_size"], "squash": inference.get("squash", False),
            "prompt": inference.get("prompt", "box"), "checkpoint": inference.get("checkpoint"),
            "adapter": BUNDLE_ADAPTER, "tensor_sha256": meta.get("tensor_sha256"),
            "base_sha256": meta.get("base_sha256")}


def stage_repository(source: Path, folder: Path, label: str) -> Path:
    """The repository's files in ``folder``: a run is exported to a bundle first; a bundle is copied."""
    if model_folder_kind(source) == "run":
        export_bundle(source, folder, label_name=label)
    else:
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns(".*", "__pycache__", "eval"))
    read_adapter(folder / BUNDLE_ADAPTER)  # refuse to publish a damaged adapter
    (folder / "README.md").write_text(model_card(folder))
    (folder / "config.json").write_text(json.dumps(hub_config(folder), indent=2))
    return folder


def _mirror_root(hub: str) -> Path | None:
    parsed = urlparse(hub)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def push(source: str | os.PathLike, repo_id: str, hub: str | None = None, token: str | None = None,
         private: bool = False, label: str = "foreground", message: str | None = None) -> dict[str, Any]:
    """Publish ``source`` (training run or bundle folder) as the Hub repository ``repo_id``."""
    source, repo_id = Path(source), _repo_id(repo_id)
    if not source.is_dir():
        raise MissingFileError(f"{source} is not a folder: give a training run folder or an exported bundle")
    hub = hub or os.environ.get("HF_ENDPOINT") or DEFAULT_HUB
    with tempfile.TemporaryDirectory() as tmp:
        staged = stage_repository(source, Path(tmp) / "repo", label)
        files = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        mirror = _mirror_root(hub)
        if mirror is not None:
            if not mirror.is_dir():
                raise MissingFileError(f"mirror folder {mirror} does not exist")
            target = mirror / repo_id
            target.parent.mkdir(parents=True, exist_ok=True)
            incoming = target.parent / f".{target.name}.incoming"
            shutil.rmtree(incoming, ignore_errors=True)
            shutil.copytree(staged, incoming)
            # the new version replaces the old one in one rename: a reader sees either, never a mix
            retired = target.parent / f".{target.name}.retired"
            shutil.rmtree(retired, ignore_errors=True)
            if target.exists():
                os.replace(target, retired)
            os.replace(incoming, target)
            shutil.rmtree(retired, ignore_errors=True)
            return {"repo": str(target), "files": files}
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        api = HfApi(endpoint=hub, token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(folder_path=str(staged), repo_id=repo_id,
                                       commit_message=message or f"medsam_peft {__version__}: {source.name}")
        except HfHubHTTPError as err:
            raise HubError(f"{hub} refused the upload to {repo_id}: {err}") from err
        return {"repo": f"{hub.rstrip('/')}/{repo_id}", "files": files, "commit": str(commit)}


def pull(repo_id: str, out_dir: str | os.PathLike, hub: str | None = None, revision: str | None = None,
         token: str | None = None) -> dict[str, Any]:
    """Download the repository ``repo_id`` into ``out_dir`` (a new or empty folder) and check it is a usable bundle."""
    repo_id, out_dir = _repo_id(repo_id), Path(out_dir)
    hub = hub or os.environ.get("HF_ENDPOINT") or DEFAULT_HUB
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder")
    mirror = _mirror_root(hub)
    if mirror is not None:
        source = mirror / repo_id
        if not source.is_dir():
            raise MissingFileError(f"no repository {repo_id} in the mirror {mirror}")
        if revision not in (None, "main"):
            raise ConfigError("a file:// mirror keeps one version per repository: drop --revision")
        shutil.copytree(source, out_dir, dirs_exist_ok=True)
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError

        try:
            snapshot_download(repo_id, revision=revision, local_dir=str(out_dir), endpoint=hub, token=token)
        except HfHubHTTPError as err:
            raise HubError(f"{hub} could not serve {repo_id}: {err}") from err
    if not (out_dir / "configs" / "metadata.json").is_file() or not (out_dir / BUNDLE_ADAPTER).is_file():
        raise DataError(f"{repo_id} is not a medsam_peft model repository (no configs/metadata.json or "
                        f"{BUNDLE_ADAPTER}); it was downloaded to {out_dir}")
    read_adapter(out_dir / BUNDLE_ADAPTER)  # the tensor checksum: a damaged download is refused here
    files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")
                   if p.is_file() and ".cache" not in p.relative_to(out_dir).parts)
    return {"dir": str(out_dir), "files": files}


__all__ = ["HubError", "hub_config", "model_card", "pull", "push", "stage_repository"]
