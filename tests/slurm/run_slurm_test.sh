#!/usr/bin/env bash
# Prove launch/slurm/train.sbatch under a real Slurm: a one-node cluster on loopback (munged, slurmctld and
# slurmd started here from tests/slurm/slurm.conf.in, stopped at the end), 2 CPU tasks (gloo), tiny Whisper.
#
#   make slurm-test                      # or: bash tests/slurm/run_slurm_test.sh
#   KEEP=1 bash tests/slurm/run_slurm_test.sh   # keep the work folder (logs, runs, daemon logs) on success too
#
# Needs root and the Debian packages: apt-get install -y slurm-wlm munge (Slurm 22.05 was used).
# Checks, each printed as PASS or FAIL (the exit code is non-zero when one fails):
#   1. a job runs the real trainer with 2 ranks to the end: summary.json finished, job COMPLETED;
#   2. a job sent USR1 mid-run (`scancel --signal=USR1 --batch`) checkpoints, requeues itself, resumes, and
#      ends at the same step with the same evaluation rows as the uninterrupted job;
#   3. `scancel` (SIGTERM) leaves the last checkpoint intact and the job is not requeued;
#   4. a finished run submitted again is not restarted.
# Not part of `make test` (pytest never needs Slurm); about 3 minutes on 2 cores.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
KEEP=${KEEP:-0}
MAX_STEPS=20        # jobs 1 and 2: evaluations (and checkpoints) at steps 10 and 20
SIGNAL_AFTER=13     # job 2 gets USR1 once step 13 is logged: it stops between two evaluations
CANCEL_AFTER=7      # job 3 is cancelled once step 7 is logged (after its first checkpoint, at step 5)
DEADLINE_S=${DEADLINE_S:-600}  # any wait longer than this is a failure, never a hang

