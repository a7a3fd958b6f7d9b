#!/usr/bin/env bash
# Run an ncjax depth sweep on a Cloud TPU VM (single host or pod slice).
#
#   launch/tpu_vm.sh [options] COMMAND [-- extra flags for python -m ncjax.main]
#
# Every worker of the slice runs the same `python -m ncjax.main` (gcloud ... ssh --worker=all);
# JAX's multi-controller runtime (jax.distributed) ties them together. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh [options] COMMAND [-- extra ncjax.main flags]

Commands
  create    create the TPU VM (or, with --queued, a queued resource and wait until it is ACTIVE)
  setup     copy this working tree to every worker and pip install '.[EXTRAS]' on every worker
  run       run `python -m ncjax.main --config=CONFIG --workdir=WORKDIR ...` on every worker
            (--worker=all), streaming the output; also appended to ~/ncjax/launch.log there
  logs      stream ~/ncjax/launch.log of worker 0 (for a --detach run)
  fetch     copy WORKDIR back from worker 0 (only for a local, non-gs:// workdir)
  delete    delete the TPU VM (and the queued resource with --queued)
  up        create, setup, run (and delete at the end with --delete-after)

Options (environment variable in brackets)
  --project ID          Google Cloud project [NCJAX_PROJECT; default: gcloud's configured project]
  --zone ZONE           zone, e.g. us-central2-b (v4) or us-west4-a (v5e) [NCJAX_ZONE] (required)
  --accelerator-type T  v4-8, v4-32, v5litepod-8, v5litepod-16, v6e-8, ... [NCJAX_ACCELERATOR_TYPE; v4-8]
  --runtime-version V   TPU software version [NCJAX_RUNTIME_VERSION; default from the type:
                        v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
                        v6e v2-alpha-tpuv6e]
  --name NAME           TPU VM name [NCJAX_TPU_NAME; ncjax-$USER]
  --queued              create through a queued resource (named NAME-qr) [NCJAX_QUEUED=1]
  --spot                spot (preemptible) capacity; a preempted sweep resumes on `run` [NCJAX_SPOT=1]
  --config C            config file and presets [NCJAX_CONFIG; configs/vit_depth.py]
  --workdir W           output folder [NCJAX_WORKDIR; runs/ncjax on worker 0]; for pod slices it must be
                        storage every worker sees: gs://BUCKET/PATH or a shared mount
  --python P            Python on the workers [NCJAX_PYTHON; python3]
  --extras E            what `setup` installs, pip install -e '.[E]' [NCJAX_EXTRAS; tpu,gcs,tfds]:
                        tpu (JAX for TPUs), gcs (gcsfs, for gs:// workdirs), tfds (tfds: sources,
                        e.g. the paper preset's tfds:mnist)
  --detach              `run` starts the sweep in the background (nohup) and returns; see `logs`
  --delete-after        `up` deletes the TPU VM when the sweep ends (success or not)
  --dry-run             print the gcloud commands instead of running them
  -h, --help            this text

Examples
  launch/tpu_vm.sh --zone=us-central2-b --accelerator-type=v4-8 up -- --config.depths='(2,4,8)'
  launch/tpu_vm.sh --zone=us-west4-a --accelerator-type=v5litepod-16 --queued --spot \
      --workdir=gs://my-bucket/ncjax/vit_paper --config=configs/vit_depth.py:paper up
  launch/tpu_vm.sh --zone=us-central2-b logs
  launch/tpu_vm.sh --zone=us-central2-b delete
EOF
}

PROJECT=${NCJAX_PROJECT:-}
ZONE=${NCJAX_ZONE:-}
ACCEL=${NCJAX_ACCELERATOR_TYPE:-v4-8}
RUNTIME=${NCJAX_RUNTIME_VERSION:-}
NAME=${NCJAX_TPU_NAME:-ncjax-${USER:-user}}
QUEUED=${NCJAX_QUEUED:-0}
SPOT=${NCJAX_SPOT:-0}
CONFIG=${NCJAX_CONFIG:-configs/vit_depth.py}
WORKDIR=${NCJAX_WORKDIR:-runs/ncjax}
PY=${NCJAX_PYTHON:-python3}
EXTRAS=${NCJAX_EXTRAS:-tpu,gcs,tfds}
DETACH=0
DELETE_AFTER=0
DRY=0
COMMAND=""
EXTRA=()

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  arg=$1
  case $arg in
    --*=*) key=${arg%%=*}; val=${arg#*=}; has_val=1 ;;
    *) key=$arg; val=""; has_val=0 ;;
  esac
  take() {  # the option's value: --key=value or --key value
    if [[ $has_val == 1 ]]; then echo "$val"; else
      [[ $# -ge 1 && -n ${1:-} ]] || die "$key needs a value"; echo "$1"; fi
  }
  shift_extra=0
  case $key in
    -h|--help) usage; exit 0 ;;
    --project) PROJECT=$(take "${2:-}"); shift_extra=$((1 - has_val)) ;;
    --zone) ZONE=$(take "${2:-}"); shift_extra=$((1 - has_val)) ;;
    --accelerator-type) ACCEL=$(take "${2:-}"); shift_extra=$((1 - has_val)) ;;
    --runtime-version) RUNTIME=$(take "${2:-}"); shift_extra=$((1 - has_val)) ;;
    --name) NAME=$(take "${2:-}"); shift_extra=$((1 - has_val)) ;;
    --config) CONFIG=$(take "${2:-}"); shift_extra=$((1 - has_val)) ;;
    --workdir) WORKDIR=$(take "${2:-}"); shift_extra=$((1 - has_val)) ;;
    --python) PY=$(take "${2:-}"); shift_extra=$((1 - has_val)) ;;
    --extras) EXTRAS=$(take "${2:-}"); shift_extra=$((1 - has_val)) ;;
    --queued) QUEUED=1 ;;
    --spot) SPOT=1 ;;
    --detach) DETACH=1 ;;
    --delete-after) DELETE_AFTER=1 ;;
    --dry-run) DRY=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    create|setup|run|logs|fetch|delete|up)
      [[ -z $COMMAND ]] || die "one command at a time (got $COMMAND and $key)"; COMMAND=$key ;;
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
  shift
  [[ $shift_extra == 1 ]] && shift
