"""A reward for the zero-variance end-to-end test: every response to a V-tagged row scores 1, so V groups never vary;
the others score 1 for about half of the responses, decided by a hash of the text. Each call appends the row's tag
and dataset index to the file named by ``TAG_REWARD_LOG`` (to count what the run generated)."""

import hashlib
import json
import os


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    info = extra_info or {}
    tag = info.get("modality_tag")
    score = 1.0 if tag == "V" else float(hashlib.sha256(solution_str.encode()).digest()[0] % 2)
    log = os.environ.get("TAG_REWARD_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"tag": tag, "index": info.get("index")}) + "\n")
    return {"score": score, "acc": score}
