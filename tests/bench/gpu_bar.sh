#!/usr/bin/env bash
# The four figures of issue #4's bar on one GPU, each beside transformers where the protocol has a transformers side.
# Run from the repo root on a CUDA machine: bash tests/bench/gpu_bar.sh OUT_DIR [llama|qwen|offline|ttft|f32 ...]
# One JSON file per part in OUT_DIR, progress of all parts in OUT_DIR/bench.log.
# AGAINST="" skips the transformers side (quicker iterations); the bar's figures are taken with it.
set -u
out=${1:?usage: gpu_bar.sh OUT_DIR [part ...]}
shift
parts=${*:-llama qwen ttft offline}
mkdir -p "$out"
cfg=tests/fixtures/bench_configs
against=${AGAINST-"--against transformers"}
bench() {
  name=$1; shift
  echo "== $name: llmctl bench $*" | tee -a "$out/bench.log"
  timeout 300 llmctl bench "$@" --json >"$out/$name.json" 2>>"$out/bench.log"
  echo "rc=$?"
}
for part in $parts; do
  case $part in
    llama) bench llama-3-8b "$cfg/llama-3-8b" --random-weights --dtype bfloat16 $against \
             --input-len 128 --output-len 128 --batch-size 64 --num-prompts 256 --repeats 3 ;;
    qwen) bench qwen2.5-0.5b "$cfg/qwen2.5-0.5b" --random-weights --dtype bfloat16 $against \
            --input-len 128 --output-len 128 --batch-size 64 --num-prompts 256 --repeats 3 ;;
    ttft) bench llama-3-8b-ttft2048 "$cfg/llama-3-8b" --random-weights --dtype bfloat16 $against \
            --input-len 2048 --output-len 2 --batch-size 1 --num-prompts 4 --repeats 5 ;;
    offline) bench llama-3-8b-offline "$cfg/llama-3-8b" --random-weights --dtype bfloat16 \
               --input-len 200 --output-len 180 --batch-size 64 --num-prompts 1000 --repeats 1 ;;
    offline256) bench llama-3-8b-offline256 "$cfg/llama-3-8b" --random-weights --dtype bfloat16 --max-num-seqs 256 \
               --input-len 200 --output-len 180 --batch-size 64 --num-prompts 1000 --repeats 1 ;;  # the default below 70 GiB
    f32) bench qwen2.5-0.5b-float32 "$cfg/qwen2.5-0.5b" --random-weights --dtype float32 $against \
           --input-len 32 --output-len 17 --batch-size 2 --num-prompts 4 --repeats 1 ;;  # 16 greedy steps after the first
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