SECONDS=0
failures=0
checks=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
die() { echo "FAIL $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root: slurmd and the daemons started here need it"
for tool in munged slurmctld slurmd sbatch scontrol scancel squeue sinfo; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install -y slurm-wlm munge"
done
[[ -x $PYTHON ]] || die "$PYTHON not found: make setup (or PYTHON=/path/to/python)"

# A job started from inside another Slurm job would inherit its SLURM_* variables.
while read -r name; do unset "$name"; done < <(compgen -e | grep '^SLURM_' || true)

WORK=$(mktemp -d /tmp/wdsbr-slurm-test.XXXXXX)
STATE=$WORK/state
mkdir -p "$STATE"/{munge,slurmctld,slurmd} "$WORK"/{logs,runs}
pids=()
job2=""

cleanup() {
    local rc=$?
    if [[ -n ${SLURM_CONF:-} && -f $SLURM_CONF ]] && scontrol ping >/dev/null 2>&1; then
        squeue -h -o %i | xargs -r scancel 2>/dev/null || true
        for _ in $(seq 60); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 1; done
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do  # slurmd, slurmctld, then munged
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    if ((rc == 0 && failures == 0 && KEEP == 0)); then
        rm -rf "$WORK"
        if [[ -n $job2 ]]; then rm -rf "$REPO/runs/slurm-$job2" "$REPO/runs/slurm-$job2.out"; fi
        rmdir "$REPO/runs" 2>/dev/null || true
    else
        echo "work folder kept: $WORK (logs/, runs/, state/*.out)${job2:+; and $REPO/runs/slurm-$job2{,.out}}"
    fi
}
trap cleanup EXIT

# ------------------------------------------------------------------------------------------ the cluster
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
first_job_id=$((100000 + RANDOM * 10))
while compgen -G "$REPO/runs/slurm-${first_job_id:0:4}*" >/dev/null; do first_job_id=$((100000 + RANDOM * 10)); done
sed -e "s|@STATE@|$STATE|g" -e "s|@PORT_CTLD@|$(free_port)|" -e "s|@PORT_SLURMD@|$(free_port)|" -e "s|@CPUS@|2|" \
    -e "s|@FIRST_JOB_ID@|$first_job_id|" \
    "$REPO/tests/slurm/slurm.conf.in" > "$STATE/slurm.conf"
export SLURM_CONF=$STATE/slurm.conf  # every Slurm command here, and the jobs, use this cluster

chmod 755 "$STATE/munge"
dd if=/dev/urandom of="$STATE/munge/munge.key" bs=128 count=1 status=none
chmod 400 "$STATE/munge/munge.key"
munged --foreground --force --socket="$STATE/munge/munge.socket" --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/munged.seed" \
    --log-file="$STATE/munge/munged.log" > "$STATE/munged.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [[ -S $STATE/munge/munge.socket ]] && break; sleep 0.1; done
slurmctld -D -f "$SLURM_CONF" > "$STATE/slurmctld.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
slurmd -D -N localhost -f "$SLURM_CONF" > "$STATE/slurmd.out" 2>&1 &
pids+=($!)
for _ in $(seq 150); do [[ $(sinfo -h -n localhost -o %t 2>/dev/null) == idle ]] && break; sleep 0.2; done
[[ $(sinfo -h -n localhost -o %t) == idle ]] || die "the Slurm node did not come up: see $STATE/*.out"
echo "slurm cluster up in ${SECONDS} s: $(sinfo -h -o '%P %D node, %c CPUs, %t') ($SLURM_CONF)"

# ------------------------------------------------------------------------------------------------- data
"$PYTHON" "$REPO/tools/make_tiny_whisper.py" "$WORK/tiny-whisper" --texts "$REPO/sample/corpus" > "$WORK/logs/data.out" 2>&1
"$PYTHON" "$REPO/tools/shard_corpus.py" "$REPO/sample/corpus" "$WORK/shards" --samples-per-shard 8 \
    --val-fraction 0.15 --test-fraction 0.1 >> "$WORK/logs/data.out" 2>&1
echo "tiny whisper and shards ready at ${SECONDS} s"

# ------------------------------------------------------------------------------------------------- jobs
train_args=(--model "$WORK/tiny-whisper" --train-shards "$WORK/shards/train" --val-shards "$WORK/shards/validation"
            --batch-size 4 --lr 1e-3 --warmup-steps 5 --patience 0 --num-workers 1 --log-every 1
            --generation-max-length 40)
submit() {  # submit [SBATCH_OPTION...] -- TRAIN_ARG...: the real script, shaped for this node; prints the job id
    local options=()
    while [[ $1 != -- ]]; do options+=("$1"); shift; done
    shift
    cd "$REPO"  # where users submit from
    WDSBR_PYTHON=$PYTHON sbatch --parsable --gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1 --time=30 \
        "${options[@]}" launch/slurm/train.sbatch "${train_args[@]}" "$@"
}
field() { scontrol show job -o "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }  # field JOBID JobState
wait_until() {  # wait_until WHAT COMMAND...: poll until the command succeeds
    local what=$1 start=$SECONDS
    shift
    until "$@"; do
        ((SECONDS - start < DEADLINE_S)) || die "waited ${DEADLINE_S} s for $what"
        sleep 0.2
    done
}
ended() { [[ $(field "$1" JobState) =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)$ ]]; }
logged_step() {  # logged_step RUN STEP: metrics.jsonl has a row for STEP (log-every is 1)
    [[ -f $1/metrics.jsonl ]] && grep -q "\"step\": $2[,}]" "$1/metrics.jsonl"
}
restarted() { [[ $(field "$1" Restarts) -ge 1 ]]; }
json_get() { "$PYTHON" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1])).get(sys.argv[2])))' "$1" "$2"; }
check() {  # check DESCRIPTION COMMAND...: PASS or FAIL
    local what=$1
    shift
    checks=$((checks + 1))
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# 1. uninterrupted --------------------------------------------------------------------------------------
run1=$WORK/runs/uninterrupted
job1=$(submit --job-name=uninterrupted --output="$WORK/logs/slurm-%j.out" -- --output-dir "$run1" --max-steps $MAX_STEPS --eval-every 10)
wait_until "job $job1 to end" ended "$job1"
echo "job $job1 (uninterrupted) ended at ${SECONDS} s: $(field "$job1" JobState)"
check "1. job $job1: 2 ranks ran launch/train.py to the end: COMPLETED, exit 0:0, summary.json finished at step $MAX_STEPS" \
    test "$(field "$job1" JobState) $(field "$job1" ExitCode) $(json_get "$run1/summary.json" finished) $(json_get "$run1/summary.json" step)" \
    == "COMPLETED 0:0 true $MAX_STEPS"
check "1. job $job1: one process group of world size 2 (config.json), Slurm log linked into the run folder" \
    test "$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["environment"]["world_size"])' "$run1/config.json") $(readlink -f "$run1/slurm-$job1.out")" \
    == "2 $WORK/logs/slurm-$job1.out"

# 2. USR1 mid-run: checkpoint, requeue, resume --------------------------------------------------------------
# The script's defaults here: log runs/slurm-JOBID.out and run folder runs/slurm-JOBID, in the repository
# (runs/ is git-ignored; both are removed at the end). FirstJobId is random, so no earlier run is in the way.
mkdir -p "$REPO/runs"
job2=$(submit --job-name=requeued -- --max-steps $MAX_STEPS --eval-every 10)
run2=$REPO/runs/slurm-$job2
log2=$REPO/runs/slurm-$job2.out
wait_until "job $job2 to log step $SIGNAL_AFTER" logged_step "$run2" $SIGNAL_AFTER
scancel --signal=USR1 --batch "$job2"
echo "job $job2 (requeued) sent USR1 at ${SECONDS} s"
wait_until "job $job2 to requeue itself" restarted "$job2"
first=$(cat "$run2/summary.json")
echo "job $job2 requeued at ${SECONDS} s ($(field "$job2" JobState), $(field "$job2" Reason)); first part: $(tr -d '\n ' <<<"$first" | cut -c1-60)..."
wait_until "job $job2 to end" ended "$job2"
echo "job $job2 ended at ${SECONDS} s: $(field "$job2" JobState), restarts $(field "$job2" Restarts)"
stopped_at=$("$PYTHON" -c 'import json, sys; s = json.loads(sys.argv[1]); print(s["step"] if s["interrupted"] == "SIGUSR1" and not s["finished"] else -1)' "$first")
check "2. job $job2: USR1 reached the ranks (through the batch shell and srun): they checkpointed at step $stopped_at and exited unfinished" \
    test "$stopped_at" -gt 0 -a "$stopped_at" -lt $MAX_STEPS -a -n "$(grep -l "SIGUSR1: checkpointing and stopping" "$log2")"
check "2. job $job2: requeued once by the script and resumed from step-$(printf %08d "$stopped_at") in the same run folder" \
    test "$(field "$job2" Restarts) $(grep -c "resumed from step $stopped_at " "$log2")" == "1 1"
check "2. job $job2: default log runs/slurm-$job2.out holds both parts (appended) and is linked into the run folder" \
    test "$(grep -c "^train.sbatch: job $job2 (restart" "$log2") $(readlink -f "$run2/slurm-$job2.out")" == "2 $log2"
check "2. job $job2: COMPLETED, summary.json finished at step $MAX_STEPS like job $job1, eval rows equal job $job1's" \
    "$PYTHON" - "$run1" "$run2" "$(field "$job2" JobState)" <<'EOF'
import json, sys
from pathlib import Path

def evals(run):
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").open() if line.strip()]
    keep = ("step", "val_loss", "wer", "cer", "samples", "is_best")
    return [{k: row[k] for k in keep} for row in rows if row["kind"] == "eval"]

a, b = evals(sys.argv[1]), evals(sys.argv[2])
sa, sb = (json.loads((Path(run) / "summary.json").read_text()) for run in sys.argv[1:3])
for row in b:
    print(f"     eval {row}")
ok = sys.argv[3] == "COMPLETED" and sb["finished"] and sb["step"] == sa["step"] and a == b and len(a) >= 2
if not ok:
    print(f"     uninterrupted {a} {sa}\n     requeued      {b} {sb}")
sys.exit(0 if ok else 1)
EOF

# 3. scancel: SIGTERM to every process, the last checkpoint intact, no requeue -----------------------------
run3=$WORK/runs/cancelled
job3=$(submit --job-name=cancelled --output="$WORK/logs/slurm-%j.out" -- --output-dir "$run3" --max-steps 1000 --eval-every 5)
wait_until "job $job3 to log step $CANCEL_AFTER" logged_step "$run3" $CANCEL_AFTER
scancel "$job3"
echo "job $job3 (cancelled) cancelled at ${SECONDS} s"
wait_until "job $job3 to end" ended "$job3"
wait_until "job $job3 to leave the queue" test -z "$(squeue -h -j "$job3" 2>/dev/null)"
sleep 15  # longer than cred_expire (10 s), after which a requeued job would be pending or running again
tag=$(cat "$run3/checkpoints/latest")
echo "job $job3 ended at ${SECONDS} s: $(field "$job3" JobState), latest $tag, summary step $(json_get "$run3/summary.json" step)"
check "3. job $job3: CANCELLED and not requeued (restarts 0, still CANCELLED 15 s later)" \
    test "$(field "$job3" JobState) $(field "$job3" Restarts)" == "CANCELLED 0"
check "3. job $job3: the ranks got SIGTERM, finished their step and wrote $tag (summary.json: interrupted SIGTERM at that step)" \
    test "$tag $(json_get "$run3/summary.json" interrupted) $(json_get "$run3/summary.json" finished)" \
    == "step-$(printf %08d "$(json_get "$run3/summary.json" step)") \"SIGTERM\" false"
check "3. job $job3: checkpoints/$tag is complete: model states, both ranks' optimizer shards, trainer_state.json; all load" \
    env DS_ACCELERATOR=cpu "$PYTHON" - "$run3/checkpoints/$tag" <<'EOF'
import json, sys
from pathlib import Path

import torch

folder = Path(sys.argv[1])
files = sorted(p.name for p in folder.iterdir())
print(f"     {folder.name}: {', '.join(files)}")
shards = [name for name in files if name.endswith("optim_states.pt")]
ok = "mp_rank_00_model_states.pt" in files and len(shards) == 2 and "trainer_state.json" in files
for name in files:
    if name.endswith(".pt"):
        torch.load(folder / name, map_location="cpu", weights_only=False)  # raises on a truncated file
state = json.loads((folder / "trainer_state.json").read_text())
sys.exit(0 if ok and f"step-{state['step']:08d}" == folder.name else 1)
EOF

# 4. a finished run is not restarted ----------------------------------------------------------------------
rows=$(wc -l < "$run1/metrics.jsonl")
job4=$(submit --job-name=finished-again --output="$WORK/logs/slurm-%j.out" -- --output-dir "$run1" --max-steps $MAX_STEPS --eval-every 10)
wait_until "job $job4 to end" ended "$job4"
echo "job $job4 (job $job1's run submitted again) ended at ${SECONDS} s: $(field "$job4" JobState)"
check "4. job $job4: job $job1's finished run submitted again: \"finished already\", not requeued, nothing trained" \
    test "$(field "$job4" JobState) $(field "$job4" Restarts) $(grep -c -e "finished already" -e "finished (summary.json): not requeued" "$WORK/logs/slurm-$job4.out") $(wc -l < "$run1/metrics.jsonl")" \
    == "COMPLETED 0 2 $rows"

echo "slurm test: $((checks - failures)) of $checks checks passed in ${SECONDS} s"
((failures == 0))
