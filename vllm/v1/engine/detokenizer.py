"""Incremental detokenization and stop-string matching for one sequence."""
from __future__ import annotations

from typing import Optional


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: list[str], include_stop: bool, skip_special: bool):
        self.tokenizer = tokenizer
        self.stop = stop
        self.include_stop = include_stop
        self.skip_special = skip_special
        self._text = ""
        self._prefix_ids: list[int] = []   # tokens already turned into settled text
        self._tail_ids: list[int] = []     # tokens whose text may still change (partial UTF-8)
        self._max_stop = max((len(s) for s in stop), default=0)

    def update(self, new_ids: list[int]) -> Optional[str]:
        """Add tokens; return the stop string if one now appears (text is truncated there).
        Without stop strings nothing needs the text yet: decoding waits until `text` is read
        (every step when streaming, once at the end otherwise), which saves two tokenizer
        calls per request per step."""
        if self.tokenizer is None:
            return None
        self._tail_ids.extend(new_ids)
        if not self.stop:
            return None
        return self._advance()

    @property
    def text(self) -> str:
        if self._tail_ids and not self.stop and self.tokenizer is not None:
            self._advance()
        return self._text

    def _advance(self) -> Optional[str]:
        """Decode the pending tokens into settled text; return a stop string if one appears."""
        # Decode a small window of context + tail so BPE merges across the boundary decode right.
        ctx = self._prefix_ids[-4:]
        ctx_text = self.tokenizer.decode(ctx, skip_special_tokens=self.skip_special)
        full = self.tokenizer.decode(ctx + self._tail_ids, skip_special_tokens=self.skip_special)
        new_text = full[len(ctx_text):] if full.startswith(ctx_text) else full
        if new_text.endswith("\ufffd"):
            return None            # wait for the rest of a multi-byte character
        old_len = len(self._text)
        self._text += new_text
        self._prefix_ids.extend(self._tail_ids)
        self._tail_ids = []
        if not self.stop:
            return None
        search_from = max(0, old_len - self._max_stop + 1)
        best = None
        for s in self.stop:
            i = self._text.find(s, search_from)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return None
        i, s = best
        self._text = self._text[:i + len(s)] if self.include_stop else self._text[:i]
        return s

    def flush(self) -> None:
        if not self._tail_ids or self.tokenizer is None:
            return
        if not self.stop:
            self._advance()            # lazy mode: settle what decodes cleanly first
        if self._tail_ids:             # a trailing partial character: take it as it decodes
            self._text += self.tokenizer.decode(self._tail_ids,
                                                skip_special_tokens=self.skip_special)
            self._tail_ids = []
