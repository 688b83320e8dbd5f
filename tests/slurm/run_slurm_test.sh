#!/usr/bin/env bash
# Prove launch/slurm/train.sbatch under a real Slurm: a two-node cluster on this one machine (munged and
# slurmctld on the host, one slurmd in each of two network namespaces joined by a bridge: node1 and node2 are
# two "hosts" whose ranks talk over TCP), CPU ranks (gloo), tiny Whisper. Everything is started here from
# tests/slurm/slurm.conf.in and torn down at the end (daemons, namespaces, bridge).
#
#   make slurm-test                      # or: bash tests/slurm/run_slurm_test.sh
#   KEEP=1 bash tests/slurm/run_slurm_test.sh   # keep the work folder (logs, runs, daemon logs) on success too
#
# Needs root, `ip netns` and the Debian packages: apt-get install -y slurm-wlm munge iproute2 (Slurm 22.05).
# Checks, each printed as PASS or FAIL (the exit code is non-zero when one fails):
#   1. one node, 2 ranks: a job runs the real trainer to the end: summary.json finished, job COMPLETED;
#      two nodes, 1 rank each: the same, with one rank in each node's namespace and the same evaluation rows
#      as the one-node job (same data, same seed);
#   2. two nodes: a job sent USR1 mid-run (`scancel --signal=USR1 --batch`) checkpoints on both nodes,
#      requeues itself, resumes, and ends at the same step with the same evaluation rows as job 1;
#   3. one node: `scancel` (SIGTERM) leaves the last checkpoint intact and the job is not requeued;
#   4. two nodes: the rank on node2 killed (SIGKILL) fails the job within --dist-timeout-minutes, not
#      requeued, the last checkpoint intact; submitted again it resumes and ends with job 1's evaluation rows;
#   5. a finished run submitted again is not restarted.
# Not part of `make test` (pytest never needs Slurm); about 7 minutes on 2 cores (414 s measured alone).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
KEEP=${KEEP:-0}
MAX_STEPS=20        # jobs 1 and 2: evaluations (and checkpoints) at steps 10 and 20
SIGNAL_AFTER=13     # job 2 gets USR1, job 4 loses a rank, once step 13 is logged: between two evaluations
CANCEL_AFTER=7      # job 3 is cancelled once step 7 is logged (after its first checkpoint, at step 5)
LOST_TIMEOUT_MIN=1  # job 4's --dist-timeout-minutes: it loses node2's rank once step SIGNAL_AFTER is logged
DEADLINE_S=${DEADLINE_S:-600}  # any wait longer than this is a failure, never a hang