done

[[ -n $COMMAND ]] || { usage >&2; exit 2; }
[[ -n $ZONE ]] || die "--zone (or NCJAX_ZONE) is required"
[[ $EXTRAS =~ ^[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*$ ]] || die "--extras takes names separated by commas (got '$EXTRAS')"
if [[ -z $RUNTIME ]]; then
  case $ACCEL in
    v4-*) RUNTIME=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    *) die "no default --runtime-version for accelerator type $ACCEL; give one" ;;
  esac
fi

GC=(gcloud)
[[ -n $PROJECT ]] && GC+=(--project="$PROJECT")
TPU=("${GC[@]}" compute tpus tpu-vm)
QR_NAME="$NAME-qr"
REMOTE_DIR='~/ncjax'   # expanded by the workers' shell

squote() {  # one word, quoted for a POSIX shell only when it needs it (readable --dry-run output)
  local re='^[][A-Za-z0-9_./:=@%+,~-]+$'
  if [[ $1 =~ $re ]]; then printf '%s' "$1"; else local q="'\\''"; printf "'%s'" "${1//\'/$q}"; fi
}

run() {  # run a command, or print it (copy-pastable) with --dry-run
  if [[ $DRY == 1 ]]; then
    printf '+'; local a; for a in "$@"; do printf ' '; squote "$a"; done; printf '\n'
  else "$@"; fi
}

quote() { printf '%q ' "$@"; }

