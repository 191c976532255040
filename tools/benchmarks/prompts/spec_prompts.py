"""Prompt sets for speculative-decoding benchmarks: code completion (outputs echo the prompt's
identifiers: n-gram lookup helps) and open chat questions (little to copy)."""

CODE = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n\n    def pop(self):\n",
    "# Add type hints to this function and keep the body unchanged.\n"
    "def merge(a, b):\n    result = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n"
    "        if a[i] < b[j]:\n            result.append(a[i])\n            i += 1\n"
    "        else:\n            result.append(b[j])\n            j += 1\n    return result\n\n"
    "def merge(a: list[int], b: list[int]) -> list[int]:\n",
    "import json\n\ndef load_config(path):\n    with open(path) as f:\n        config = json.load(f)\n"
    "    return config\n\ndef save_config(path, config):\n",
    "SELECT name, email FROM users WHERE active = 1;\n-- Now the same query for inactive users:\n",
    "for i in range(10):\n    print(i)\n# The same loop, counting down:\n",
    "def is_prime(n):\n    if n < 2:\n        return False\n",
    "const add = (a, b) => a + b;\nconst sub = (a, b) => a - b;\nconst mul =",
]

CHAT = [
    "What is the capital of France? Answer in one paragraph.",
    "Explain photosynthesis to a ten-year-old.",
    "Give three tips for staying focused while studying.",
    "Why is the sky blue?",
    "Write a short poem about the sea.",
    "What are the main differences between a cat and a dog as pets?",
    "How does a bicycle stay upright?",
    "Suggest a name for a small coffee shop and explain why.",
]


def render(tokenizer, kind: str) -> list[str]:
    """Chat prompts go through the model's chat template; code prompts are raw text."""
    if kind == "code":
        return list(CODE)
    out = []
    for q in CHAT:
        msgs = [{"role": "user", "content": q}]
        try:
            out.append(tokenizer.apply_chat_template(msgs, tokenize=False,
                                                     add_generation_prompt=True))
        except Exception:
            out.append(q)
    return out