SECONDS=0
failures=0
checks=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
die() { echo "FAIL $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root: slurmd and the daemons started here need it"
for tool in munged slurmctld slurmd sbatch scontrol scancel squeue sinfo ip; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install -y slurm-wlm munge iproute2"
done
[[ -x $PYTHON ]] || die "$PYTHON not found: make setup (or PYTHON=/path/to/python)"

# A job started from inside another Slurm job would inherit its SLURM_* variables.
while read -r name; do unset "$name"; done < <(compgen -e | grep '^SLURM_' || true)

WORK=$(mktemp -d /tmp/wdsbr-slurm-test.XXXXXX)
STATE=$WORK/state
mkdir -p "$STATE"/{munge,slurmctld} "$WORK"/{logs,runs}
pids=()
slurmd_pids=()
job2=""
# The two "hosts": network namespaces NS_PREFIX-node1/-node2, each with an eth0 whose other end is on a
# bridge that carries the host's address; names carry this shell's pid, so two tests never share them.
NS_PREFIX=wdsbr$$
BRIDGE=wdsbr$$br
SUBNET=${SLURM_TEST_SUBNET:-10.213.77}  # SUBNET.1 the host (slurmctld), .2 node1, .3 node2
nodes=(node1 node2)

cleanup() {
    local rc=$?
    if [[ -n ${SLURM_CONF:-} && -f $SLURM_CONF ]] && scontrol ping >/dev/null 2>&1; then
        squeue -h -o %i | xargs -r scancel 2>/dev/null || true
        for _ in $(seq 60); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 1; done
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do  # the slurmds, slurmctld, then munged
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    for node in "${nodes[@]}"; do
        ip netns pids "$NS_PREFIX-$node" 2>/dev/null | xargs -r kill -9 2>/dev/null || true  # strays, if any
        ip netns delete "$NS_PREFIX-$node" 2>/dev/null || true  # also removes its eth0 and the veth's other end
    done
    ip link delete "$BRIDGE" 2>/dev/null || true
    if ((rc == 0 && failures == 0 && KEEP == 0)); then
        rm -rf "$WORK"
        if [[ -n $job2 ]]; then rm -rf "$REPO/runs/slurm-$job2" "$REPO/runs/slurm-$job2.out"; fi
        rmdir "$REPO/runs" 2>/dev/null || true
    else
        echo "work folder kept: $WORK (logs/, runs/, state/*.out)${job2:+; and $REPO/runs/slurm-$job2{,.out}}"
    fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # so that a timeout or ^C still tears the cluster down

# ------------------------------------------------------------------------------------------ the cluster
if ip -o addr | grep -q " $SUBNET\."; then
    die "$SUBNET.0/24 is in use on this machine: SLURM_TEST_SUBNET=10.X.Y picks another"
fi
ip link add "$BRIDGE" type bridge || die "could not create a bridge (ip link add $BRIDGE type bridge): root in a sandbox that allows network namespaces is needed"
ip addr add "$SUBNET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
ctld_host=$(hostname -s)  # slurmctld accepts to run only on the host named by SlurmctldHost
printf '127.0.0.1 localhost\n%s.2 node1\n%s.3 node2\n' "$SUBNET" "$SUBNET" > "$STATE/hosts"  # the nodes' /etc/hosts
for i in 0 1; do
    ns=$NS_PREFIX-${nodes[i]}
    ip netns add "$ns" || die "ip netns add $ns failed: network namespaces are needed for the two nodes"
    ip link add "$NS_PREFIX-v$i" type veth peer name eth0 netns "$ns"
    ip link set "$NS_PREFIX-v$i" master "$BRIDGE" up
    ip -n "$ns" addr add "$SUBNET.$((i + 2))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
done
exec_on_node() {  # exec_on_node NODE COMMAND... &: replaces this (sub)shell by COMMAND in NODE's network namespace
    # with $STATE/hosts as /etc/hosts; `$!` is then COMMAND's pid.
    # A private mount namespace (unshare) for the hosts file: node1 and node2 resolve on both nodes, as Slurm's
    # node names do on a real cluster (MASTER_ADDR is the first node's name); nothing under /etc changes.
    # nsenter, not `ip netns exec`: that one mounts a fresh /sys, without the cgroup file systems slurmd wants.
    local node=$1
    shift
    exec unshare --mount --propagation private sh -c 'mount --bind "$1" /etc/hosts && ns=$2 && shift 2 && exec nsenter --net="$ns" "$@"' \
        on_node "$STATE/hosts" "/run/netns/$NS_PREFIX-$node" "$@"
}
# Both "hosts" have this machine's hostname, which resolves to neither: gloo must be told its interface, as
# on a cluster whose hostname does not resolve to the fast network (docs/slurm.md). sbatch passes
# the exported environment to the job.
export GLOO_SOCKET_IFNAME=eth0

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
first_job_id=$((100000 + RANDOM * 10))
while compgen -G "$REPO/runs/slurm-${first_job_id:0:4}*" >/dev/null; do first_job_id=$((100000 + RANDOM * 10)); done
sed -e "s|@STATE@|$STATE|g" -e "s|@PORT_CTLD@|$(free_port)|" -e "s|@PORT_SLURMD@|$(free_port)|" -e "s|@CPUS@|2|" \
    -e "s|@FIRST_JOB_ID@|$first_job_id|" -e "s|@CTLD_HOST@|$ctld_host|" -e "s|@CTLD_ADDR@|$SUBNET.1|" -e "s|@NODE1_ADDR@|$SUBNET.2|" \
    -e "s|@NODE2_ADDR@|$SUBNET.3|" "$REPO/tests/slurm/slurm.conf.in" > "$STATE/slurm.conf"
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
for node in "${nodes[@]}"; do  # munge's socket is a file: reachable from every network namespace
    mkdir -p "$STATE/slurmd-$node"
    exec_on_node "$node" slurmd -D -N "$node" -f "$SLURM_CONF" > "$STATE/slurmd-$node.out" 2>&1 &
    pids+=($!)
    slurmd_pids+=($!)
done
all_idle() { [[ $(sinfo -h -N -o %t 2>/dev/null | sort -u) == idle && $(sinfo -h -N -o %N | wc -l) == 2 ]]; }
for _ in $(seq 150); do all_idle && break; sleep 0.2; done
all_idle || die "the Slurm nodes did not come up: see $STATE/*.out and $STATE/*.log"
echo "slurm cluster up in ${SECONDS} s: $(sinfo -h -o '%P %D nodes (%N), %c CPUs each, %t') ($SLURM_CONF)"

# ------------------------------------------------------------------------------------------------- data
"$PYTHON" "$REPO/tools/make_tiny_whisper.py" "$WORK/tiny-whisper" --texts "$REPO/sample/corpus" > "$WORK/logs/data.out" 2>&1
"$PYTHON" "$REPO/tools/shard_corpus.py" "$REPO/sample/corpus" "$WORK/shards" --samples-per-shard 8 \
    --val-fraction 0.15 --test-fraction 0.1 >> "$WORK/logs/data.out" 2>&1
echo "tiny whisper and shards ready at ${SECONDS} s"

# ------------------------------------------------------------------------------------------------- jobs
train_args=(--model "$WORK/tiny-whisper" --train-shards "$WORK/shards/train" --val-shards "$WORK/shards/validation"
            --batch-size 4 --lr 1e-3 --warmup-steps 5 --patience 0 --num-workers 1 --log-every 1
            --generation-max-length 40 --epoch-samples 80)  # epochs of 10 steps: fewer DataLoader worker starts
submit() {  # submit NODES [SBATCH_OPTION...] -- TRAIN_ARG...: the real script, 2 ranks on 1 or 2 nodes; prints the job id
    local nodes=$1 options=()
    shift
    while [[ $1 != -- ]]; do options+=("$1"); shift; done
    shift
    cd "$REPO"  # where users submit from
    WDSBR_PYTHON=$PYTHON sbatch --parsable --gpus-per-node=0 --nodes="$nodes" --ntasks-per-node=$((2 / nodes)) \
        --cpus-per-task=1 --time=30 "${options[@]}" launch/slurm/train.sbatch "${train_args[@]}" "$@"
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
world_size() { "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["environment"]["world_size"])' "$1/config.json"; }
left_on_nodes() {  # left_on_nodes: what runs in the nodes' namespaces but their slurmd (nothing, between jobs)
    local node pid
    for node in "${nodes[@]}"; do
        for pid in $(ip netns pids "$NS_PREFIX-$node"); do
            [[ " ${slurmd_pids[*]} " == *" $pid "* ]] || echo "$node:$(ps -o pid=,args= -p "$pid" | cut -c1-60)"
        done
    done
}
nothing_left() { [[ -z $(left_on_nodes) ]]; }
ranks_on() {  # ranks_on NODE: pids of the ranks (PYTHON launch/train.py) in NODE's namespace, not their DataLoader workers
    local ns_pids
    ns_pids=$(ip netns pids "$NS_PREFIX-$1" | paste -sd,)
    [[ -n $ns_pids ]] || return 0
    ps -o pid=,ppid=,args= -p "$ns_pids" | awk '$4 == "launch/train.py" { parent[$1] = $2 } END { for (p in parent) if (!(parent[p] in parent)) print p }'
}
same_evals() {  # same_evals REFERENCE_RUN RUN JOBSTATE: COMPLETED, finished at the same step, equal evaluation rows
    "$PYTHON" - "$@" <<'EOF'
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
    print(f"     reference {a} {sa}\n     this run  {b} {sb}")
sys.exit(0 if ok else 1)
EOF
}
checkpoint_complete() {  # checkpoint_complete FOLDER: model states, both ranks' optimizer shards, trainer_state.json; all load
    env DS_ACCELERATOR=cpu "$PYTHON" - "$1" <<'EOF'
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
}
check() {  # check DESCRIPTION COMMAND...: PASS or FAIL
    local what=$1
    shift
    checks=$((checks + 1))
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# 1. uninterrupted, on one node and on two -------------------------------------------------------------------
run1=$WORK/runs/uninterrupted
job1=$(submit 1 --job-name=uninterrupted --output="$WORK/logs/slurm-%j.out" -- --output-dir "$run1" --max-steps $MAX_STEPS --eval-every 10)
wait_until "job $job1 to end" ended "$job1"
echo "job $job1 (uninterrupted, one node) ended at ${SECONDS} s: $(field "$job1" JobState) on $(field "$job1" NodeList)"
check "1. job $job1: 2 ranks on one node ran launch/train.py to the end: COMPLETED, exit 0:0, summary.json finished at step $MAX_STEPS" \
    test "$(field "$job1" JobState) $(field "$job1" ExitCode) $(json_get "$run1/summary.json" finished) $(json_get "$run1/summary.json" step)" \
    == "COMPLETED 0:0 true $MAX_STEPS"
check "1. job $job1: one process group of world size 2 (config.json), Slurm log linked into the run folder" \
    test "$(world_size "$run1") $(readlink -f "$run1/slurm-$job1.out")" == "2 $WORK/logs/slurm-$job1.out"

run1n2=$WORK/runs/two-nodes
job1n2=$(submit 2 --job-name=two-nodes --output="$WORK/logs/slurm-%j.out" -- --output-dir "$run1n2" --max-steps $MAX_STEPS --eval-every 10)
wait_until "job $job1n2 to log step 3" logged_step "$run1n2" 3
placement="$(ranks_on node1 | wc -l) $(ranks_on node2 | wc -l)"  # while it runs: ranks in node1's, node2's namespace
wait_until "job $job1n2 to end" ended "$job1n2"
echo "job $job1n2 (uninterrupted, two nodes) ended at ${SECONDS} s: $(field "$job1n2" JobState) on $(field "$job1n2" NodeList)"
check "1. job $job1n2: two nodes, one rank in each node's network namespace (ranks on node1, node2: $placement), world size 2 over eth0" \
    test "$(field "$job1n2" NodeList) $placement $(world_size "$run1n2")" == "node[1-2] 1 1 2"
check "1. job $job1n2: COMPLETED at step $MAX_STEPS with job $job1's evaluation rows (loss, WER, CER): two nodes learn what one does" \
    same_evals "$run1" "$run1n2" "$(field "$job1n2" JobState)"

# 2. two nodes, USR1 mid-run: checkpoint, requeue, resume ----------------------------------------------------
# The script's defaults here: log runs/slurm-JOBID.out and run folder runs/slurm-JOBID, in the repository
# (runs/ is git-ignored; both are removed at the end). FirstJobId is random, so no earlier run is in the way.
mkdir -p "$REPO/runs"
job2=$(submit 2 --job-name=requeued -- --max-steps $MAX_STEPS --eval-every 10)
run2=$REPO/runs/slurm-$job2
log2=$REPO/runs/slurm-$job2.out
wait_until "job $job2 to log step $SIGNAL_AFTER" logged_step "$run2" $SIGNAL_AFTER
scancel --signal=USR1 --batch "$job2"
echo "job $job2 (requeued, two nodes) sent USR1 at ${SECONDS} s"
wait_until "job $job2 to requeue itself" restarted "$job2"
first=$(cat "$run2/summary.json")
stop_tag=$(cat "$run2/checkpoints/latest")
stop_checkpoint=$(checkpoint_complete "$run2/checkpoints/$stop_tag" && echo complete || true)  # now: the resumed job prunes it later
echo "job $job2 requeued at ${SECONDS} s ($(field "$job2" JobState), $(field "$job2" Reason)); first part: $(tr -d '\n ' <<<"$first" | cut -c1-60)..."
wait_until "job $job2 to end" ended "$job2"
echo "job $job2 ended at ${SECONDS} s: $(field "$job2" JobState), restarts $(field "$job2" Restarts), on $(field "$job2" NodeList)"
stopped_at=$("$PYTHON" -c 'import json, sys; s = json.loads(sys.argv[1]); print(s["step"] if s["interrupted"] == "SIGUSR1" and not s["finished"] else -1)' "$first")
echo "$stop_checkpoint" | sed '$d'
check "2. job $job2: USR1 (through the batch shell and srun) stopped the ranks of both nodes at step $stopped_at: $stop_tag holds both ranks' shards, all load; exited unfinished" \
    test "$stopped_at" -gt 0 -a "$stopped_at" -lt $MAX_STEPS -a -n "$(grep -l "SIGUSR1: checkpointing and stopping" "$log2")" \
    -a "$(field "$job2" NodeList) $stop_tag $(tail -n 1 <<<"$stop_checkpoint")" == "node[1-2] step-$(printf %08d "$stopped_at") complete"
check "2. job $job2: requeued once by the script and resumed from step-$(printf %08d "$stopped_at") in the same run folder" \
    test "$(field "$job2" Restarts) $(grep -c "resumed from step $stopped_at " "$log2")" == "1 1"
check "2. job $job2: default log runs/slurm-$job2.out holds both parts (appended) and is linked into the run folder" \
    test "$(grep -c "^train.sbatch: job $job2 (restart" "$log2") $(readlink -f "$run2/slurm-$job2.out")" == "2 $log2"
check "2. job $job2: COMPLETED, summary.json finished at step $MAX_STEPS like job $job1, evaluation rows equal job $job1's" \
    same_evals "$run1" "$run2" "$(field "$job2" JobState)"

# 3. one node, scancel: SIGTERM to every process, the last checkpoint intact, no requeue -------------------
run3=$WORK/runs/cancelled
job3=$(submit 1 --job-name=cancelled --output="$WORK/logs/slurm-%j.out" -- --output-dir "$run3" --max-steps 1000 --eval-every 5)
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
    checkpoint_complete "$run3/checkpoints/$tag"

# Rank 0's gloo error names the lost peer; which of its two messages comes depends on where in a collective the
# peer went ("Connection closed by peer [IP]:port" or "Read error [IP]:port: Connection reset by peer").
peer_gone() { grep -qE "^0: .*(Connection closed by peer \[$2\]|\[$2\]:[0-9]+: Connection reset by peer)" "$1"; }

# 4. two nodes, a lost rank: node2's rank killed, the job fails, a resubmission resumes ----------------------
run4=$WORK/runs/lost-node
job4=$(submit 2 --job-name=lost-node --output="$WORK/logs/slurm-%j.out" -- --output-dir "$run4" --max-steps $MAX_STEPS \
       --eval-every 10 --dist-timeout-minutes $LOST_TIMEOUT_MIN)
wait_until "job $job4 to log step $SIGNAL_AFTER" logged_step "$run4" $SIGNAL_AFTER
victim=$(ranks_on node2)
[[ $(wc -w <<<"$victim") == 1 ]] || die "job $job4: expected one rank on node2, found '$victim'"
kill -KILL "$victim"
killed_at=$SECONDS
echo "job $job4 (lost node): node2's rank (pid $victim) killed at ${SECONDS} s"
wait_until "job $job4 to end" ended "$job4"
failed_after=$((SECONDS - killed_at))
wait_until "job $job4 to leave the queue" test -z "$(squeue -h -j "$job4" 2>/dev/null)"
tag=$(cat "$run4/checkpoints/latest")
echo "job $job4 ended ${failed_after} s after the kill: $(field "$job4" JobState) $(field "$job4" ExitCode), latest $tag"
for _ in $(seq 50); do nothing_left && break; sleep 0.2; done
left=$(left_on_nodes)
check "4. job $job4: node2's rank killed: rank 0 on node1 saw its TCP peer $SUBNET.3 go, the job FAILED ${failed_after} s later (--dist-timeout-minutes $LOST_TIMEOUT_MIN), not requeued" \
    test "$(field "$job4" JobState) $(field "$job4" Restarts) $((failed_after <= LOST_TIMEOUT_MIN * 60 + 30)) $(peer_gone "$WORK/logs/slurm-$job4.out" "$SUBNET.3" && echo 1)" \
    == "FAILED 0 1 1"
check "4. job $job4: nothing of it left on either node (DataLoader workers, forkservers, resource trackers exit with their rank)${left:+: $left}" \
    test -z "$left"
check "4. job $job4: the last checkpoint, $tag, written by the ranks of two nodes into one folder, is complete and loads" \
    checkpoint_complete "$run4/checkpoints/$tag"
resumed_step=$((10#${tag#step-}))
job4b=$(submit 2 --job-name=lost-node-again --output="$WORK/logs/slurm-%j.out" -- --output-dir "$run4")
wait_until "job $job4b to end" ended "$job4b"
echo "job $job4b (job $job4's run submitted again) ended at ${SECONDS} s: $(field "$job4b" JobState)"
check "4. job $job4b: job $job4's run submitted again resumed from $tag" \
    test "$(grep -c "resumed from step $resumed_step " "$WORK/logs/slurm-$job4b.out")" == 1
check "4. job $job4b: COMPLETED at step $MAX_STEPS with job $job1's evaluation rows, as if no rank had been lost" \
    same_evals "$run1" "$run4" "$(field "$job4b" JobState)"

# 5. a finished run is not restarted ----------------------------------------------------------------------
rows=$(wc -l < "$run1/metrics.jsonl")
job5=$(submit 1 --job-name=finished-again --output="$WORK/logs/slurm-%j.out" -- --output-dir "$run1" --max-steps $MAX_STEPS --eval-every 10)
wait_until "job $job5 to end" ended "$job5"
echo "job $job5 (job $job1's run submitted again) ended at ${SECONDS} s: $(field "$job5" JobState)"
check "5. job $job5: job $job1's finished run submitted again: \"finished already\", not requeued, nothing trained" \
    test "$(field "$job5" JobState) $(field "$job5" Restarts) $(grep -c -e "finished already" -e "finished (summary.json): not requeued" "$WORK/logs/slurm-$job5.out") $(wc -l < "$run1/metrics.jsonl")" \
    == "COMPLETED 0 2 $rows"

echo "slurm test: $((checks - failures)) of $checks checks passed in ${SECONDS} s"
((failures == 0))
