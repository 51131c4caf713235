"""Op-level checks shared by the per-family mixer tests (`from mixer_checks import ...`: pytest
puts tests/ on sys.path).

An op here is a pair `chunked(*inputs, chunk, initial_state) -> (out, final_state)` and
`reference(*inputs, initial_state) -> (out, final_state)`, and a test's input maker returns
`(*inputs, initial_state)`: the op's inputs, then a random initial state of the right shape.
Module-level contracts that hold for every mixer live in test_mixers.py, driven by the registry.
"""

from __future__ import annotations

import pytest
import torch


def chunked_cases(float64: list[tuple[int, int]], float32: list[tuple[int, int]]) -> list:
    """pytest params `dtype, L, chunk, with_state`: every (length, chunk) pair of a dtype's
    table, each from a zero and from a random initial state."""
    return [pytest.param(dtype, L, chunk, with_state,
                         id=f"{str(dtype)[6:]}-L{L}-chunk{chunk}-{'initial' if with_state else 'zero'}-state")
            for dtype, table in ((torch.float64, float64), (torch.float32, float32))
            for L, chunk in table for with_state in (False, True)]


def assert_chunked_equals_reference(chunked, reference, inputs: list, chunk: int, with_state: bool, *,
                                    scale_atol: bool = False) -> None:
    """The chunked op equals its step-by-step reference: outputs and final state, to 1e-10 in
    float64 and 1e-4 in float32. `scale_atol` scales the float32 atol by the largest reference
    value, for ops whose slow decays sum hundreds of terms."""
    *args, initial = inputs
    dtype = initial.dtype
    start = initial if with_state else None
    out_ref, state_ref = reference(*args, start)
    out, state = chunked(*args, chunk, start)
    assert out.shape == out_ref.shape and state.shape == initial.shape
    assert out.dtype == state.dtype == dtype
    if dtype == torch.float64:
        torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(state, state_ref, rtol=0, atol=1e-10)
        return
    for got, want in ((out, out_ref), (state, state_ref)):
        atol = 1e-4 * (want.abs().max().item() if scale_atol else 1.0)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=atol)


def assert_split_sequence_continues(chunked, inputs: list, *, chunk: int = 8, split: int = 13,
                                    atol: float = 1e-10, per_head: tuple[int, ...] = ()) -> None:
    """Running the first `split` tokens, then the rest from their final state, equals running the
    whole sequence (outputs and final state): the contract a mixer's `state` is built on. The
    rest run from a zero state must differ. `per_head` names the inputs that are not per token
    (sliced along no time axis); None inputs stay None."""
    *args, _ = inputs  # from a zero state

    def piece(part: slice) -> list:
        return [a if a is None or i in per_head else a[:, part] for i, a in enumerate(args)]

    first, rest = piece(slice(None, split)), piece(slice(split, None))
    out_all, state_all = chunked(*args, chunk)
    out1, state1 = chunked(*first, chunk)
    out2, state2 = chunked(*rest, chunk, state1)
    torch.testing.assert_close(torch.cat([out1, out2], 1), out_all, rtol=0, atol=atol)
    torch.testing.assert_close(state2, state_all, rtol=0, atol=atol)
    out2_fresh, _ = chunked(*rest, chunk)
    assert (out2_fresh - out2).abs().max() > 1e-3


def assert_backward_equals_reference(chunked, reference, inputs: list, chunk: int, backward_name: str, *,
                                     atol: float = 1e-10, gradcheck: bool = True) -> None:
    """The chunked op's hand-written backward (its grad_fn is `backward_name`) gives the same
    gradient of every input, the initial state's included, as autograd through the step-by-step
    reference, for random output and final-state gradients; and, if `gradcheck`, it passes
    torch.autograd.gradcheck. `inputs` (float64) as in assert_chunked_equals_reference."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    *args, initial = inputs
    out, state = chunked(*args, chunk, initial)
    assert type(out.grad_fn).__name__ == backward_name
    g = torch.Generator().manual_seed(7)
    grad_out = torch.randn(out.shape, generator=g, dtype=out.dtype)
    grad_state = torch.randn(state.shape, generator=g, dtype=state.dtype)
    got = torch.autograd.grad((out * grad_out).sum() + (state * grad_state).sum(), inputs)
    out_ref, state_ref = reference(*args, initial)
    want = torch.autograd.grad((out_ref * grad_out).sum() + (state_ref * grad_state).sum(), inputs)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m: f"input {i}: {m}")
    if gradcheck:
        assert torch.autograd.gradcheck(lambda *t: chunked(*t[:-1], chunk, t[-1]), inputs)
