# wdsbr — set-up, demo, tests, benchmarks. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first and explicitly: a bare `torch` requirement can pull a multi-GB build you did not choose.
# On a CUDA machine set TORCH to the wheel your driver wants, e.g. TORCH="torch==2.13.0 --index-url …/cu128".
TORCH  ?= torch==2.13.0
DEMO   := runs/demo
NPROC  ?= 2   # ranks for the demo: CPU processes here, GPUs on a GPU machine
# OpenAI's multilingual base (74 M): from the hub when it answers, else rebuilt offline (tools/fetch_pretrained.py)
BASE   ?= $(HOME)/.cache/wdsbr/base
DEMO_STEPS ?= 40
DEMO_BATCH ?= 4   # per rank: NPROC x DEMO_BATCH clips a step
DEMO_DECODE := --language br --text-normalizer breton --generation-max-length 60

CORPUS ?= ./corpus
SHARDS ?= shards

.PHONY: help setup demo shard test lint docs bench bench-accuracy bench-breton clean
help:
	@echo "make demo   set up, shard the bundled Breton sample, fine-tune OpenAI's multilingual base on it with 2 ranks: zero-shot vs fine-tuned WER"
	@echo "make shard CORPUS=./corpus SHARDS=shards   set up and shard a corpus (tools/shard_corpus.py)"
	@echo "make test   set up and run the tests (CPU, offline)"
	@echo "make lint   ruff format --check and ruff check (configured in pyproject.toml)"
	@echo "make docs   build the guides in docs/ with MkDocs, strict (a broken link fails), into build/site/"
	@echo "make bench  run the benchmarks in bench/ (JSON in bench/results/)"
	@echo "make bench-accuracy   wdsbr vs the HF recipe fine-tuning a real tiny.en, 3 seeds (espeak-ng + sox; hours on 2 CPU cores: bench/RESULTS.md)"
	@echo "make bench-breton     the real multilingual base in Breton: zero-shot vs fine-tuned per test voice, 3 seeds x 1 and 2 ranks, faster-whisper (espeak-ng + sox)"

setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test,breton,breton-test,export,lm]'
	$(BIN)/pip install --quiet --no-deps anaouder==1.0.5  # Breton normaliser, without its heavy pins (see README)
	touch $@

demo: setup
	$(BIN)/python tools/shard_corpus.py sample/corpus $(DEMO)/shards --overwrite --samples-per-shard 16 --val-fraction 0.15 --test-fraction 0.1
	$(BIN)/python tools/fetch_pretrained.py base $(BASE)
	$(BIN)/python tools/peek_batch.py --model $(BASE) --shards $(DEMO)/shards/train
	rm -rf $(DEMO)/run $(DEMO)/zero-shot $(DEMO)/fine-tuned && mkdir -p $(DEMO)/zero-shot $(DEMO)/fine-tuned
	$(BIN)/python launch/evaluate.py --model $(BASE) --data $(DEMO)/shards/test $(DEMO_DECODE) \
	    --output $(DEMO)/zero-shot/preds.tsv > $(DEMO)/zero-shot/scores.json
	$(BIN)/deepspeed --log_level warning --num_gpus $(NPROC) launch/train.py --deepspeed configs/ds_zero2.json \
	    --model $(BASE) --train-shards $(DEMO)/shards/train --val-shards $(DEMO)/shards/validation \
	    --output-dir $(DEMO)/run --batch-size $(DEMO_BATCH) --lr 1e-4 --warmup-steps 4 --max-steps $(DEMO_STEPS) \
	    --eval-every 10 --patience 2 --num-workers 1 --log-every 5 $(DEMO_DECODE)
	$(BIN)/python launch/evaluate.py --model $(DEMO)/run/best --data $(DEMO)/shards/test $(DEMO_DECODE) \
	    --output $(DEMO)/fine-tuned/preds.tsv > $(DEMO)/fine-tuned/scores.json
	@$(BIN)/python tools/compare_evaluations.py zero-shot=$(DEMO)/zero-shot fine-tuned=$(DEMO)/fine-tuned

shard: setup
	$(BIN)/python tools/shard_corpus.py $(CORPUS) $(SHARDS)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

docs: setup  # mkdocs.yml: the guides in docs/, offline; strict, so a broken link or anchor or a page left out of the nav fails
	test -x $(BIN)/mkdocs || $(BIN)/pip install --quiet -e '.[docs]'
	$(BIN)/mkdocs build --strict --site-dir build/site

TINY_EN ?= $(HOME)/.cache/wdsbr/tiny.en
bench-accuracy: setup  # OpenAI's tiny.en (from the hub, else rebuilt offline once), then bench/bench_accuracy.py
	$(BIN)/python tools/fetch_pretrained.py tiny.en $(TINY_EN)
	$(BIN)/python -c "import accelerate, psutil" 2>/dev/null || $(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/bench_accuracy.py --model $(TINY_EN)

bench-breton: setup  # OpenAI's multilingual base, then bench/bench_breton.py (resumes from bench/results/breton.json)
	$(BIN)/python tools/fetch_pretrained.py base $(BASE)
	$(BIN)/python bench/bench_breton.py --model $(BASE)

bench: setup  # tens of minutes on 2 CPU cores; bench/RESULTS.md is written from the JSON in bench/results/
	$(BIN)/python -c "import accelerate, psutil" 2>/dev/null || $(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/bench_features.py
	$(BIN)/python bench/bench_loader.py
	$(BIN)/python bench/bench_shard.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/summarize.py

clean:
	rm -rf $(DEMO) bench/results

# Slurm: a two-node cluster (two network namespaces) runs launch/slurm/train.sbatch (2 CPU ranks; completion
# on one and two nodes, USR1 → checkpoint → requeue → resume, scancel, a lost rank). Needs root and
# `apt-get install -y slurm-wlm munge iproute2`; minutes (bench/RESULTS.md says how many).
.PHONY: slurm-test
slurm-test: setup
	PYTHON=$(abspath $(BIN))/python bash tests/slurm/run_slurm_test.sh
