#!/usr/bin/env bash
# Runs the lever ablations (configs/ablation/NAME.json) one after another. Each run resumes if interrupted;
# a finished run (calibration.json written) is skipped, and a lock keeps two runners off the same run, so
# two runners with one thread each can share the list.
# Usage: scripts/ablate.sh [--set v2] [--after NAME] [NAME...]
# --set v2 runs the pretrained-start levers (configs/ablation-v2, runs/abl2-NAME) instead of the first set.
set -u
cd "$(dirname "$0")/.."
folder=configs/ablation prefix=abl
if [ "${1:-}" = "--set" ]; then folder="configs/ablation-$2" prefix="abl${2#v}"; shift 2; fi
if [ "${1:-}" = "--after" ]; then  # wait until that run has finished (another runner holds it)
  until [ -f "runs/$prefix-$2/calibration.json" ]; do sleep 30; done
  shift 2
fi
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  if [ "$prefix" = abl ]; then names=(r no-mask no-pairs sbi downscaled no-upload-aug r-seed2)
  else names=(r gan-x3 mnv2 irv1-random head-first layer-decay w224 one-fake no-gan sbi one-lr); fi
fi
mkdir -p runs
for name in "${names[@]}"; do
  [ -f "runs/$prefix-$name/calibration.json" ] && continue
  (
    flock -n 9 || { echo "== $name: another runner has it"; exit 0; }
    echo "== $name $(date -u +%H:%M:%S)"
    .venv/bin/deepscreen train --config "$folder/$name.json" --no-progress || echo "!! $name failed"
  ) 9>"runs/$prefix-$name.lock"
done
echo "== done $(date -u +%H:%M:%S)"
