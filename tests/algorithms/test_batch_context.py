import numpy as np
import pytest

from verl_modality.algorithms.adaptive_weights import AdaptiveWeightState
from verl_modality.algorithms.batch_context import BatchContext, batch_context, current_batch_context


def test_context_is_set_inside_and_cleared_after():
    assert current_batch_context() is None
    ctx = BatchContext(modality_tags=["V", "A"], valid=np.array([True, False]), state=AdaptiveWeightState(), step=4)
    with batch_context(ctx) as active:
        assert active is ctx and current_batch_context() is ctx
    assert current_batch_context() is None
    assert ctx.stats == {}  # a fresh dict per context
    assert BatchContext(modality_tags=[]).stats is not ctx.stats


def test_context_is_cleared_after_an_error():
    with pytest.raises(KeyError):
        with batch_context(BatchContext(modality_tags=["V"])):
            raise KeyError("boom")
    assert current_batch_context() is None


def test_contexts_do_not_nest():
    outer = BatchContext(modality_tags=["V"])
    with batch_context(outer):
        with pytest.raises(RuntimeError, match="nest"):
            with batch_context(BatchContext(modality_tags=["A"])):
                pass
        assert current_batch_context() is outer  # the failed inner one did not replace or clear it
    assert current_batch_context() is None
