"""Prompts for EAGLE self-distillation, from text this machine already has (no hub, no internet).

Training: Python's standard-library sources read with `ast` (never imported): module, class and
function docstrings and function bodies, under several instruction templates, plus open
questions built from word lists. Held-out evaluation: a disjoint source, the `help()` texts of
the built-in functions and types (pydoc; their docstrings live in C, not in the .py files) under
other templates, plus the chat and code prompts of tools/benchmarks/prompts. `find_overlap`
checks that no eval prompt appears in training, as text or as a token sequence."""
from __future__ import annotations

import ast
import builtins
import os
import pydoc
import random
import sysconfig
import textwrap
from typing import Iterable, Optional, Sequence

import numpy as np

MAX_CONTENT_CHARS = 1200

_TRAIN_CODE = [
    "Explain what the following Python function does, step by step:\n\n```python\n{src}\n```",
    "Write unit tests with pytest for this function:\n\n```python\n{src}\n```",
    "Review this Python code and suggest improvements:\n\n```python\n{src}\n```",
    "Add type hints and a docstring to this function:\n\n```python\n{src}\n```",
]
_TRAIN_DOC = [
    "Write a Python function `{name}({args})` that does the following:\n\n{doc}",
    "Summarize this documentation in plain words:\n\n{doc}",
    "Rewrite this docstring so that a beginner understands it:\n\n{doc}",
    "Give an example of how `{name}` from the Python module `{mod}` is used. Its "
    "documentation says:\n\n{doc}",
]
_TRAIN_MODULE = [
    "What is the Python module `{mod}` used for? Give a short example.\n\n{doc}",
    "Explain this module documentation and list its main ideas:\n\n{doc}",
]
_TOPICS = ["the water cycle", "black holes", "compound interest", "the immune system",
           "machine learning", "the French revolution", "plate tectonics", "recursion",
           "supply and demand", "the Roman empire", "electric cars", "climate change",
           "public key cryptography", "the human heart", "jazz music", "vaccines",
           "the stock market", "honey bees", "the moon landing", "sorting algorithms",
           "renewable energy", "the printing press", "gravity", "coral reefs",
           "hash tables", "sleep", "inflation", "the internet", "DNA", "chess openings"]
_THINGS = ["a lighthouse", "a robot", "a dragon", "an old library", "a tiny village",
           "a spaceship", "a lost key", "a talking cat", "a rainy city", "a mountain",
           "a river", "a clock", "a garden", "a train", "a detective", "a teacher"]
_TRAIN_OPEN = [
    "Explain {topic} in simple terms.", "Give me five facts about {topic}.",
    "Write a short essay about {topic}.", "What are common misconceptions about {topic}?",
    "Write a short story about {thing} and {thing2}.", "Describe {thing} in a poem.",
    "Write a dialogue between {thing} and {thing2} about {topic}.",
    "Create a quiz with three questions about {topic}, with answers.",
]
_EVAL_HELP = [
    "Here is the help text of a Python built-in:\n\n{doc}\n\nExplain it with an example.",
    "Using this reference, write a small program that uses `{name}`:\n\n{doc}",
    "What does `{name}` do in Python? The reference says:\n\n{doc}",
]
_EVAL_CHAT = [
    "How do volcanoes form and why do some erupt explosively?",
    "Plan a three-day trip to a city you like, with a budget.",
    "What makes a good password, and why?",
    "Compare tea and coffee for someone who wants to sleep well.",
    "Describe how a refrigerator keeps food cold.",
    "Give advice to someone starting to learn the guitar.",
    "Why do leaves change color in autumn?",
    "Write a limerick about a forgetful programmer.",
    "How would you explain what a database index is to a manager?",
    "List the steps to bake bread at home.",
    "What were the causes of the first world war?",
    "How does GPS know where you are?",
]


def _clip(text: str, n: int = MAX_CONTENT_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n].rsplit("\n", 1)[0].rstrip()


def stdlib_files(root: Optional[str] = None) -> list[str]:
    """The standard library's .py files (tests, site-packages and IDLE left out), sorted."""
    root = root or sysconfig.get_paths()["stdlib"]
    out = []
    for d, subdirs, files in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs if s not in (
            "site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__",
            "lib2to3", "turtledemo"))
        out += [os.path.join(d, f) for f in sorted(files) if f.endswith(".py")]
    return out


