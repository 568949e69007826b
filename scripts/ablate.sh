#!/usr/bin/env bash
# Runs the lever ablations (configs/ablation/NAME.json) one after another. Each run resumes if interrupted;
# a finished run (calibration.json written) is skipped, and a lock keeps two runners off the same run, so
# two runners with one thread each can share the list. Usage: scripts/ablate.sh [--after NAME] [NAME...]
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--after" ]; then  # wait until that run has finished (another runner holds it)
  until [ -f "runs/abl-$2/calibration.json" ]; do sleep 30; done
  shift 2
fi
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(r no-mask no-pairs sbi downscaled no-upload-aug r-seed2)
mkdir -p runs
for name in "${names[@]}"; do
  [ -f "runs/abl-$name/calibration.json" ] && continue
  (
    flock -n 9 || { echo "== $name: another runner has it"; exit 0; }
    echo "== $name $(date -u +%H:%M:%S)"
    .venv/bin/deepscreen train --config "configs/ablation/$name.json" || echo "!! $name failed"
  ) 9>"runs/abl-$name.lock"
done
echo "== done $(date -u +%H:%M:%S)"
