"""vllm: a from-scratch, vLLM-compatible inference engine with NWOR and SCV speculative decoding."""
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams
from vllm.version import __version__


def __getattr__(name):
    # LLM pulls in torch models and loaders; import it lazily so `import vllm` stays light.
    if name == "LLM":
        from vllm.entrypoints.llm import LLM
        return LLM
    if name == "EngineArgs":
        from vllm.engine.arg_utils import EngineArgs
        return EngineArgs
    raise AttributeError(name)


__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "EngineArgs",
           "__version__"]
