"""NgramProposer and ProposeReq.max_drafts: the k-token lookup truncated to the cap, nothing at
cap 0, and the always_draft benchmark mode padded to the cap (not to k)."""
from vllm.v1.spec_decode.ngram import NgramProposer
from vllm.v1.spec_decode.proposer import ProposeReq

SEQ = [7, 8, 9, 10, 11, 7, 8]       # suffix [7, 8] -> drafts [9, 10, 11, 7]
NOMATCH = [1, 2, 3, 4]


def _req(rid, toks, cap):
    return ProposeReq(rid, toks, len(toks) - 1, [], max_drafts=cap)


def test_caps_truncate_the_lookup():
    p = NgramProposer(4, 1, 3)
    caps = {"none": None, "zero": 0, "one": 1, "three": 3, "big": 9}
    out = p.propose([_req(rid, SEQ, c) for rid, c in caps.items()])
    assert out == {"none": [9, 10, 11, 7], "one": [9], "three": [9, 10, 11],
                   "big": [9, 10, 11, 7]}
    assert p.propose([_req("nm", NOMATCH, 2)]) == {}
    assert p.stopped_tokens == 0


def test_always_draft_pads_to_the_cap():
    p = NgramProposer(4, 1, 3, always_draft=True)
    out = p.propose([_req("a", NOMATCH, 2), _req("b", NOMATCH, None), _req("c", SEQ, 0),
                     _req("d", SEQ, 2)])
    assert out == {"a": [4, 4], "b": [4, 4, 4, 4], "d": [9, 10]}
