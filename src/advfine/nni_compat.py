"""Run-time fixes so NNI 3.0's ``ModelSpeedup`` works on torch >= 2.3 (no site-packages edits).

NNI 3.0 (2023-09, unmaintained) breaks in its concrete tracer
(``nni/common/concrete_trace_utils/concrete_tracer.py``) in two places:

1. ``ConcreteTracer.trace`` recognises tensor methods by ``func.__qualname__.startswith('_TensorBase')``.
   torch renamed ``torch._C._TensorBase`` to ``TensorBase``, so those methods fall through to a branch
   that calls ``func.__module__.startswith`` on ``None`` -> AttributeError (microsoft/nni#5768).
   Fix: recompile ``trace`` from NNI's own source with the test accepting both names.
2. ``torch.fx.Graph.eliminate_dead_code`` now calls ``node.is_impure(impure_random)``, but NNI swaps
   ``Node.is_impure`` for ``node_is_impure_wrapper(node)`` (one argument) -> TypeError.
   Fix: replace that module-level wrapper with one accepting and ignoring the extra argument.

``check_nni_sources()`` fails loudly if NNI's code no longer looks like what these fixes expect.
"""
from __future__ import annotations

import inspect
import textwrap

from nni.common.concrete_trace_utils import concrete_tracer as _ct

# NNI function -> the source snippet each fix relies on.
EXPECTED_SNIPPETS = {
    "ConcreteTracer.trace": "func.__qualname__.startswith('_TensorBase')",
    "node_is_impure_wrapper": "def node_is_impure_wrapper(node):",
}
_NNI_FUNCS = {"ConcreteTracer.trace": lambda: _ct.ConcreteTracer.trace,
              "node_is_impure_wrapper": lambda: _ct.node_is_impure_wrapper}


def check_nni_sources() -> None:
    """Raise RuntimeError naming the NNI function whose source changed (checks the original code)."""
    for name, snippet in EXPECTED_SNIPPETS.items():
        func = getattr(_NNI_FUNCS[name](), "_advfine_original", _NNI_FUNCS[name]())
        if inspect.getsource(func.__code__).count(snippet) != 1:  # __code__: no unwrapping of @wraps
            raise RuntimeError(
                f"NNI source changed: nni.common.concrete_trace_utils.concrete_tracer.{name} no longer "
                f"contains {snippet!r} exactly once; review advfine/nni_compat.py before relying on ModelSpeedup.")


def apply_nni_torch_fixes() -> None:
    """Patch NNI's concrete tracer for torch >= 2.3. Idempotent."""
    check_nni_sources()
    trace = _ct.ConcreteTracer.trace
    if not hasattr(trace, "_advfine_original"):
        source = textwrap.dedent(inspect.getsource(trace.__code__)).replace(
            EXPECTED_SNIPPETS["ConcreteTracer.trace"],
            "func.__qualname__.startswith(('_TensorBase', 'TensorBase.'))")
        # Leading newlines keep line numbers in tracebacks pointing at the real NNI file.
        source = "\n" * (trace.__code__.co_firstlineno - 1) + source
        namespace: dict = {}
        exec(compile(source, inspect.getsourcefile(trace), "exec"), _ct.__dict__, namespace)
        namespace["trace"]._advfine_original = trace
        _ct.ConcreteTracer.trace = namespace["trace"]

    wrapper = _ct.node_is_impure_wrapper
    if not hasattr(wrapper, "_advfine_original"):
        def node_is_impure_wrapper(node, impure_random: bool = True):
            return wrapper(node)
        node_is_impure_wrapper._advfine_original = wrapper
        # concrete_trace() looks the name up in the module globals at call time.
        _ct.node_is_impure_wrapper = node_is_impure_wrapper
