"""Fused sampler updates against eager PyTorch and torch.compile, with the device's copy bandwidth.

One command, one JSON (device name, versions, command line, every figure):

    python benchmarks/bench_kernels.py --out benchmarks/results/kernels_<device>.json

For each state size (1M .. 256M elements by default, as 64 samples) and dtype (float32,
bfloat16) it times, with CUDA events (median of ``--reps``):

* ``copy``: ``dst.copy_(src)``, the device copy bandwidth measured in the same run;
* each fused update (Triton, noise generated in-kernel) and the same update in eager PyTorch
  and under ``torch.compile`` (noise from ``torch.randn_like``, the way one writes it in
  PyTorch), and ``*_ref`` (sdesolve's counter-based noise in eager PyTorch) up to ``--ref-max``.

Achieved bandwidth counts the bytes an update must move (each input read once, each output
written once, per-sample scalars neglected) over the measured time; ``frac_copy`` divides it by
the copy bandwidth at the same size and dtype. Working sets that fit in L2 (50 MB on an H100)
can exceed DRAM bandwidth; the copy at that size profits alike.

The whole-loop figure is steps per second of Euler-Maruyama on the reverse VP SDE for 1M 2-D
points (Gaussian data, whose score -x is exact), with the drift from PyTorch ops: eager,
fused (Triton update), torch.compile of the eager step, and the fused step captured in a CUDA
graph.

The sampling figures are steps per second of whole ``sdesolve.sample`` calls (x_T given, the
loop as users run it, non-finite check included) for (a) 1M 2-D points with the exact score of
a 3-component Gaussian mixture (held on the device) and (b) a small U-Net
(``sdesolve.train.models.UNet``, 1 x 8 x 8, ch 64, randomly initialised, eps-parametrised):
eager with the fused updates, eager with the ``*_ref`` updates (``SDESOLVE_KERNELS=torch``), and
``cuda_graph=True`` (the whole loop captured once, then replayed; the first call, warm-up plus
capture, is reported separately as ``first_call_s``). Each rate is steps x calls / wall time
over ``--sample-reps`` calls after a first one.

Without CUDA it measures nothing, says so, writes ``{"skipped": ...}`` to ``--out`` and exits 0.
The pytest-benchmark functions at the end run the em_step comparison at 16M elements
(``pytest benchmarks/bench_kernels.py -m gpu``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

try:
    import pytest
except ImportError:  # the script runs without pytest
    pytest = None

import sdesolve as sds
from sdesolve.kernels import (ENV_VAR, affine_noise_step, affine_noise_step_ref, em_step, em_step_ref, langevin_step,
                              langevin_step_ref, rk_combine, rk_combine_ref)
from sdesolve.noise import Noise
from sdesolve.integrate import clear_cuda_graphs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SAMPLES = 64

# Dormand & Prince (1980): 5th-order weights and the error weights b - b_hat
DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
DOPRI5_BHAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
DOPRI5_E = tuple(b - c for b, c in zip(DOPRI5_B, DOPRI5_BHAT))


# --- timing ----------------------------------------------------------------------------------------

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, reps: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _attempt(fn):
    """(value, None) or (None, error text): one failing comparison does not end the run."""
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _compile(fn):
    return torch.compile(fn, dynamic=False)


# --- the updates, eager PyTorch versions ------------------------------------------------------------

def _col(v, x):
    return v.reshape((-1,) + (1,) * (x.dim() - 1))


def eager_em(x, drift, g, dt):
    return x + drift * _col(dt, x) + _col(g * dt.abs().sqrt(), x) * torch.randn_like(x)


def eager_affine(x, a, s, b, c):
    return _col(a, x) * x + _col(b, x) * s + _col(c, x) * torch.randn_like(x)


def eager_langevin(x, s, snr, alpha):
    z = torch.randn_like(x)
    s_norm = s.flatten(1).float().norm(dim=1)
    z_norm = z.flatten(1).float().norm(dim=1)
    eps = 2 * alpha * (snr * z_norm / s_norm) ** 2
    return x + _col(eps, x).to(x.dtype) * s + _col((2 * eps).sqrt(), x).to(x.dtype) * z


def eager_rk(y0, ks, dt, rtol, atol):
    acc = sum(b * k for b, k in zip(DOPRI5_B, ks) if b != 0.0)
    est = sum(e * k for e, k in zip(DOPRI5_E, ks) if e != 0.0)
    d = _col(dt, y0)
    y1 = y0 + d * acc
    ratio = (d * est).float() / (atol + rtol * torch.maximum(y0.abs(), y1.abs()).float())
    return y1, ratio.flatten(1).pow(2).mean(1).sqrt()


# --- per-size measurements ---------------------------------------------------------------------------

def _case(name, nbytes, fused, eager, ref, device, reps, copy_gbps, use_compile, with_ref):
    row = {"kernel": name, "bytes": nbytes}
    ms = time_ms(fused, device, reps)
    row.update(fused_ms=ms, fused_gbps=nbytes / ms / 1e6, frac_copy=nbytes / ms / 1e6 / copy_gbps)
    row["eager_ms"], err = _attempt(lambda: time_ms(eager, device, reps))
    if err:
        row["eager_error"] = err
    if use_compile:
        compiled = _compile(eager)
        row["compile_ms"], err = _attempt(lambda: time_ms(compiled, device, reps))
        if err:
            row["compile_error"] = err
    if with_ref:
        row["ref_ms"], err = _attempt(lambda: time_ms(ref, device, max(3, reps // 4), warmup=1))
        if err:
            row["ref_error"] = err
    for other in ("eager", "compile", "ref"):
        if row.get(f"{other}_ms"):
            row[f"speedup_vs_{other}"] = row[f"{other}_ms"] / ms
    return row


def bench_size(n: int, dtype: torch.dtype, device, reps: int, use_compile: bool, ref_max: int) -> dict:
    B = SAMPLES
    N = n // B
    es = torch.tensor([], dtype=dtype).element_size()
    gen = torch.Generator(device=device).manual_seed(0)

    def rnd():
        return torch.randn((B, N), generator=gen, device=device, dtype=dtype)

    src, dst = rnd(), torch.empty((B, N), device=device, dtype=dtype)
    copy_ms = time_ms(lambda: dst.copy_(src), device, reps)
    copy_gbps = 2 * n * es / copy_ms / 1e6
    del src, dst
    out = {"numel": B * N, "samples": B, "dtype": str(dtype).replace("torch.", ""),
           "copy_ms": copy_ms, "copy_gbps": copy_gbps, "kernels": []}
    with_ref = n <= ref_max
    noise = Noise.from_seed(0, B, device=device).at(1)
    dt = torch.full((B,), -1e-3, device=device, dtype=torch.float64)
    g = torch.rand(B, device=device) + 0.5
    rows = out["kernels"]
    with torch.inference_mode():
        x, drift = rnd(), rnd()
        dt32 = dt.float()
        rows.append(_case(
            "em_step", 3 * n * es,
            lambda: em_step(x, drift, g, dt, noise, 0),
            lambda: eager_em(x, drift, g, dt32),
            lambda: em_step_ref(x, drift, g, dt, noise, 0),
            device, reps, copy_gbps, use_compile, with_ref))
        s = drift
        a, b, c = g, dt32, g.sqrt()
        rows.append(_case(
            "affine_noise_step", 3 * n * es,
            lambda: affine_noise_step(x, a, s, b, c, noise, 0),
            lambda: eager_affine(x, a, s, b, c),
            lambda: affine_noise_step_ref(x, a, s, b, c, noise, 0),
            device, reps, copy_gbps, use_compile, with_ref))
        rows.append(_case(
            "langevin_step", 4 * n * es,
            lambda: langevin_step(x, s, 0.16, g, noise, 0),
            lambda: eager_langevin(x, s, 0.16, g),
            lambda: langevin_step_ref(x, s, 0.16, g, noise, 0),
            device, reps, copy_gbps, use_compile, with_ref))
        del x, drift, s
        if device.type == "cuda":
            torch.cuda.empty_cache()
        y0 = rnd()
        ks = [rnd() for _ in DOPRI5_B]
        used = 1 + sum(1 for b_, e_ in zip(DOPRI5_B, DOPRI5_E) if b_ != 0.0 or e_ != 0.0)
        rows.append(_case(
            "rk_combine_dopri5_err", (used + 1) * n * es,
            lambda: rk_combine(y0, ks, DOPRI5_B, dt, DOPRI5_E, rtol=1e-3, atol=1e-6),
            lambda: eager_rk(y0, ks, dt32, 1e-3, 1e-6),
            lambda: rk_combine_ref(y0, ks, DOPRI5_B, dt, DOPRI5_E, rtol=1e-3, atol=1e-6),
            device, reps, copy_gbps, use_compile, with_ref))
        del y0, ks
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# --- whole loop -----------------------------------------------------------------------------------------

def bench_loop(points: int, steps: int, device, use_compile: bool) -> dict:
    """Reverse VP SDE (beta linear in t, 0.1 .. 20) from t = 1 to 1e-3 for Gaussian data: score -x,
    reverse drift f - g^2 score = -beta x / 2 + beta x, diffusion sqrt(beta)."""
    B = points
    dt = -(1.0 - 1e-3) / steps

    def beta_of(t):
        return 0.1 + t * (20.0 - 0.1)

    def drift_of(x, beta):
        score = -x
        return -0.5 * beta * x - beta * score

    stream = Noise.from_seed(0, B, device=device).stream
    res = {"points": points, "dim": 2, "steps": steps}

    def run(step_fn):
        x = torch.randn(B, 2, device=device)
        t = torch.ones(1, device=device)
        k = torch.zeros(B, dtype=torch.int64, device=device)
        step_fn(x, t, k)  # warm-up (compilation)
        _sync(device)
        x = torch.randn(B, 2, device=device)
        t.fill_(1.0)
        t0 = time.perf_counter()
        for _ in range(steps):
            x = step_fn(x, t, k)
        _sync(device)
        return steps / (time.perf_counter() - t0)

    def eager_step(x, t, k):
        beta = beta_of(t)
        x = x + drift_of(x, beta) * dt + (beta * abs(dt)).sqrt() * torch.randn_like(x)
        t.add_(dt)
        return x

    def fused_step(x, t, k):
        beta = beta_of(t)
        x = em_step(x, drift_of(x, beta), beta.sqrt(), dt, Noise(stream, k), 0)
        t.add_(dt)
        k.add_(1)
        return x

    with torch.inference_mode():
        res["eager_steps_per_s"], err = _attempt(lambda: run(eager_step))
        if err:
            res["eager_error"] = err
        res["fused_steps_per_s"], err = _attempt(lambda: run(fused_step))
        if err:
            res["fused_error"] = err
        if use_compile:
            compiled = _compile(eager_step)
            res["compile_steps_per_s"], err = _attempt(lambda: run(compiled))
            if err:
                res["compile_error"] = err
    if device.type == "cuda":
        res["fused_graph_steps_per_s"], err = _attempt(lambda: _graph_loop(fused_step, B, steps, device))
        if err:
            res["fused_graph_error"] = err
    return res


def _graph_loop(step_fn, B, steps, device):
    """The fused step captured once in a CUDA graph and replayed ``steps`` times."""
    x = torch.randn(B, 2, device=device)
    t = torch.ones(1, device=device)
    k = torch.zeros(B, dtype=torch.int64, device=device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up: compile the kernels outside the capture
            x.copy_(step_fn(x, t, k))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x.copy_(step_fn(x, t, k))
    graph.replay()
    t.fill_(1.0)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


# --- whole sampling loops through sdesolve.sample --------------------------------------------------------

#: a 2-D mixture: weights, means, isotropic variances
MIXTURE = ([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], [0.1, 0.3, 0.2])


def mixture_score(process, device):
    """The exact score of the 3-component 2-D mixture under ``process`` (its tensors are copied
    to the state's device once, on the first call)."""
    return sds.GaussianMixture(*MIXTURE).score(process)


def unet_score(process, device):
    """A randomly initialised small U-Net (the 8 x 8 digits configuration) as an eps model; its
    zero-initialised output convolutions get small random weights so that it computes something."""
    from sdesolve.train.models import UNet

    torch.manual_seed(0)
    model = UNet(in_channels=1, ch=64, mult=(1, 2, 2), blocks=2, attn=(4,), resolution=8).to(device).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and not bool(m.weight.detach().abs().max() > 0):
            torch.nn.init.normal_(m.weight, std=0.02)
    return sds.Score.from_eps(model, process, check=False), model


def _variant(process, score, solver, x_T, steps, reps, device, cuda_graph, kernels):
    """{steps_per_s, first_call_s} of ``reps`` sample calls after a first one."""
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = kernels
    try:
        def call(seed):
            return sds.sample(process, score, solver, x_T=x_T, steps=steps, seed=seed, cuda_graph=cuda_graph).y

        t0 = time.perf_counter()
        call(0)
        _sync(device)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for r in range(reps):
            call(r + 1)
        _sync(device)
        return {"steps_per_s": steps * reps / (time.perf_counter() - t0), "first_call_s": first}
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old


def bench_sampling(points: int, steps: int, unet_batch: int, unet_steps: int, reps: int, device) -> list:
    """Whole ``sample`` loops: eager (fused / *_ref updates) and cuda_graph=True, see the module doc."""
    process = sds.VPSDE()
    rows = []
    solvers = {
        "EulerMaruyama": sds.EulerMaruyama(),
        "PC(ReverseDiffusion, Langevin)": sds.PredictorCorrector(sds.ReverseDiffusion(),
                                                                 sds.Langevin(0.16, 1, expected_norms=False)),
        "DDIM(eta=1)": sds.DDIM(1.0),
        "DPMSolverPP(2)": sds.DPMSolverPP(2),
    }
    gen = torch.Generator(device=device).manual_seed(0)
    cases = [("gmm_2d", mixture_score(process, device), (points, 2), steps, list(solvers))]
    unet, _model = unet_score(process, device)
    cases.append(("unet_8x8", unet, (unet_batch, 1, 8, 8), unet_steps, ["EulerMaruyama", "DPMSolverPP(2)"]))
    variants = [("fused", False, "auto"), ("ref", False, "torch")]
    if device.type == "cuda":
        variants.append(("fused_graph", True, "auto"))
    with torch.inference_mode():
        for case, score, shape, n, names in cases:
            x_T = torch.randn(shape, generator=gen, device=device)
            for name in names:
                row = {"case": case, "shape": list(shape), "steps": n, "solver": name}
                for label, graph, kernels in variants:
                    res, err = _attempt(lambda: _variant(process, score, solvers[name], x_T, n, reps, device, graph,
                                                         kernels))
                    if err:
                        row[f"{label}_error"] = err
                    else:
                        row[f"{label}_steps_per_s"] = res["steps_per_s"]
                        row[f"{label}_first_call_s"] = res["first_call_s"]
                if row.get("fused_graph_steps_per_s") and row.get("fused_steps_per_s"):
                    row["graph_speedup"] = row["fused_graph_steps_per_s"] / row["fused_steps_per_s"]
                if row.get("ref_steps_per_s") and row.get("fused_steps_per_s"):
                    row["fused_speedup_vs_ref"] = row["fused_steps_per_s"] / row["ref_steps_per_s"]
                rows.append(row)
                print("sample", json.dumps(row))
            if device.type == "cuda":
                clear_cuda_graphs()
                torch.cuda.empty_cache()
    return rows


# --- the command -----------------------------------------------------------------------------------------

def _parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * scale)


