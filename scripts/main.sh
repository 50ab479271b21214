#!/usr/bin/env bash
# The main job, on the CPU: set up, train (or reuse) the digits model, benchmark the samplers on it,
# print the table, write the Pareto plot, end with a short summary. Outputs go to runs/main_job/bench/
# (untracked): results.json, results.md, summary.md, pareto.png, lead/ (the few-step lead at 5 and 10
# NFE with LEAD_N samples per row), and timing.json / timing.md with the wall time of each part.
# REFRESH_RESULTS=1 writes them to benchmarks/results/main_job/ instead, the committed reference results.
#
# The model: the reference digits recipe (U-Net, VP process, EDM loss, 2000 steps of batch 128 on
# scikit-learn's 8x8 digits) at 16 base channels instead of 32, which trains in about half the time
# and samples about 3x faster on one CPU thread (training about 5 minutes in two data-parallel
# processes, 0.15 s a step against 0.18 in one; the benchmark about 8 on 2 cores), so that the whole
# job stays under 15 minutes.
# An existing checkpoint in $CKPT is reused (and a partial one resumed).
#
# Every row carries paired 95% bootstrap intervals (400 resamples of the sample indices, shared by
# all rows: they start from the same x_T) and its timing is the median of at least three timed
# batches of its own samples (no extra sampling).
#
# Environment: CKPT (default runs/main_job/digits), OUT (default runs/main_job/bench, or
# benchmarks/results/main_job with REFRESH_RESULTS=1), N (samples per row, default 600), LEAD_N
# (samples per row of the lead part, default 4000), NPROC
# (processes for training and the benchmark via torchrun, one per core: default 2; in the benchmark
# each takes half of every row's samples, so a row's time is that of its half), BOOTSTRAP (resamples, default 400),
# SKIP_SETUP=1 to use the current environment as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${CKPT:-runs/main_job/digits}
if [ "${REFRESH_RESULTS:-0}" = "1" ]; then
    OUT=${OUT:-benchmarks/results/main_job}
else
    OUT=${OUT:-runs/main_job/bench}
fi
mkdir -p "$OUT"
BOOTSTRAP=${BOOTSTRAP:-400}
N=${N:-600}
LEAD_N=${LEAD_N:-4000}
NPROC=${NPROC:-2}
now() { date +%s.%N; }

t0=$(now)
if [ "${SKIP_SETUP:-0}" != "1" ]; then
    bash scripts/setup.sh
fi
. .venv/bin/activate
export OMP_NUM_THREADS=1
t1=$(now)

# one process per core (data parallel, the same steps as one process up to float32 rounding of the
# gradient sums: tests/test_train_ddp.py)
if [ "$NPROC" -gt 1 ]; then
    SDESOLVE=(python -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m sdesolve --)
else
    SDESOLVE=(python -m sdesolve)
fi
if [ -f "$CKPT/last.pt" ] || [ -f "$CKPT/prev.pt" ]; then
    trained="resumed or reused"
    "${SDESOLVE[@]}" train --resume --out "$CKPT" --threads 1
else
    trained="trained"
    "${SDESOLVE[@]}" train --data digits --model unet --process vp --loss edm --channels 16 \
        --steps 2000 --batch-size 128 --seed 0 --threads 1 --out "$CKPT"
fi
t2=$(now)

BENCH=(bench --checkpoint "$CKPT"
    --solvers "eulermaruyama,euler,ipndm,deis,dpmsolverpp:order=2,dpmsolverpp:order=2,sde=true,unipc,sasolver,dopri5"
    --nfe 5,10,20,40 --tolerances 1e-3 --reference eulermaruyama@1000
    --optimized-grids dp --optimized-nfe 5,10 --optimized-solvers "unipc,dpmsolverpp:order=2"
    --optimization-n 32 --teacher-steps 64 --candidates 32 --sweeps 2
    --peers "kdiffusion:dpmpp_2m,kdiffusion:dpmpp_2m_sde,diffusers-dpmsolvermultistep,diffusers-unipc,torchdiffeq:dopri5,torchsde:euler"
    --n "$N" --seed 0 --batch-size 500 --repeats 3 --bootstrap "$BOOTSTRAP" --threads 1 --quiet --out "$OUT")
"${SDESOLVE[@]}" "${BENCH[@]}"
# The few-step lead at 5 and 10 NFE with LEAD_N samples per row: the deterministic samplers that
# lead at 5-10 NFE on this model (benchmarks/results/few_step/LEAD.md) on their default grids against
# the peers' deterministic samplers, orders 2 and 3, where paired differences of a few tenths of FD
# (10 NFE, every row near the probability-flow ODE's limit) need more samples than N gives; with
# UniPC-3 on its grid optimized for this model.
LEAD=(bench --checkpoint "$CKPT" --solvers "unipc,unipc:order=3,dpmsolverpp:order=3,sasolver:tau=0,sasolver:tau=0,predictor_order=2,corrector_order=2"
    --nfe 5,10 --tolerances "" --reference none
    --peers "kdiffusion:dpmpp_2m,diffusers-dpmsolvermultistep,diffusers-dpmsolvermultistep:3,diffusers-unipc,diffusers-unipc:3"
    --optimized-grids dp --optimized-solvers unipc:order=3 --optimization-n 32 --teacher-steps 64 --candidates 32 --sweeps 2
    --n "$LEAD_N" --seed 0 --batch-size 1000 --repeats 3 --bootstrap "$BOOTSTRAP" --threads 1 --quiet --out "$OUT/lead")
"${SDESOLVE[@]}" "${LEAD[@]}"
t3=$(now)

python - "$OUT" "$t0" "$t1" "$t2" "$t3" "$trained" "$CKPT" <<'EOF'
import json, os, sys, time
out, t0, t1, t2, t3, trained, ckpt = sys.argv[1], *map(float, sys.argv[2:6]), sys.argv[6], sys.argv[7]
from sdesolve.bench.runner import cpu_name
cpu = cpu_name()
t = {"setup_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1), "model": trained, "checkpoint": ckpt,
     "bench_s": round(t3 - t2, 1), "total_without_setup_s": round(t3 - t1, 1), "total_s": round(t3 - t0, 1),
     "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": f"{cpu}, {os.cpu_count()} cores",
     "load_average_1min": round(os.getloadavg()[0], 2), "command": "bash scripts/main.sh"}
json.dump(t, open(os.path.join(out, "timing.json"), "w"), indent=1)
lines = ["# Main job: wall time", "", f"`bash scripts/main.sh` on {t['cpu']} (load average at the end "
         f"{t['load_average_1min']}), finished {t['finished']}.", "",
         "| part | seconds |", "|---|---:|",
         f"| set-up (scripts/setup.sh) | {t['setup_s']} |", f"| model ({trained}) | {t['train_s']} |",
         f"| benchmark | {t['bench_s']} |", f"| total without set-up | {t['total_without_setup_s']} |",
         f"| total | {t['total_s']} |", ""]
open(os.path.join(out, "timing.md"), "w").write("\n".join(lines))
print("\n".join(lines))
EOF
echo
echo "## Summary ($OUT/summary.md)"
cat "$OUT/summary.md"
echo
echo "## The few-step lead, $LEAD_N samples per row ($OUT/lead/summary.md)"
cat "$OUT/lead/summary.md"
