"""Speculative-decoding verification: kernel == reference for fixed seeds, and the rule is lossless.

Statistical tests use a chi-square goodness-of-fit test at significance ALPHA; every draw is seeded, so
each test's outcome is fixed (no flakiness), and a negative control shows the test can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from scipy import stats

from servesim.kernels.spec import sampling
from servesim.kernels.spec.ref import SPAN, mix32
from servesim.kernels.spec.verify import exponentials, noise_bits, philox4x32, verify, verify_bytes, verify_ref

ALPHA = 1e-3
# the interpreter evaluates log2(0) = -inf (a zero weight) with NumPy, which warns
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log2:RuntimeWarning")


def cu_of(ks: list[int]) -> torch.Tensor:
    return torch.tensor(np.concatenate([[0], np.cumsum(np.asarray(ks) + 1)]), dtype=torch.int32)


def batch(ks, vocab, rng, *, dtype=torch.bfloat16, spread=2.0, q_noise=0.5, device="cpu"):
    """Random target logits, draft distributions near them (q_noise), drafts sampled from q, seeds."""
    cu = cu_of(ks)
    logits = torch.from_numpy(rng.normal(0, spread, (int(cu[-1]), vocab))).float()
    draft_rows = torch.cat([torch.arange(int(cu[i]), int(cu[i]) + k) for i, k in enumerate(ks)]).long()
    q_logits = logits[draft_rows] + torch.from_numpy(rng.normal(0, q_noise, (sum(ks), vocab))).float()
    q = torch.softmax(q_logits, -1)
    cdf = np.cumsum(q.double().numpy(), -1)
    tokens = (cdf < rng.random((sum(ks), 1))).sum(-1).clip(max=vocab - 1)
    seeds = torch.from_numpy(rng.integers(-(2**62), 2**62, len(ks)))
    return (logits.to(dtype).to(device), cu.to(device), torch.from_numpy(tokens).int().to(device),
            q.to(device), seeds.to(device))


def check_invariants(acc, emitted, cu, tokens):
    ks = (cu[1:] - cu[:-1] - 1).cpu()
    acc, emitted = acc.cpu(), emitted.cpu()
    assert ((acc >= 0) & (acc <= ks)).all()
    for i in range(len(ks)):
        d0 = int(cu[i]) - i
        a = int(acc[i])
        assert emitted[i, :a].tolist() == tokens[d0:d0 + a].cpu().tolist()
        assert emitted[i, a] >= 0 and (emitted[i, a + 1:] == -1).all()


@triton.jit
def _philox_probe(seed_ptr, off_ptr, out_ptr, N: tl.constexpr):
    i = tl.program_id(0)
    offs = tl.load(off_ptr + tl.arange(0, N))
    lanes = tl.randint4x(tl.load(seed_ptr + i), offs)
    for c in tl.static_range(4):
        tl.store(out_ptr + (i * 4 + c) * N + tl.arange(0, N), lanes[c].to(tl.int64))


def test_numpy_philox_is_triton_randint4x():
    seeds = torch.tensor([0, 7, -3, 2**40 + 5, -(2**63)], dtype=torch.int64)
    offs = torch.tensor([0, 1, 5, 2**32, 3 * 2**32 + 17, 2**40 + 2, 123456, 2**31 + 1], dtype=torch.int64)
    out = torch.empty(len(seeds), 4, len(offs), dtype=torch.int64)
    _philox_probe[(len(seeds),)](seeds, offs, out, N=len(offs))
    o = offs.numpy().astype(np.uint64)
    want = philox4x32(seeds.numpy()[:, None], o & np.uint64(0xFFFFFFFF), o >> np.uint64(32))
    assert np.array_equal(out.numpy(), np.stack(want, 1).astype(np.int64))


@triton.jit
def _hash_probe(seed_ptr, out_ptr, V: tl.constexpr, NPOS: tl.constexpr):
    i = tl.program_id(0)
    j = tl.program_id(1)
    k1, k2, k3, k4 = sampling._row_keys(tl.load(seed_ptr + i), j)
    v = tl.arange(0, V)
    out = out_ptr + (i * NPOS + j) * V + v
    tl.store(out, sampling._mix(k1 + v.to(tl.uint32) * sampling._G, k2).to(tl.int64))  # token noise
    tl.store(out + 4 * NPOS * V, sampling._mix(k3 + v.to(tl.uint32) * sampling._G, k4).to(tl.int64))  # span noise


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_numpy_noise_hash_is_the_kernels(device):
    seeds = torch.tensor([0, 1, -5, 2**62 + 3], dtype=torch.int64, device=device)
    out = torch.empty(2, 4, 3, 256, dtype=torch.int64, device=device)
    _hash_probe[(4, 3)](seeds, out, V=256, NPOS=3)
    for spans in (False, True):
        want = noise_bits(seeds.cpu().numpy(), 3, 256, spans=spans).astype(np.int64)
        assert np.array_equal(out[int(spans)].cpu().numpy(), want)


def test_exponential_noise_is_exp1_down_to_tiny_values():
    e = exponentials(np.arange(4), 8, 32768).astype(np.float64).ravel() * np.log(2)  # 1M draws of E2 * ln 2
    assert np.isfinite(e).all() and (e > 0).all()
    assert stats.kstest(e, "expon").pvalue > ALPHA
    # the 32-bit series branch keeps small values: P(E < t) = 1 - exp(-t) holds far below 2**-24
    for t in (1e-2, 1e-4):
        assert abs((e < t).mean() - -np.expm1(-t)) < 5 * np.sqrt(t / e.size)
    assert e.min() < 1e-5


# Quality of the per-token noise hash. Losslessness needs, within a row, independent uniform draws per token,
# and no draw shared with (or shifted from) another position or sequence; seeds are often consecutive, so the
# seed neighbours are tested too. All on 2**20 or more draws, chi-square at ALPHA.

def _cells_pvalue(cells: np.ndarray, n_cells: int) -> float:
    counts = np.bincount(cells.ravel(), minlength=n_cells)
    return float(stats.chisquare(counts).pvalue)


def test_noise_hash_bits_are_uniform():
    h = noise_bits(np.arange(16), 4, 16384)  # consecutive seeds, 1M draws
    assert _cells_pvalue(h >> np.uint32(24), 256) > ALPHA  # top byte (sets w, so E and the Gumbel noise)
    assert _cells_pvalue(h & np.uint32(255), 256) > ALPHA  # bottom byte (the precision of tiny E)
    assert _cells_pvalue((h >> np.uint32(12)) & np.uint32(255), 256) > ALPHA
    assert len(np.unique(h[0, 0])) == h.shape[-1]  # a bijection of the token: no draw repeats in a row


@pytest.mark.parametrize("pair", ["token", "position", "seed"])
def test_noise_hash_neighbours_are_independent(pair):
    h = (noise_bits(np.arange(64), 8, 4096) >> np.uint32(28)).astype(np.int64)  # top 4 bits, [seed, pos, token]
    a, b = {"token": (h[:, :, :-1], h[:, :, 1:]), "position": (h[:, :-1], h[:, 1:]),
            "seed": (h[:-1], h[1:])}[pair]
    assert _cells_pvalue(a * 16 + b, 256) > ALPHA
    n = a.size
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 4 / np.sqrt(n)


def test_noise_hash_avalanche():
    rng = np.random.default_rng(0)
    x, k2 = (rng.integers(0, 2**32, 2**16, dtype=np.uint64).astype(np.uint32) for _ in range(2))
    h = mix32(x, k2)
    bit = np.arange(32, dtype=np.uint32)
    flips = np.stack([(((h ^ mix32(x ^ (np.uint32(1) << i), k2))[:, None] >> bit) & 1).mean(0) for i in bit])
    assert np.abs(flips - 0.5).max() < 0.01  # every input bit flips every output bit half the time


def test_reference_bonus_token_over_consecutive_seeds_is_p():
    # k = 0: every sequence samples its bonus token by the hash's Gumbel-max race; seeds 0, 1, 2, ...
    for n, vocab, spread in ((40_000, 8, 1.0), (8_000, 1000, 2.5)):
        logits = np.random.default_rng(vocab).normal(0, spread, vocab)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        args = (torch.tensor(np.tile(logits, (n, 1)), dtype=torch.float32), cu_of([0] * n),
                torch.zeros(0, dtype=torch.int32), torch.zeros(0, vocab), torch.arange(n))
        emitted = verify_ref(*args, 1.0)[1][:, 0].numpy()
        assert chi2_pvalue(emitted, p) > ALPHA


@pytest.mark.parametrize("dtype,temperature,splits", [
    (torch.bfloat16, 1.0, (3, 2)), (torch.float16, 0.7, None), (torch.float32, 1.3, (1, 1)),
    (torch.bfloat16, 0.0, (3, 1)), (torch.float32, 0.0, None)])
def test_kernel_matches_reference_ragged(dtype, temperature, splits):
    rng = np.random.default_rng(11)
    ks = [0, 1, 3, 5, 2, 4]
    logits, cu, tokens, q, seeds = batch(ks, 300, rng, dtype=dtype, q_noise=0.3)
    if temperature == 0:  # make some drafts greedy-correct so that acceptance runs are non-trivial
        am = logits.float().argmax(-1)
        rows = torch.cat([torch.arange(int(cu[i]), int(cu[i]) + k) for i, k in enumerate(ks)])
        tokens = torch.where(torch.arange(len(rows)) % 3 != 2, am[rows], tokens).int()
    acc, emitted = verify(logits, cu, tokens, q, seeds, temperature, block=64, splits=splits)
    acc_ref, emitted_ref = verify_ref(logits, cu, tokens, q, seeds, temperature)
    assert torch.equal(acc, acc_ref) and torch.equal(emitted, emitted_ref)
    check_invariants(acc, emitted, cu, tokens)
    assert 0 < int(acc.sum()) < sum(ks)  # both accept and reject paths ran


def test_all_accepted_emits_bonus_sample():
    rng = np.random.default_rng(3)
    ks = [2, 3, 1, 0]
    logits, cu, _, _, seeds = batch(ks, 128, rng)
    rows = torch.cat([torch.arange(int(cu[i]), int(cu[i]) + k) for i, k in enumerate(ks)])
    tokens = logits.float().argmax(-1)[rows].int()  # p(x) >= 1/V = q(x): accepted with probability 1
    q = torch.full((len(rows), 128), 1 / 128)
    acc, emitted = verify(logits, cu, tokens, q, seeds, 1.0, block=32)
    assert acc.tolist() == ks
    assert torch.equal(emitted, verify_ref(logits, cu, tokens, q, seeds, 1.0)[1])
    bonus = {int(verify(logits, cu, tokens, q, seeds + s, 1.0)[1][1, 3]) for s in range(4)}
    assert len(bonus) > 1  # the bonus token is sampled, not an argmax


def test_certain_rejection_never_emits_the_draft():
    rng = np.random.default_rng(5)
    ks = [3, 1, 2]
    logits, cu, _, _, seeds = batch(ks, 64, rng, spread=4.0)
    rows = torch.cat([torch.arange(int(cu[i]), int(cu[i]) + k) for i, k in enumerate(ks)])
    tokens = logits.float().argmin(-1)[rows].int()
    q = torch.nn.functional.one_hot(tokens.long(), 64).float()  # q(x) = 1 >> p(x): rejected at once
    acc, emitted = verify(logits, cu, tokens, q, seeds, 1.0, block=16, splits=(2, 3))
    assert acc.tolist() == [0, 0, 0]
    d0 = (cu[:-1] - torch.arange(3)).long()
    assert (emitted[:, 0] != tokens[d0]).all()  # residual max(0, p - q) is zero at the draft
    assert torch.equal(emitted, verify_ref(logits, cu, tokens, q, seeds, 1.0)[1])


def test_empty_residual_falls_back_to_target():
    rng = np.random.default_rng(8)
    ks = [1] * 6
    logits, cu, tokens, _, seeds = batch(ks, 32, rng)
    p = torch.softmax(logits.float()[0::2], -1)
    q = 2 * p  # q > p everywhere: accepted with probability 1/2, residual identically zero
    acc, emitted = verify(logits, cu, tokens, q, seeds, 1.0, block=16)
    acc_ref, emitted_ref = verify_ref(logits, cu, tokens, q, seeds, 1.0)
    assert 0 < int(acc.sum()) < 6
    assert torch.equal(acc, acc_ref) and torch.equal(emitted, emitted_ref)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_masked_vocab_is_never_emitted(temperature):
    rng = np.random.default_rng(9)
    ks = [2, 0, 3]
    logits, cu, tokens, q, seeds = batch(ks, 96, rng, dtype=torch.float32)
    logits[:, 1::2] = float("-inf")  # odd ids masked out (e.g. a grammar)
    tokens = (tokens // 2 * 2).int()
    acc, emitted = verify(logits, cu, tokens, q, seeds, temperature, block=16, splits=(2, 2))
    assert torch.equal(emitted, verify_ref(logits, cu, tokens, q, seeds, temperature)[1])
    assert (emitted[emitted >= 0] % 2 == 0).all()


def test_greedy_closed_form():
    vocab = 40
    logits = torch.zeros(7, vocab)
    best = [5, 9, 9, 0, 39, 12, 3]  # rows 0-3: sequence 0 (k=3); rows 4-6: sequence 1 (k=2)
    logits[torch.arange(7), best] = torch.arange(1, 8).float()
    logits[2, 11] = logits[2, 9]  # a tie: the lowest id (9) is the argmax
    tokens = torch.tensor([5, 9, 1, 39, 12], dtype=torch.int32)  # seq 0 rejects at 2; seq 1 accepts all
    cu = cu_of([3, 2])
    seeds = torch.tensor([1, 2])
    for fn in (verify, verify_ref):
        acc, emitted = fn(logits, cu, tokens, None, seeds, 0.0)
        assert acc.tolist() == [2, 2]
        assert emitted.tolist() == [[5, 9, 9, -1], [39, 12, 3, -1]]


def chi2_pvalue(samples: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square goodness of fit of integer samples to probs; cells expecting < 5 are pooled."""
    expected = probs / probs.sum() * len(samples)
    counts = np.bincount(samples, minlength=len(probs))
    big = expected >= 5
    obs, exp = counts[big], expected[big]
    if expected[~big].sum() > 0:
        obs, exp = np.append(obs, counts[~big].sum()), np.append(exp, expected[~big].sum())
    elif counts[~big].sum() > 0:
        return 0.0  # a token of probability zero was drawn
    return float(stats.chisquare(obs, exp).pvalue)


