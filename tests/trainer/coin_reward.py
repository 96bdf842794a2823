"""A reward for end-to-end tests that need a policy gradient on every step: 1 for about half of the responses,
decided by a hash of the text. The tiny random model almost never answers correctly, so with the real reward most
steps would have no reward variance and leave the weights unchanged; here 7 groups in 8 have some."""

import hashlib


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    score = float(hashlib.sha256(solution_str.encode()).digest()[0] % 2)
    return {"score": score, "acc": score}
