#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md in one run, sized for one call
# of the device tool (10 minutes at most). On an H200 on 2026-12-04 the
# parts took about 121, 96, 85 and 207 s (8.5 minutes). In the repository
# root:
#
#   bash benchmarks/gpu_wheels.sh            # here, once: fills .whl/
#   bash benchmarks/gpu.sh [PART ...]        # there, with carry [".whl"]
#
# With one 15-minute lease, issue 30's goals 1-4 need two calls: `compile
# sample small` (the train step against torch.compile, with its compile
# time and MFU; 256 x 1000-step sampling with the sampler's compile time;
# the digits config's steps/s: about 6 minutes), then `profile` (about 6);
# `candidates` next, in another lease.
#
# PARTs (default: all, in this order), each under its own time limit so
# that one slow part leaves the others' results:
#   train    train step, cifar10 batch 128, bf16, vs PyTorch eager (170 s)
#   ratio    sampling 256 images x 100 steps, bf16, vs DDPMPipeline (110 s)
#   sample   sampling 256 images x 1000 steps, bf16, JAX alone: the
#            paper-sized goal's absolute time (130 s)
#   compile  train step vs PyTorch under torch.compile, whose first call
#            alone took 91 s (250 s)
#   profile  benchmarks/op_profile.py: the top ops of the train step (batch
#            128) and of the sampler (256 images x 100 steps), with CUDA
#            graphs off so that the trace shows each op; traces in
#            $OUT/profile_train and $OUT/profile_sample (200 + 150 s; not
#            in the default set: run it as its own call, or instead of a
#            part already measured)
#   small    goal 4: the digits config (tiny8, batch 64, float32), JAX
#            alone, 200 steps a run at 1 and at 20 steps per jitted call
#            (60 s each)
#   candidates  issue 30's A/B candidates, JAX alone, 3 runs each, each in
#            its own process after the plain program it is compared with
#            (after the GPU test of cuDNN attention's numerics):
#            the train step (batch 128) with model.attention_impl=cudnn
#            and with XLA's autotuning off (--xla_gpu_autotune_level=0:
#            compile time against step time), the sampler (256 images x
#            100 steps) with attention_impl=cudnn (about 90 s per train
#            run, 30 s per sampler run; not in the default set)
# Logs go to $OUT (the device tool's folder that comes back) or
# /tmp/ddpm_jax_gpu; each part's last lines are printed. The train parts
# print the MFU against GPU_BENCH_PEAK TFLOP/s (default 989).
# GPU_BENCH_CONFIG=tiny8 GPU_BENCH_FLAGS= GPU_BENCH_PEAK= runs the same
# parts on the CPU with a tiny config (a check of this script, not a
# benchmark).
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/ddpm_jax_gpu}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/ddpm_jax_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/ddpm_jax_site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU in one process: JAX takes half of its
# memory up front instead of its default 75%, which leaves PyTorch room.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-.5}
config=${GPU_BENCH_CONFIG:-cifar10}
extra=${GPU_BENCH_FLAGS---bf16}
# One device's peak for the train parts' MFU: H100/H200 SXM dense bf16.
peak=${GPU_BENCH_PEAK-989}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    2>/dev/null || echo "no nvidia-smi"
  python3 -c "import jax, torch; print('jax', jax.__version__, \
jax.devices(), 'torch', torch.__version__, torch.cuda.is_available())"
} > "$out/env.log" 2>&1
cat "$out/env.log"

part() {  # name, time limit (s), benchmark arguments
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  timeout "$limit" python3 "$@" > "$out/$name.log" 2>&1
  echo "rc=$? (124: over its ${limit} s)"
  grep -v '^[WI][0-9]\{4\} ' "$out/$name.log" | tail -4
}

parts=${*:-train ratio sample compile}
for p in $parts; do
  case $p in
    train) part train 170 benchmarks/train_step.py --config "$config" \
             --batch 128 ${peak:+--peak_tflops $peak} $extra ;;
    ratio) part ratio 110 benchmarks/sampling.py --config "$config" \
             --num 256 --timesteps 100 $extra ;;
    sample) part sample 130 benchmarks/sampling.py --config "$config" \
              --num 256 --timesteps 1000 --repeats 3 --jax_only $extra ;;
    compile) part compile 250 benchmarks/train_step.py --config "$config" \
               --batch 128 --torch_mode compile ${peak:+--peak_tflops $peak} \
               $extra ;;
    profile)  # CUDA graphs off for these two parts only
      no_graphs="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer="
      XLA_FLAGS=$no_graphs part profile_train 200 benchmarks/op_profile.py \
        --config "$config" --what train --batch 128 --calls 3 \
        --out "$out/profile_train" $extra
      XLA_FLAGS=$no_graphs part profile_sample 150 benchmarks/op_profile.py \
        --config "$config" --what sample --num 256 --timesteps 100 \
        --calls 1 --out "$out/profile_sample" $extra ;;
    small)
      for k in 1 20; do
        part small_k$k 60 benchmarks/train_step.py --config tiny8 --jax_only \
          --steps 200 --steps_per_call $k --repeats 3
      done ;;
    candidates)
      train=(benchmarks/train_step.py --config "$config" --batch 128
             --jax_only --repeats 3 ${peak:+--peak_tflops $peak} $extra)
      sample=(benchmarks/sampling.py --config "$config" --num 256
              --timesteps 100 --jax_only --repeats 3 $extra)
      # cuDNN's attention against the matmul path's error first (tests/
      # test_unet.py; without pytest-xdist, which the image may lack)
      part cand_test 120 -m pytest -q -p no:cacheprovider -o addopts="" \
        tests/test_unet.py -k cudnn
      part cand_train 130 "${train[@]}"
      part cand_train_cudnn 130 "${train[@]}" --set model.attention_impl=cudnn
      XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" \
        part cand_train_autotune0 130 "${train[@]}"
      part cand_sample 60 "${sample[@]}"
      part cand_sample_cudnn 60 "${sample[@]}" --set model.attention_impl=cudnn
      ;;
    *) echo "gpu.sh: unknown part '$p' (train, ratio, sample, compile," \
         "profile, small, candidates)" >&2
       exit 2 ;;
  esac
done
