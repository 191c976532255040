"""EAGLE heads that ship inside the package (vllm/data/eagle/<target key>/), found by target.

`speculative_config={"method": "eagle", "num_speculative_tokens": k}` with no "model" resolves
to the head shipped for the target, when there is one. A head folder holds config.json,
model.safetensors and SHA256SUMS (the `sha256sum` format: "<hex>  <file>" per line); the
checksums are verified before the head is loaded, for a shipped head or any other folder that
carries a SHA256SUMS (tools/eagle/train.py writes one)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Optional

from vllm.model_executor.model_loader import gguf_loader

# Where the shipped heads live: DATA_ROOT/eagle/<key>/ (module-level so tests point it elsewhere).
DATA_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "data")
CHECKSUM_FILE = "SHA256SUMS"
REQUIRED_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class ShippedTarget:
    """How a target is recognised: by one of its names, or by its exact GGUF file."""
    names: tuple[str, ...]
    gguf_size: Optional[int] = None
    gguf_sha256: Optional[str] = None


# target key (the head's folder name) -> how to recognise the target
TARGETS: dict[str, ShippedTarget] = {
    "smollm2-135m-instruct": ShippedTarget(
        names=gguf_loader._DEFAULT_MODEL_ALIASES, gguf_size=98_362_432,
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}

_hash_cache: dict[tuple[str, float, int], str] = {}


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _gguf_sha256(path: str) -> str:
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_mtime, st.st_size)
    if key not in _hash_cache:
        _hash_cache[key] = sha256_file(path)
    return _hash_cache[key]


def target_key(target_model: str) -> Optional[str]:
    """The shipped-head key of a target (its name or its file), or None if it is not known."""
    for key, t in TARGETS.items():
        if target_model in t.names:
            return key
    path = target_model
    if os.path.isdir(path):
        path = gguf_loader.resolve_model_path(path)
    if not os.path.isfile(path):
        return None
    size = os.path.getsize(path)
    for key, t in TARGETS.items():
        # the size first: only a file of exactly the right size is hashed (~0.3 s for 98 MB)
        if t.gguf_size == size and t.gguf_sha256 and _gguf_sha256(path) == t.gguf_sha256:
            return key
    return None


def shipped_head_dir(target_model: str, data_root: Optional[str] = None) -> Optional[str]:
    """The folder of the EAGLE head shipped for this target, or None."""
    key = target_key(target_model)
    if key is None:
        return None
    d = os.path.join(DATA_ROOT if data_root is None else data_root, "eagle", key)
    return d if os.path.isfile(os.path.join(d, "config.json")) else None


def resolve_eagle_model(target_model: str) -> str:
    """The head for `"model"`-less EAGLE: the shipped one, else a ValueError naming the field."""
    d = shipped_head_dir(target_model)
    if d is not None:
        return d
    known = target_key(target_model)
    why = (f"no trained head for {known!r} is installed in {os.path.join(DATA_ROOT, 'eagle')}"
           if known else "no EAGLE head ships with this package for this target")
    raise ValueError(f"speculative_config.model is required for method 'eagle' with target "
                     f"{target_model!r}: {why} (shipped heads: targets {sorted(TARGETS)}). "
                     "Pass the folder of an EAGLE head (config.json + safetensors).")


def write_checksums(head_dir: str) -> str:
    """Write SHA256SUMS over the head's files (config.json, *.safetensors); returns its path."""
    names = sorted(f for f in os.listdir(head_dir)
                   if f == "config.json" or f.endswith(".safetensors"))
    lines = [f"{sha256_file(os.path.join(head_dir, n))}  {n}\n" for n in names]
    out = os.path.join(head_dir, CHECKSUM_FILE)
    with open(out, "w") as f:
        f.writelines(lines)
    return out


def verify_checksums(head_dir: str, required: bool = False) -> bool:
    """Check the files listed in head_dir/SHA256SUMS. Returns False when there is no such file
    (and it is not required); raises ValueError on a mismatch or a missing file."""
    path = os.path.join(head_dir, CHECKSUM_FILE)
    if not os.path.isfile(path):
        if required:
            raise ValueError(f"EAGLE head {head_dir!r} has no {CHECKSUM_FILE}")
        return False
    listed = {}
    for line in open(path):
        if line.strip():
            digest, name = line.strip().split(None, 1)
            listed[name.lstrip("*")] = digest.lower()
    for name in REQUIRED_FILES:
        if name not in listed:
            raise ValueError(f"EAGLE head {head_dir!r}: {CHECKSUM_FILE} does not list {name}")
    for name, want in listed.items():
        f = os.path.join(head_dir, name)
        if not os.path.isfile(f):
            raise ValueError(f"EAGLE head {head_dir!r}: {name} listed in {CHECKSUM_FILE} is "
                             "missing")
        got = sha256_file(f)
        if got != want:
            raise ValueError(f"EAGLE head {head_dir!r}: checksum mismatch for {name} "
                             f"(sha256 {got}, {CHECKSUM_FILE} says {want}); the file is "
                             "corrupt or was replaced")
    return True
