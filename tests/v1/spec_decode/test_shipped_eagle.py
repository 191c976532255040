"""EAGLE heads shipped in the package: method 'eagle' without 'model' resolves to the head for a
known target (by name or by its exact GGUF file), a clear ValueError naming the field otherwise,
and the head's SHA256SUMS is verified before it loads. The lookup is pointed at heads saved in
temporary folders (shipped.DATA_ROOT / shipped.TARGETS)."""
import hashlib
import json
import os
import tempfile

import pytest

from models_util import tiny_model
from spec_util import save_random_eagle_head
from vllm import LLM, SamplingParams
from vllm.config import SpeculativeConfig
from vllm.v1.spec_decode import shipped
from vllm.v1.spec_decode.shipped import resolve_eagle_model

SMOL = "SmolLM2-135M-Instruct"
EAGLE4 = {"method": "eagle", "num_speculative_tokens": 4}


def _ship(root: str, key: str, target: str) -> str:
    d = save_random_eagle_head(target, os.path.join(root, "eagle", key))
    shipped.write_checksums(d)
    return d


def test_no_shipped_head_names_the_field(monkeypatch):
    monkeypatch.setattr(shipped, "DATA_ROOT", tempfile.mkdtemp())
    with pytest.raises(ValueError, match=r"speculative_config\.model is required.*no trained "
                                         r"head for 'smollm2-135m-instruct'"):
        SpeculativeConfig.from_user(EAGLE4, SMOL, resolve_eagle_model)
    with pytest.raises(ValueError, match=r"speculative_config\.model is required.*no EAGLE head "
                                         r"ships with this package for this target"):
        SpeculativeConfig.from_user(EAGLE4, tiny_model("llama"), resolve_eagle_model)
    with pytest.raises(ValueError, match=r"speculative_config\.model is required for method "
                                         r"'draft_model'"):
        SpeculativeConfig.from_user({"method": "draft_model", "num_speculative_tokens": 4}, SMOL)


def test_resolves_by_name_and_explicit_model_wins(monkeypatch):
    root = tempfile.mkdtemp()
    monkeypatch.setattr(shipped, "DATA_ROOT", root)
    d = _ship(root, "smollm2-135m-instruct", tiny_model("llama"))
    for name in (SMOL, "HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert SpeculativeConfig.from_user(EAGLE4, name, resolve_eagle_model).model == d
    assert SpeculativeConfig.from_user(dict(EAGLE4, model="/some/head"), SMOL,
                                      resolve_eagle_model).model == \
        "/some/head"


def test_resolves_by_gguf_file(monkeypatch):
    root = tempfile.mkdtemp()
    gguf = os.path.join(root, "target.gguf")
    payload = b"not really a gguf, but the right bytes"
    open(gguf, "wb").write(payload)
    monkeypatch.setattr(shipped, "DATA_ROOT", root)
    monkeypatch.setattr(shipped, "TARGETS", {"t": shipped.ShippedTarget(
        names=(), gguf_size=len(payload), gguf_sha256=hashlib.sha256(payload).hexdigest())})
    d = _ship(root, "t", tiny_model("llama"))
    assert shipped.shipped_head_dir(gguf) == d
    open(gguf, "ab").write(b"!")            # another file: not recognised
    assert shipped.shipped_head_dir(gguf) is None


def test_shipped_head_drafts_losslessly_and_checksum_is_enforced(monkeypatch):
    target = tiny_model("llama")
    root = tempfile.mkdtemp()
    monkeypatch.setattr(shipped, "DATA_ROOT", root)
    monkeypatch.setattr(shipped, "TARGETS", {"tiny": shipped.ShippedTarget(names=(target,))})
    d = _ship(root, "tiny", target)
    ps = [{"prompt_token_ids": [5, 9, 13, 5, 9, 13, 7]}, {"prompt_token_ids": [40, 41, 42]}]
    sp = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    want = [o.outputs[0].token_ids
            for o in LLM(target, enforce_eager=True).generate(ps, sp, use_tqdm=False)]
    spec = LLM(target, enforce_eager=True,
               speculative_config={"method": "eagle", "num_speculative_tokens": 2})
    assert spec.llm_engine.config.speculative_config.model == d
    assert [o.outputs[0].token_ids for o in spec.generate(ps, sp, use_tqdm=False)] == want
    assert spec.get_metrics_dict()["vllm:spec_decode_num_drafts"] > 0
    spec.shutdown()

    st = os.path.join(d, "model.safetensors")
    raw = bytearray(open(st, "rb").read())
    raw[-1] ^= 0xFF
    open(st, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch for model.safetensors"):
        LLM(target, enforce_eager=True,
            speculative_config={"method": "eagle", "num_speculative_tokens": 2})
    os.remove(os.path.join(d, shipped.CHECKSUM_FILE))
    with pytest.raises(ValueError, match="has no SHA256SUMS"):
        LLM(target, enforce_eager=True,
            speculative_config={"method": "eagle", "num_speculative_tokens": 2})


def test_checksums_listing():
    d = save_random_eagle_head(tiny_model("llama"), tempfile.mkdtemp())
    assert shipped.verify_checksums(d) is False         # none written: nothing to check
    shipped.write_checksums(d)
    assert shipped.verify_checksums(d, required=True) is True
    lines = open(os.path.join(d, shipped.CHECKSUM_FILE)).read().split("\n")
    assert [ln.split()[1] for ln in lines if ln] == ["config.json", "model.safetensors"]
    cfg = json.load(open(os.path.join(d, "config.json")))
    json.dump(dict(cfg, hidden_size=cfg["hidden_size"]), open(os.path.join(d, "config.json"),
                                                              "w"), indent=1)
    with pytest.raises(ValueError, match="checksum mismatch for config.json"):
        shipped.verify_checksums(d)


def test_the_package_head_for_the_default_model():
    """What this checkout ships: a head with valid checksums, or (until one is trained) none
    and the clear error."""
    d = shipped.shipped_head_dir(SMOL)
    if d is None:
        with pytest.raises(ValueError, match=r"speculative_config\.model is required"):
            SpeculativeConfig.from_user(EAGLE4, SMOL, resolve_eagle_model)
        return
    assert shipped.verify_checksums(d, required=True)
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert cfg["hidden_size"] == 576 and cfg["num_hidden_layers"] == 1
    assert SpeculativeConfig.from_user(EAGLE4, SMOL, resolve_eagle_model).model == d
