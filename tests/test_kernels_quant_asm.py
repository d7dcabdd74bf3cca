"""The inline PTX of the int4 tensor-core dequantization (DEQ 2 / 3), run on the CPU by a small emulator of
the instructions it uses: the interpreter replaces DEQ 2 / 3 by DEQ 1 / 0, so only this and the GPU tests
check the PTX itself."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from servesim.kernels.quant import gemm_kernels as QK  # noqa: E402

M32 = np.uint64(0xFFFFFFFF)


def _lop3(a, b, c, lut):
    out = np.zeros_like(a)
    for i in range(8):  # PTX: bit i of the LUT is f(a = bit 2 of i, b = bit 1, c = bit 0)
        if lut >> i & 1:
            out |= (a if i & 4 else ~a & M32) & (b if i & 2 else ~b & M32) & (c if i & 1 else ~c & M32)
    return out


def _halves(v, fmt):
    """The two 16-bit floats of each word as float64 (low, high)."""
    dt = torch.bfloat16 if fmt == "bf16x2" else torch.float16
    lo = torch.from_numpy((v & 0xFFFF).astype(np.int16)).view(dt).double().numpy()
    hi = torch.from_numpy((v >> 16).astype(np.uint16).astype(np.int16)).view(dt).double().numpy()
    return lo, hi


def _pack(lo, hi, fmt):
    """Round two float64 arrays to nearest-even 16-bit floats (exact in float32 here) and pack them."""
    dt = torch.bfloat16 if fmt == "bf16x2" else torch.float16
    bits = [torch.from_numpy(x).float().to(dt).view(torch.int16).numpy().astype(np.uint16).astype(np.uint64)
            for x in (lo, hi)]
    return bits[0] | bits[1] << np.uint64(16)


def run_ptx(asm: str, inputs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Execute the register-level PTX of ``_pair_asm`` on uint32 vectors; returns the 16-bit outputs."""
    regs: dict[str, np.ndarray] = {f"${k}": v.astype(np.uint64) for k, v in inputs.items()}
    outs: dict[int, np.ndarray] = {}

    def val(tok):
        tok = tok.strip()
        return regs[tok] if tok in regs else np.uint64(int(tok, 16))

    for line in asm.strip("{}\n").splitlines():
        op, _, rest = line.strip().rstrip(";").partition(" ")
        if op.startswith(".reg"):
            continue
        if op == "mov.b32" and rest.startswith("{"):
            lo, hi, src = re.match(r"\{\$(\d+), \$(\d+)\}, (\w+)", rest).groups()
            outs[int(lo)], outs[int(hi)] = regs[src] & np.uint64(0xFFFF), regs[src] >> np.uint64(16)
            continue
        dst, *src = [t.strip() for t in rest.split(",")]
        if op == "mov.b32":
            regs[dst] = val(src[0]) * np.ones_like(next(iter(regs.values())))
        elif op == "prmt.b32":
            a, b, sel = val(src[0]), val(src[1]), int(src[2], 16)
            both = a | b << np.uint64(32)
            regs[dst] = sum(((both >> np.uint64(8 * (sel >> 4 * i & 7))) & np.uint64(0xFF)) << np.uint64(8 * i)
                            for i in range(4))
        elif op == "shr.u32":
            regs[dst] = val(src[0]) >> np.uint64(int(src[1]))
        elif op == "lop3.b32":
            regs[dst] = _lop3(val(src[0]), val(src[1]) * np.ones_like(val(src[0])), val(src[2]), int(src[3], 16))
        elif op.startswith(("fma.rn.", "mul.rn.")):
            fmt = op.split(".")[-1]
            h = [_halves(val(s) * np.ones_like(val(src[0])), fmt) for s in src]
            res = [h[0][i] * h[1][i] + (h[2][i] if op.startswith("fma") else 0.0) for i in (0, 1)]
            regs[dst] = _pack(*res, fmt)
        else:
            raise AssertionError(f"emulator does not know {op}")
    return outs


def _bits16(x: torch.Tensor) -> np.ndarray:
    return x.view(torch.int16).numpy().astype(np.uint16).astype(np.uint64)


@pytest.mark.parametrize("dtype,scaled", [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float16, False)],
                         ids=["bf16", "bf16-scaled", "fp16"])
def test_pair_asm_gives_q_minus_z_of_code_j_of_both_words(dtype, scaled):
    rng = np.random.default_rng(5)
    n = 512
    even, odd = (rng.integers(0, 2**32, n, dtype=np.uint64) for _ in range(2))
    z1, z2 = rng.integers(0, 16, n), rng.integers(0, 16, n)
    base = 0xC300 if dtype == torch.bfloat16 else 0xE400  # -(MAGIC + z), as _deq_asm builds it
    nz = [np.uint64(base) | z.astype(np.uint64) for z in (z1, z2)]
    s = [torch.from_numpy(rng.uniform(1e-3, 0.1, n)).to(torch.bfloat16) for _ in range(2)]
    ins = {16: even, 17: odd, 18: nz[0] * np.uint64(0x10001), 19: nz[1] * np.uint64(0x10001)}
    ins[20], ins[21] = (_bits16(x) * np.uint64(0x10001) for x in s)
    asm = {(torch.bfloat16, False): QK.PAIR_ASM_BF16, (torch.bfloat16, True): QK.PAIR_ASM_BF16_SCALED,
           (torch.float16, False): QK.PAIR_ASM_F16}[(dtype, scaled)].value
    out = run_ptx(asm, ins)
    for j in range(8):
        z, sc = (z1, s[0]) if j < 4 else (z2, s[1])
        for word, slot in ((even, j), (odd, j + 8)):
            q = (word >> np.uint64(4 * j) & np.uint64(0xF)).astype(np.int64)
            want = torch.from_numpy((q - z).astype(np.float64)).float()
            if scaled:  # one rounding of the exact (q - z) * s, as DEQ 0's fp32 multiply then cast
                want = want * sc.float()
            assert np.array_equal(out[slot], _bits16(want.to(dtype))), (j, slot)


def test_emulator_knows_the_instruction_semantics():
    one = {16: np.array([0x12345678], dtype=np.uint64), 17: np.array([0x9ABCDEF0], dtype=np.uint64)}
    out = run_ptx("{\nprmt.b32 t0, $16, $17, 0x5410;\nmov.b32 {$0, $1}, t0;\n}", one)
    assert (int(out[0][0]), int(out[1][0])) == (0x5678, 0xDEF0)
    out = run_ptx("{\nlop3.b32 t0, $16, 0x000F000F, 0x43004300, 0xEA;\nmov.b32 {$0, $1}, t0;\n}", one)
    assert (int(out[0][0]), int(out[1][0])) == (0x4308, 0x4304)  # (a & b) | c