def _stdlib_items(files: Iterable[str], root: str) -> Iterable[tuple[str, dict]]:
    """(kind, fields) for each docstring / function found; kind in module, doc, code."""
    for path in files:
        try:
            src = open(path, encoding="utf-8").read()
            tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        lines = src.splitlines()
        mod = os.path.relpath(path, root)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        doc = ast.get_docstring(tree)
        if doc and len(doc) > 80:
            yield "module", {"mod": mod, "doc": _clip(doc)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if doc and len(doc) > 60:
                args = ast.unparse(node.args) if isinstance(node, ast.FunctionDef) else ""
                yield "doc", {"mod": mod, "name": node.name, "args": args, "doc": _clip(doc)}
            if isinstance(node, ast.FunctionDef):
                if 3 <= node.end_lineno - node.lineno <= 40:
                    code = "\n".join(lines[node.lineno - 1:node.end_lineno])
                    yield "code", {"src": _clip(textwrap.dedent(code))}


def train_prompts(n: int, seed: int = 0, stdlib_root: Optional[str] = None) -> list[str]:
    """n distinct training prompts (user messages): ~80% from the stdlib (files read in a
    seeded order until there are enough), ~20% open questions from the word lists."""
    rng = random.Random(seed)
    root = stdlib_root or sysconfig.get_paths()["stdlib"]
    files = stdlib_files(root)
    rng.shuffle(files)
    tmpl = {"module": _TRAIN_MODULE, "doc": _TRAIN_DOC, "code": _TRAIN_CODE}
    n_open = n // 5
    opens: dict[str, None] = {}
    for _ in range(20 * n_open):
        if len(opens) >= n_open:
            break
        a, b = rng.sample(_THINGS, 2)
        opens[rng.choice(_TRAIN_OPEN).format(topic=rng.choice(_TOPICS), thing=a, thing2=b)] = None
    pool: dict[str, None] = dict(opens)
    for kind, f in _stdlib_items(files, root):
        if len(pool) >= n:
            break
        pool[rng.choice(tmpl[kind]).format(**f)] = None
    out = list(pool)
    rng.shuffle(out)
    return out


def _builtin_help_items() -> list[tuple[str, str]]:
    objs = []
    for name in sorted(dir(builtins)):
        obj = getattr(builtins, name)
        if callable(obj) and not name.startswith("_") and not (
                isinstance(obj, type) and issubclass(obj, BaseException)):
            objs.append((name, obj))
    for t in (str, list, dict, set, bytes, int, float, tuple):
        objs += [(f"{t.__name__}.{m}", getattr(t, m)) for m in sorted(vars(t))
                 if not m.startswith("_")]
    out = []
    for name, obj in objs:
        try:
            text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
        except Exception:
            continue
        out.append((name, _clip(text, 800)))
    return out


def eval_prompts(n: int, seed: int = 0) -> list[str]:
    """n held-out prompts: builtins' help texts (a source training never reads) and chat
    questions of their own, plus the benchmark's chat and code prompts."""
    from tools.benchmarks.prompts.spec_prompts import CHAT, CODE
    rng = random.Random(seed + 1)
    fixed = list(_EVAL_CHAT) + list(CHAT) + list(CODE)
    helps = [rng.choice(_EVAL_HELP).format(name=name, doc=doc)
             for name, doc in _builtin_help_items()]
    rng.shuffle(helps)
    out = list(dict.fromkeys(fixed + helps))
    return out[:n]


def _contains(hay: bytes, needle: np.ndarray) -> bool:
    """Whether the int32 array `needle` occurs contiguously in the int32 bytes `hay`."""
    nb = np.asarray(needle, np.int32).tobytes()
    if not nb:
        return False
    i = hay.find(nb)
    while i != -1:
        if i % 4 == 0:          # aligned to a token, not a match across two of them
            return True
        i = hay.find(nb, i + 1)
    return False


def find_overlap(train_texts: Sequence[str], eval_texts: Sequence[str],
                 train_seqs: Sequence[np.ndarray] = (), eval_seqs: Sequence[np.ndarray] = ()
                 ) -> list[tuple[int, str]]:
    """[(eval index, why)] for every eval prompt that leaks into training: its text inside a
    training prompt's text or the reverse, or its token ids (the full chat-formatted prompt)
    as a contiguous run in a training sequence. Empty when the sets are disjoint."""
    found = []
    train_set = set(train_texts)
    joined = "\x00".join(train_texts)
    for i, e in enumerate(eval_texts):
        if e in train_set or e in joined:
            found.append((i, "eval text inside a training prompt"))
        elif any(t in e for t in train_texts if len(t) >= 40):
            found.append((i, "a training prompt inside the eval text"))
    hit = {i for i, _ in found}
    if len(eval_seqs) and len(train_seqs):
        # -1 after each sequence: no match spans two of them
        sep = np.full(1, -1, np.int32)
        hay = np.concatenate([np.concatenate([np.asarray(s, np.int32), sep])
                              for s in train_seqs]).tobytes()
        for i, s in enumerate(eval_seqs):
            if i not in hit and _contains(hay, s):
                found.append((i, "eval token sequence inside a training sequence"))
    return sorted(found)
