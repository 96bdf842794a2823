"""A reward for end-to-end tests of zero-variance filtering: every response to a row of even dataset index scores 1
(its group never varies), the others 1 for about half of the responses, decided by a hash of the text."""

import hashlib


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    if int((extra_info or {}).get("index", 0)) % 2 == 0:
        score = 1.0
    else:
        score = float(hashlib.sha256(solution_str.encode()).digest()[0] % 2)
    return {"score": score, "acc": score}