do_create() {
  if [[ $QUEUED == 1 ]]; then
    local args=("${GC[@]}" compute tpus queued-resources create "$QR_NAME" --node-id="$NAME" --zone="$ZONE"
                --accelerator-type="$ACCEL" --runtime-version="$RUNTIME")
    [[ $SPOT == 1 ]] && args+=(--spot)
    run "${args[@]}"
    if [[ $DRY == 1 ]]; then
      run "${GC[@]}" compute tpus queued-resources describe "$QR_NAME" --zone="$ZONE" --format='value(state.state)'
      return
    fi
    echo "waiting for queued resource $QR_NAME to become ACTIVE (Ctrl-C leaves it queued)" >&2
    while :; do
      state=$("${GC[@]}" compute tpus queued-resources describe "$QR_NAME" --zone="$ZONE" --format='value(state.state)')
      echo "  $(date +%T) $state" >&2
      case $state in
        ACTIVE) break ;;
        FAILED|SUSPENDED) die "queued resource $QR_NAME is $state" ;;
      esac
      sleep 30
    done
  else
    local args=("${TPU[@]}" create "$NAME" --zone="$ZONE" --accelerator-type="$ACCEL" --version="$RUNTIME")
    [[ $SPOT == 1 ]] && args+=(--spot)
    run "${args[@]}"
  fi
}

do_setup() {
  local repo tarball
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  tarball=${TMPDIR:-/tmp}/ncjax-src.tar.gz
  # Tracked and untracked-but-not-ignored files: the working tree as it is, without runs/ or caches.
  if [[ $DRY == 1 ]]; then
    echo "+ (cd $(printf %q "$repo") && git ls-files -co --exclude-standard -z | tar czf $(printf %q "$tarball") --null -T -)"
  else
    (cd "$repo" && git ls-files -co --exclude-standard -z | tar czf "$tarball" --null -T -)
  fi
  run "${TPU[@]}" scp "$tarball" "$NAME:ncjax-src.tar.gz" --zone="$ZONE" --worker=all
  run "${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=all --command="mkdir -p $REMOTE_DIR && tar xzf ncjax-src.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && $PY -m pip install -q -U pip && $PY -m pip install -q -e '.[$EXTRAS]'"
}

remote_run_command() {
  # One process per worker. jax.distributed starts only on a pod slice (more than one worker,
  # read from the metadata server as jax itself does), never on a single-host TPU VM.
  local main_args
  main_args=$(quote --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}")
  local count="\$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints | tr , '\\n' | grep -c .)"
  local body="cd $REMOTE_DIR && N=$count && D=off && if [ \"\$N\" -gt 1 ]; then D=on; fi && $PY -m ncjax.main $main_args--distributed=\$D"
  if [[ $DETACH == 1 ]]; then
    echo "nohup bash -c $(printf %q "$body") >> $REMOTE_DIR/launch.log 2>&1 < /dev/null &"
  else
    echo "set -o pipefail; ( $body ) 2>&1 | tee -a $REMOTE_DIR/launch.log"
  fi
}

do_run() {
  if [[ $WORKDIR != gs://* && $ACCEL =~ -([0-9]+)$ ]] && (( BASH_REMATCH[1] > 8 )); then
    echo "note: workdir $WORKDIR is local to each worker; on a pod slice use gs://... or a shared mount" >&2
  fi
  run "${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=all --command="$(remote_run_command)"
}

do_logs() {
  run "${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=0 --command="tail -n +1 -F $REMOTE_DIR/launch.log"
}

do_fetch() {
  [[ $WORKDIR != gs://* ]] || die "the workdir is $WORKDIR: read it there (gsutil -m cp -r / gcloud storage cp -r)"
  run "${TPU[@]}" scp --recurse "$NAME:ncjax/$WORKDIR" "./$(basename "$WORKDIR")" --zone="$ZONE" --worker=0
}

do_delete() {
  if [[ $QUEUED == 1 ]]; then
    run "${GC[@]}" compute tpus queued-resources delete "$QR_NAME" --zone="$ZONE" --force --quiet
  else
    run "${TPU[@]}" delete "$NAME" --zone="$ZONE" --quiet
  fi
}

case $COMMAND in
  create) do_create ;;
  setup) do_setup ;;
  run) do_run ;;
  logs) do_logs ;;
  fetch) do_fetch ;;
  delete) do_delete ;;
  up)
    [[ $DETACH == 0 || $DELETE_AFTER == 0 ]] || die "--delete-after needs a run in the foreground (no --detach)"
    do_create
    do_setup
    status=0
    do_run || status=$?
    if [[ $DELETE_AFTER == 1 ]]; then do_delete; fi
    exit $status ;;
esac