def environment(args_line: str, device) -> dict:
    info = {
        "command": args_line,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "SDESOLVE_KERNELS": os.environ.get("SDESOLVE_KERNELS", ""),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device=torch.cuda.get_device_name(device), memory_gib=props.total_memory / 2**30,
                    sm_count=props.multi_processor_count)
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()})"
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/kernels.json", help="JSON file to write")
    parser.add_argument("--sizes", default="1M,4M,16M,64M,256M", help="elements per state, comma separated")
    parser.add_argument("--dtypes", default="fp32,bf16", help=f"comma separated, of {','.join(DTYPES)}")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--ref-max", default="16M", help="largest size at which *_ref is timed")
    parser.add_argument("--loop-points", default="1M")
    parser.add_argument("--loop-steps", type=int, default=200)
    parser.add_argument("--sample-points", default="1M", help="2-D points of the mixture sampling loops")
    parser.add_argument("--sample-steps", type=int, default=100)
    parser.add_argument("--unet-batch", type=int, default=256)
    parser.add_argument("--unet-steps", type=int, default=50)
    parser.add_argument("--sample-reps", type=int, default=5, help="timed sample calls after the first")
    parser.add_argument("--sections", default="sizes,loop,sampling",
                        help="comma separated, of sizes (per-update GB/s), loop (hand-written EM loop), "
                             "sampling (sdesolve.sample loops with and without CUDA graphs)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparisons")
    parser.add_argument("--device", default="cuda",
                        help="cuda (default); cpu only checks this script (with TRITON_INTERPRET=1 and "
                             "SDESOLVE_KERNELS=triton the kernels run interpreted: tiny sizes only)")
    args = parser.parse_args(argv)
    line = " ".join([os.path.basename(sys.executable)] + [sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_kernels: no CUDA device, nothing measured")
        _write(args.out, {"environment": environment(line, torch.device("cpu")), "skipped": "no CUDA device"})
        return 0
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    import torch._dynamo as dynamo  # one compiled variant per size and dtype: lift the recompile limit

    dynamo.config.cache_size_limit = 256
    if hasattr(dynamo.config, "recompile_limit"):
        dynamo.config.recompile_limit = 256
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    result = {"environment": environment(line, device), "sizes": [], "loop": None, "sampling": None}
    for name in args.dtypes.split(",") if "sizes" in sections else ():
        dtype = DTYPES[name.strip()]
        for size in args.sizes.split(","):
            n = _parse_size(size)
            row, err = _attempt(lambda: bench_size(n, dtype, device, args.reps, not args.no_compile,
                                                   _parse_size(args.ref_max)))
            row = row or {"numel": n, "dtype": name, "error": err}
            result["sizes"].append(row)
            _report(row)
            _write(args.out, result)
    if "loop" in sections:
        points = _parse_size(args.loop_points)
        result["loop"], err = _attempt(lambda: bench_loop(points, args.loop_steps, device, not args.no_compile))
        if err:
            result["loop"] = {"error": err}
        print("loop", json.dumps(result["loop"]))
        _write(args.out, result)
    if "sampling" in sections:
        result["sampling"], err = _attempt(lambda: bench_sampling(
            _parse_size(args.sample_points), args.sample_steps, args.unet_batch, args.unet_steps, args.sample_reps,
            device))
        if err:
            result["sampling"] = {"error": err}
        _write(args.out, result)
    print(f"wrote {args.out}")
    return 0


def _report(row):
    if "error" in row:
        print(f"{row['dtype']} {row['numel']}: {row['error']}")
        return
    print(f"{row['dtype']:>8} {row['numel']:>11,d}  copy {row['copy_gbps']:8.1f} GB/s")
    for k in row["kernels"]:
        extra = "  ".join(f"x{k[f'speedup_vs_{o}']:.2f} vs {o}" for o in ("eager", "compile", "ref")
                          if f"speedup_vs_{o}" in k)
        print(f"    {k['kernel']:<24} {k['fused_gbps']:8.1f} GB/s  {100 * k['frac_copy']:5.1f}% of copy  {extra}")


def _write(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v))
    os.replace(tmp, path)


# --- pytest-benchmark (GPU only) -------------------------------------------------------------------------

if pytest is not None:
    @pytest.fixture(scope="module")
    def em_inputs():
        B, N = SAMPLES, 2**24 // SAMPLES
        x = torch.randn(B, N, device="cuda")
        return x, torch.randn_like(x), torch.rand(B, device="cuda") + 0.5, torch.full((B,), -1e-3, device="cuda"), \
            Noise.from_seed(0, B, device="cuda")

    def _timed(benchmark, fn):
        def call():
            fn()
            torch.cuda.synchronize()

        benchmark.pedantic(call, rounds=30, warmup_rounds=3)

    @pytest.mark.parametrize("variant", ["fused", "eager", "compile"])
    @pytest.mark.gpu
    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    def test_em_step_16m_fp32(benchmark, em_inputs, variant):
        x, drift, g, dt, noise = em_inputs
        if variant == "fused":
            fn = lambda: em_step(x, drift, g, dt, noise, 0)  # noqa: E731
        else:
            update = eager_em if variant == "eager" else _compile(eager_em)
            fn = lambda: update(x, drift, g, dt)  # noqa: E731
        with torch.inference_mode():
            _timed(benchmark, fn)


if __name__ == "__main__":
    sys.exit(main())
