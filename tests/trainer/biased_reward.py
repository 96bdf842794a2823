"""A reward for the filtering end-to-end test: 1 for about 80 % of responses, decided by a hash of the text.

The tiny random model almost never answers correctly, so with the real reward nearly every group would have zero
variance and group filtering would refill forever. This one gives most groups some variance and some none.
"""

import hashlib


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    score = float(hashlib.sha256(solution_str.encode()).digest()[0] % 5 != 0)
    return {"score": score, "acc": score}