def repeated(n, vocab, k, rng, q_noise, temperature):
    """n sequences sharing k+1 target rows and k draft rows; each draws its own drafts from q."""
    base = rng.normal(0, 1.5, (k + 1, vocab))
    p = np.exp(base / temperature)
    p /= p.sum(-1, keepdims=True)
    q = np.exp(base[:k] + rng.normal(0, q_noise, (k, vocab)))
    q /= q.sum(-1, keepdims=True)
    drafts = np.stack([rng.choice(vocab, n, p=q[j]) for j in range(k)], 1).reshape(-1)
    args = (torch.tensor(np.tile(base, (n, 1)), dtype=torch.float32), cu_of([k] * n),
            torch.from_numpy(drafts).int(), torch.tensor(np.tile(q, (n, 1)), dtype=torch.float32),
            torch.from_numpy(rng.integers(0, 2**63, n)))
    return args, p, q


@pytest.mark.parametrize("q_noise,vocab,n", [(3.0, 32, 40_000), (0.3, 32, 40_000), (1.0, 300, 20_000)],
                         ids=["far", "close", "three-spans"])
def test_reference_is_lossless(q_noise, vocab, n):
    # V = 300 spans three SPANs (the last one ragged): the two-level draw (span, then token) is exercised
    rng = np.random.default_rng(2024)
    temperature = 0.8
    args, p, q = repeated(n, vocab, 2, rng, q_noise, temperature)
    acc, emitted = (t.numpy() for t in verify_ref(*args, temperature))
    first = emitted[:, 0]
    assert len(np.unique(first // SPAN)) == -(-vocab // SPAN)  # every span was drawn
    assert chi2_pvalue(first, p[0]) > ALPHA  # first token ~ p_0
    assert chi2_pvalue(emitted[acc >= 1, 1], p[1]) > ALPHA  # second ~ p_1 given the first was accepted
    residual = np.maximum(p[0] - q[0], 0)
    assert chi2_pvalue(first[acc == 0], residual) > ALPHA  # recovered token ~ normalize(max(0, p - q))
    assert chi2_pvalue(emitted[acc == 2, 2], p[2]) > ALPHA  # bonus token ~ p_2
    tv = 0.5 * np.abs(p[0] - q[0]).sum()
    assert abs((acc >= 1).mean() - (1 - tv)) < 4 * np.sqrt(tv * (1 - tv) / n)  # P(accept) = 1 - TV
    if q_noise > 1:  # negative control: the drafts themselves (~q) fail the same test
        assert chi2_pvalue(args[2].numpy()[0::2], p[0]) < 1e-6


def test_kernel_is_lossless_small():
    rng = np.random.default_rng(7)
    n, vocab, temperature = 160, 6, 1.0
    args, p, q = repeated(n, vocab, 1, rng, 2.0, temperature)
    acc, emitted = verify(*args, temperature, k_max=1)
    acc_ref, emitted_ref = verify_ref(*args, temperature)
    assert torch.equal(acc, acc_ref) and torch.equal(emitted, emitted_ref)
    assert chi2_pvalue(emitted[:, 0].numpy(), p[0]) > ALPHA
    assert chi2_pvalue(args[2].numpy(), p[0]) < ALPHA  # negative control: the drafts themselves


def test_seeds_decide_the_outcome():
    rng = np.random.default_rng(4)
    logits, cu, tokens, q, seeds = batch([2, 2], 64, rng)
    first = verify(logits, cu, tokens, q, seeds, 1.0, block=16)
    assert all(torch.equal(a, b) for a, b in zip(first, verify(logits, cu, tokens, q, seeds, 1.0), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first, verify(logits, cu, tokens, q, seeds, 1.0, splits=(4, 4)),
                                                   strict=True))  # the launch shape does not matter
    other = [verify_ref(logits, cu, tokens, q, seeds + s, 1.0)[1] for s in range(1, 6)]
    assert any(not torch.equal(first[1], o) for o in other)


def test_bad_inputs_raise():
    cu = cu_of([1])
    logits, tokens, q, seeds = torch.zeros(2, 8), torch.zeros(1, dtype=torch.int32), torch.zeros(1, 8), torch.zeros(1)
    with pytest.raises(ValueError, match="int64"):
        verify(logits, cu, tokens, q, seeds, 1.0)
    seeds = seeds.long()
    with pytest.raises(ValueError, match="temperature"):
        verify(logits, cu, tokens, q, seeds, -1.0)
    with pytest.raises(ValueError, match="draft_probs"):
        verify(logits, cu, tokens, torch.zeros(1, 7), seeds, 1.0)
    with pytest.raises(ValueError, match="draft_tokens"):
        verify(logits, cu, tokens[:0], q, seeds, 1.0)
    acc, emitted = verify(logits[:0], cu[:1], tokens[:0], q[:0], seeds[:0], 1.0)
    assert acc.shape == (0,) and emitted.shape == (0, 1)


def test_bytes_closed_form():
    # 4 sequences x 3 drafts, V = 1000, bf16 logits, fp32 q, one rejection
    want = 16 * 1000 * 2 + 12 * 4 + 12 * 4 + 1000 * 4 + 4 * 8 + 5 * 4 + 4 * 4 + 4 * 4 * 4
    assert verify_bytes(4, 12, 1000, 2, 4, n_rejected=1, k_max=3) == want
    assert verify_bytes(4, 12, 1000, greedy=True, k_max=3) == 16 * 1000 * 2 + 12 * 4 + 5 * 4 + 4 * 4 + 4 * 4 * 4


@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [32000, 128256])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_gpu_matches_reference(vocab, temperature):
    rng = np.random.default_rng(vocab)
    ks = [0, 1, 4, 2, 3, 4, 1, 2]
    logits, cu, tokens, q, seeds = batch(ks, vocab, rng, q_noise=0.2, device="cuda")
    acc, emitted = verify(logits, cu, tokens, q, seeds, temperature)
    torch.cuda.synchronize()
    acc_ref, emitted_ref = verify_ref(logits, cu, tokens, q, seeds, temperature)
    assert torch.equal(acc.cpu(), acc_ref) and torch.equal(emitted.cpu(), emitted_ref)
    check_invariants(acc, emitted, cu, tokens)


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_and_lossless():
    rng = np.random.default_rng(1)
    n, vocab, temperature = 20_000, 32, 0.8
    args, p, _ = repeated(n, vocab, 2, rng, 3.0, temperature)
    args = [a.cuda() for a in args]
    eager = verify(*args, temperature, k_max=2)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        verify(*args, temperature, k_max=2)  # warm-up (compilation) outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = verify(*args, temperature, k_max=2)
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(eager, captured, strict=True))
    acc, emitted = (t.cpu().numpy() for t in eager)
    assert chi2_pvalue(emitted[:, 0], p[0]) > ALPHA
    assert chi2_pvalue(emitted[acc >= 1, 1], p[1]) > ALPHA
