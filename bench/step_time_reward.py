"""The synthetic reward of ``bench/bench_step_time.py``: a quarter of the prompts is always right, a quarter always
wrong (zero reward variance, as saturated and hopeless prompts have), the rest a coin per response decided by a hash
of the response and ``STEP_TIME_REWARD_SALT``. Step time depends on how many groups have zero variance, not on
whether the tiny random model answers well, so the benchmark fixes that share instead of training for it."""

import hashlib
import os


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    index = int((extra_info or {}).get("index", 0))
    if index % 4 in (0, 1):
        score = float(index % 4 == 0)
    else:
        salt = os.environ.get("STEP_TIME_REWARD_SALT", "0")
        score = float(hashlib.sha256(f"{salt}:{solution_str}".encode()).digest()[0] % 2)
    return {"score": score, "acc": score}
