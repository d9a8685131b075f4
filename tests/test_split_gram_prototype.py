"""The split bf16 covariance prototype (benchmarks/triton_split_gram.py, issue 3's GPU lead) computes the
covariance within the issue's 1e-7 bound in Triton's interpreter; its two-slice variant does not on centred maps,
which is why three slices are the default. The GPU's own rounding is checked by benchmarks/gpu_checks.sh. The
exact fused prototype (benchmarks/triton_gram.py), whose tiling (benchmarks/triton_tiles.py) it shares, stays exact
in the interpreter too."""

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

SCRIPT = """
import torch, triton_split_gram as split
generator = torch.Generator().manual_seed(1)
centred = [(torch.randn(4, 24, 8, 8, generator=generator) * 3).to(torch.bfloat16) for _ in range(2)]
exact = split.exact_covariance(centred)
for slices in (2, 3):
    found = split.split_covariance(centred, block_c=16, block_n=16, slices=slices, target_programs=4)
    print(slices, float(((found - exact) ** 2).sum() ** 0.5 / (exact ** 2).sum() ** 0.5))
"""


def _interpreted(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(BENCHMARKS.parent), str(BENCHMARKS)])}
    return subprocess.run([sys.executable, *args], cwd=BENCHMARKS, env=env, capture_output=True, text=True,
                          timeout=300)


def test_interpreted_check_passes_on_relu_offset_and_gaussian_maps():
    done = _interpreted("triton_split_gram.py", "--check-interpreted")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if "error" in line]
    assert len(lines) == 9 and all("dims identical" in line for line in lines)
    assert done.stdout.rstrip().endswith("accuracy ok")


def test_three_slices_keep_the_bound_where_two_do_not():
    done = _interpreted("-c", SCRIPT)
    assert done.returncode == 0, done.stderr
    errors = {int(slices): float(error) for slices, error in (line.split() for line in done.stdout.splitlines())}
    assert errors[3] <= 1e-7 < errors[2]


# triton_gram.py's command line, --check-interpreted for each variant, in one process: a process per variant only
# imported torch and Triton again (the variant is read by main(), and each variant's kernel is its own compilation)
BOTH_VARIANTS = """
import sys
sys.argv = ["triton_gram.py", "--check-interpreted"]  # before its import: it sets TRITON_INTERPRET from them
import triton_gram
for variant in ("float32", "fma"):
    sys.argv = ["triton_gram.py", "--check-interpreted", "--variant", variant]
    code = triton_gram.main()
    print(f"=== {variant} exited {code}", flush=True)
"""


def test_the_fused_prototype_sharing_the_tiling_stays_exact_in_the_interpreter():
    done = _interpreted("-c", BOTH_VARIANTS)
    assert done.returncode == 0, done.stdout + done.stderr
    outputs = done.stdout.split("=== ")
    for variant, output, said in zip(("float32", "fma"), outputs, outputs[1:]):
        assert said.startswith(f"{variant} exited 0"), done.stdout + done.stderr
        lines = [line for line in output.splitlines() if "gram" in line]
        assert len(lines) == 6 and output.rstrip().endswith("accuracy ok"), (variant, output)
    assert len(outputs) == 3 and outputs[2].strip() == "fma exited 0", done.stdout
